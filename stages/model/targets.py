"""Training targets (docs/method.md §1), pure functions over tensors; coordinates normalised to [0, 1].

- the dense proposal map: cell (d, t) is the proposal [t/T, (t+d+1)/T], valid when t + d < T and
  d < max_duration;
- boundary targets: how much of snippet i lies inside a 3-snippet region around a start (end);
- each proposal's matched ground truth: the one with the highest IoU.
"""

from __future__ import annotations

import torch

EPS = 1e-6


def proposal_map(t: int, max_duration: int) -> torch.Tensor:
    """Every valid proposal [N, 2] in map order (duration-major, then start)."""
    d, s = torch.meshgrid(torch.arange(min(max_duration, t)), torch.arange(t), indexing="ij")
    valid = (s + d) < t
    d, s = d[valid], s[valid]
    return torch.stack([s / t, (s + d + 1) / t], dim=1).float()


def boundary_targets(gt: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """gt [G, 2] -> (start [T], end [T]): max over ground truths of IoA(region, snippet i), where the
    region is [x - 1.5/T, x + 1.5/T] around the boundary x and IoA divides by the snippet length."""
    if gt.numel() == 0:
        return torch.zeros(t), torch.zeros(t)
    lo = torch.arange(t, dtype=torch.float64) / t
    hi = lo + 1.0 / t
    out = []
    for x in (gt[:, 0].double(), gt[:, 1].double()):
        r0, r1 = x - 1.5 / t, x + 1.5 / t
        inter = (torch.minimum(hi[:, None], r1[None]) - torch.maximum(lo[:, None], r0[None])).clamp(min=0)
        out.append((inter * t).amax(dim=1).float())
    return out[0], out[1]


def pairwise_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of segments a [K, 2] with b [G, 2] -> [K, G] (denominator + 1e-6, as the original)."""
    inter = (torch.minimum(a[:, None, 1], b[None, :, 1]) - torch.maximum(a[:, None, 0], b[None, :, 0])).clamp(
        min=0
    )
    union = (a[:, 1] - a[:, 0])[:, None] + (b[:, 1] - b[:, 0])[None] - inter
    return inter / (union + EPS)


def aligned_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of a[..., 2] with b[..., 2], element by element."""
    inter = (torch.minimum(a[..., 1], b[..., 1]) - torch.maximum(a[..., 0], b[..., 0])).clamp(min=0)
    union = (a[..., 1] - a[..., 0]) + (b[..., 1] - b[..., 0]) - inter
    return inter / (union + EPS)


def match_ground_truth(anchors: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """For each anchor [K, 2] the ground truth [G, 2] with the highest IoU (zeros when G = 0). The
    same match is used by every cascade stage, even though the anchors move."""
    if gt.numel() == 0:
        return torch.zeros_like(anchors)
    return gt[pairwise_iou(anchors, gt).argmax(dim=1)]
