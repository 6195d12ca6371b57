"""1-D RoIAlign over time, two ways that give the same numbers (docs/method.md, "proposal head").

`roi_features` is torchvision's `roi_align` (sampling_ratio=-1) on features viewed as a [B, C, T, 1]
image: the reference, and what both published detectors run (the original ETAD with aligned=False,
OpenTAD's variant with aligned=True). It materialises a [proposals, C, bins] tensor, and the
head's first linear layer then reads all of it.

RoIAlign is linear in the features: bin j of a proposal is a weighted sum of a few time steps
(`roi_taps` computes those taps exactly as torchvision samples them). A linear layer on the
flattened bins, `W · flatten(RoIAlign(F))`, is therefore the same taps applied to `W_j · F[:, t]`,
which `binned_linear` computes once per video for every bin j and time step t (an einsum), then
gathers per proposal with `embedding_bag` (two taps per sample: its lower and upper neighbour).
Nothing of size [proposals, C, bins] is ever built, the backward pass is the same two operations
reversed, and the cost no longer grows with C x bins per proposal but with the number of taps.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

MAX_LENGTH = 4  # proposals longer than 4 videos (extended) are sampled as if 4 videos long


def extend_anchors(anchors: torch.Tensor, ratio: float) -> torch.Tensor:
    """[..., 2] -> the anchor widened by `ratio` of its length on each side (context for RoIAlign)."""
    length = anchors[..., 1] - anchors[..., 0]
    return torch.stack([anchors[..., 0] - ratio * length, anchors[..., 1] + ratio * length], dim=-1)


def roi_features(
    features: torch.Tensor, anchors: torch.Tensor, roi_size: int, extend_ratio: float, aligned: bool = False
) -> torch.Tensor:
    """RoIAlign over time: features [B, C, T], normalised anchors [B, K, 2] -> [B*K, C, roi_size].

    Feature index i sits at coordinate i (aligned=False) or i + 0.5 (aligned=True), and each bin
    averages ceil(len/roi_size) linear samples (sampling_ratio=-1).
    """
    b, _, t = features.shape
    k = anchors.shape[1]
    ext = extend_anchors(anchors, extend_ratio) * t
    batch_index = torch.arange(b, device=features.device, dtype=features.dtype).repeat_interleave(k)
    zeros = torch.zeros_like(batch_index)
    ext = ext.reshape(-1, 2).to(features.dtype)
    boxes = torch.stack([batch_index, zeros, ext[:, 0], zeros + 1, ext[:, 1]], dim=1)
    out = roi_align(features.unsqueeze(-1), boxes, (roi_size, 1), 1.0, -1, aligned=aligned)
    return out.squeeze(-1)


@dataclass
class Taps:
    """RoIAlign as sparse weights: table row `index[k]` with weight `weight[k]`, where a table row is
    bin * width + time step (the time steps of the batch's videos laid end to end, `width` in all).
    Every sample reads two rows (its lower and upper neighbour); the taps are grouped by proposal:
    those of proposal r start at offsets[r]."""

    index: torch.Tensor  # [taps]
    weight: torch.Tensor  # [taps]
    offsets: torch.Tensor  # [n]
    n: int  # proposals
    n_bins: int
    width: int

    def as_dense(self) -> torch.Tensor:
        """[n, n_bins, width]: the weight of every time step in every bin (for tests)."""
        counts = torch.diff(self.offsets, append=torch.tensor([len(self.index)]))
        rows = torch.repeat_interleave(torch.arange(self.n), counts)
        dense = torch.zeros(self.n, self.n_bins * self.width, dtype=self.weight.dtype)
        dense.index_put_((rows, self.index), self.weight, accumulate=True)
        return dense.view(self.n, self.n_bins, self.width)


def roi_taps(boxes: torch.Tensor, t: int, bins: int, first_bin: int = 0, n_bins: int | None = None,
             videos: int = 1, aligned: bool = False) -> Taps:  # fmt: skip
    """The taps of torchvision's roi_align (sampling_ratio=-1) for 1-D boxes [N, 2]
    (start, end) in time steps over features of length t, pooled to `bins`; only bins
    first_bin .. first_bin + n_bins - 1. With `videos` > 1, boxes are N / videos per video, and
    video v reads time steps v * t ... (its features laid after the previous video's).

    As torchvision: aligned=False: the box is at least 1 step long; aligned=True: the box is shifted
    by -0.5 and not lengthened (an empty or reversed box reads nothing, gives 0); bin j takes
    g = ceil(length / bins) samples at start + (j + (i + 0.5) / g) * length / bins; a sample
    outside [-1, t] counts zero, one below 0 is read at 0, one at or past t - 1 reads step t - 1;
    each sample interpolates linearly between its two neighbours; the bin is the mean of its g
    samples. Per sample that is a handful of element-wise operations, no sorting and no copies.
    """
    n_bins = bins if n_bins is None else n_bins
    with torch.no_grad():
        if boxes.dtype in (torch.float16, torch.bfloat16):
            boxes = boxes.float()
        n, device, width = len(boxes), boxes.device, videos * t
        finite = torch.isfinite(boxes).all(dim=1)  # a diverged refinement: NaN out, as torchvision
        boxes = torch.where(finite[:, None], boxes, torch.zeros_like(boxes))
        if aligned:
            boxes = boxes - 0.5
        length = boxes[:, 1] - boxes[:, 0]
        length = length if aligned else length.clamp(min=1.0)
        step = length / bins
        # samples per bin; capped for boxes over MAX_LENGTH times the video (torchvision would take
        # ceil(length / bins) samples, nearly all of them outside the video)
        cap = math.ceil(MAX_LENGTH * (t + 2) / bins)
        grid = torch.ceil(step).clamp(min=0 if aligned else 1, max=cap).long()
        grid = torch.where(finite, grid, 1)  # so that a non-finite box gives NaN, not an empty bin
        # per proposal: the weight of one sample (1 / g; NaN for a non-finite box) and the first
        # time step of its video
        per_row = grid * n_bins
        offsets = torch.cumsum(per_row, 0) - per_row
        share = torch.where(finite, 1.0 / grid.clamp(min=1).to(step.dtype), torch.nan)
        video_start = (torch.arange(n, device=device) // (n // videos)) * t
        row = torch.repeat_interleave(torch.arange(n, device=device), per_row)  # one entry per sample
        q = torch.arange(len(row), device=device) - offsets[row]  # sample q of its proposal
        g, step_r = grid[row], step[row]
        j = q // g  # bin (from first_bin); sample i = q - j * g within it
        # torchvision's arithmetic, in its order: start + bin * step + ((i + 0.5) * step) / g
        y = boxes[row, 0] + (j + first_bin) * step_r + ((q - j * g) + 0.5) * step_r / g
        weight = ((y >= -1.0) & (y <= t)) * share[row]
        y = y.clamp(0.0, t - 1.0)
        low = y.long()
        frac = y - low
        up = low < t - 1  # the next step exists (at the end both taps read step t - 1)
        low = low + j * width + video_start[row]
        index = torch.stack([low, low + up], dim=1).flatten()  # (lower, upper) of sample 0, then 1, ...
        weights = torch.stack([(1.0 - frac) * weight, frac * weight], dim=1).flatten()
    return Taps(index, weights, 2 * offsets, n, n_bins, width)


class TapCache:
    """The taps of proposal sets seen before (the fixed proposal map of stage 1 at test time)."""

    def __init__(self, size: int = 8) -> None:
        self.size, self.entries = size, OrderedDict()

    def get(self, key: tuple, make) -> Taps:
        if key not in self.entries:
            self.entries[key] = make()
            while len(self.entries) > self.size:
                self.entries.popitem(last=False)
        self.entries.move_to_end(key)
        return self.entries[key]


def proposal_taps(
    anchors: torch.Tensor, t: int, bins: int, extend_ratio: float, first_bin: int, n_bins: int,
    cache: TapCache | None = None, aligned: bool = False,
) -> Taps:  # fmt: skip
    """Taps of every proposal of a batch, anchors [B, K, 2] normalised; proposal b*K + k reads time
    steps b*t + ... of the batch's features laid end to end. When every video has the same
    proposals (an expanded tensor, as at test time) they are computed for one video, and cached."""
    b, k = anchors.shape[:2]
    if b > 1 and anchors.stride(0) == 0:  # the same proposals for every video

        def make() -> Taps:
            boxes = extend_anchors(anchors[0], extend_ratio) * t
            one = roi_taps(boxes, t, bins, first_bin, n_bins, aligned=aligned)
            taps = len(one.index)
            video = torch.arange(b, device=anchors.device)[:, None]
            index = ((one.index // t) * (b * t) + one.index % t + video * t).flatten()  # in the batch
            offsets = (one.offsets[None] + video * taps).flatten()
            return Taps(index, one.weight.repeat(b), offsets, b * k, one.n_bins, b * t)

        if cache is None:
            return make()
        key = (
            anchors.device,
            b,
            t,
            bins,
            extend_ratio,
            first_bin,
            n_bins,
            aligned,
            anchors[0].cpu().numpy().tobytes(),
        )
        return cache.get(key, make)
    boxes = extend_anchors(anchors.reshape(b * k, 2), extend_ratio) * t
    return roi_taps(boxes, t, bins, first_bin, n_bins, videos=b, aligned=aligned)


def binned_linear(features: torch.Tensor, taps: Taps, layer: torch.nn.Linear) -> torch.Tensor:
    """`layer(flatten(RoIAlign(features)[:, :, bins of the taps]))` for every proposal of `taps`,
    without the RoI tensor. features [B, C, T] -> [proposals, layer.out_features]."""
    b, c, t = features.shape
    n_bins = layer.in_features // c
    weight = layer.weight.view(layer.out_features, c, n_bins)  # flatten order: channel, then bin
    projected = torch.einsum("ocj,bct->jbto", weight, features)  # [bins, B, T, out]
    table = projected.reshape(n_bins * b * t, layer.out_features)
    weights = taps.weight.to(table.dtype)
    out = F.embedding_bag(taps.index, table, taps.offsets, mode="sum", per_sample_weights=weights)
    return out + layer.bias if layer.bias is not None else out
