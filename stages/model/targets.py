"""Training targets (docs/method.md §1), pure functions over tensors; coordinates normalised to [0, 1].

- the dense proposal map: cell (d, t) is the proposal [t/T, (t+d+1)/T], valid when t + d < T and
  d < max_duration;
- boundary targets: how much of snippet i lies inside a 3-snippet region around a start (end);
- each proposal's matched ground truth: the one with the highest IoU;
- each proposal's classes (the per-proposal head, `model.classifier: proposal`): those of the
  ground truths it overlaps with IoU >= PROPOSAL_CLASS_IOU;
- TrainingTargets: all of them for one sample, from the model settings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from stages.model.sampling import sample_proposals

if TYPE_CHECKING:  # the settings models, for type hints only
    from stages.core.settings import ModelSettings

EPS = 1e-6
PROPOSAL_CLASS_IOU = 0.5  # a proposal learns the classes of the instances it overlaps this much
CLASS_SLOTS = 4  # classes kept per proposal (the instances it overlaps most), -1 for none


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


def proposal_classes(
    anchors: torch.Tensor,
    gt: torch.Tensor,
    gt_classes: torch.Tensor,
    iou_threshold: float = PROPOSAL_CLASS_IOU,
) -> torch.Tensor:
    """Class ids [K, CLASS_SLOTS] of the ground truths [G, 2] (classes gt_classes [G]) that each
    anchor [K, 2] overlaps with IoU >= iou_threshold, best first, -1 where none. A fixed width
    instead of a multi-hot [K, classes]: the full proposal map times 200+ classes would not fit a
    batch; the loss spreads them out. Slot 0 is -1 exactly when the anchor is background."""
    out = torch.full((len(anchors), CLASS_SLOTS), -1, dtype=torch.long)
    if gt.numel() == 0:
        return out
    iou = pairwise_iou(anchors, gt)
    width = min(CLASS_SLOTS, len(gt))
    best, order = iou.topk(width, dim=1)
    out[:, :width] = torch.where(best >= iou_threshold, gt_classes[order], -1)
    return out


class TrainingTargets:
    """One sample's training targets, built from the model settings (training hands it to the
    dataset, as it hands the e2e transform): the proposals it trains on (model.proposal_sampling and
    proposal_ratio; the fixed grid for validation), each one's matched ground truth, the boundary
    targets and, with the per-proposal head, each proposal's classes."""

    def __init__(self, model: ModelSettings, t: int, classes: list[str], *, sampled: bool) -> None:
        self.t, self.max_duration = t, model.max_duration
        self.strategy = model.proposal_sampling if sampled else "grid"
        self.ratio = model.proposal_ratio
        self.anchors = proposal_map(t, model.max_duration)
        self.class_index = {c: i for i, c in enumerate(classes)}
        # the per-proposal head's targets, none for the video head
        self.proposal_head = model.classifier_head and model.classifier == "proposal"

    def __call__(self, gt: torch.Tensor, gt_labels: list[str], generator: torch.Generator) -> dict:
        """gt [G, 2] normalised to the item, their labels, the sample's generator -> the targets."""
        chosen = sample_proposals(self.t, self.max_duration, self.strategy, self.ratio, generator=generator)
        anchors = self.anchors[chosen]
        start, end = boundary_targets(gt, self.t)
        out = {
            "anchors": anchors,
            "gt_box": match_ground_truth(anchors, gt),
            "gt_start": start,
            "gt_end": end,
        }
        if self.proposal_head:
            gt_classes = torch.tensor([self.class_index[label] for label in gt_labels], dtype=torch.long)
            out["proposal_classes"] = proposal_classes(anchors, gt, gt_classes)
        return out
