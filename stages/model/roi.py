"""1-D RoIAlign over time, two ways that give the same numbers (docs/method.md, "proposal head").

`roi_features` is torchvision's `roi_align` (sampling_ratio=-1) on features viewed as a [B, C, T, 1]
image: the reference, and what both published detectors run (the original ETAD with aligned=False,
OpenTAD's variant with aligned=True). It materialises a [proposals, C, bins] tensor, and the
head's first linear layer then reads all of it.

RoIAlign is linear in the features: bin j of a proposal is a weighted sum of a few time steps
(`roi_taps` computes those taps exactly as torchvision samples them). A linear layer on the
flattened bins, `W · flatten(RoIAlign(F))`, is therefore the same taps applied to `W_j · F[:, t]`,
which `bin_table` computes once per video for every bin j and time step t (one matrix product),
then `gather_bins` sums per proposal with `embedding_bag` (one tap per time step a bin reads, its
samples' two interpolation weights summed into it); `binned_layers` runs a stage's layers on them.
Nothing of size [proposals, C, bins] is ever built, the backward pass is the same two operations
reversed, and the cost no longer grows with C x bins per proposal but with the number of taps.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import torch
import torch.nn.functional as F

MAX_LENGTH = 4  # proposals longer than 4 videos (extended) are sampled as if 4 videos long


def extend_anchors(anchors: torch.Tensor, ratio: float) -> torch.Tensor:
    """[..., 2] -> the anchor widened by `ratio` of its length on each side (context for RoIAlign)."""
    length = anchors[..., 1] - anchors[..., 0]
    return torch.stack([anchors[..., 0] - ratio * length, anchors[..., 1] + ratio * length], dim=-1)


def roi_features(
    features: torch.Tensor,
    anchors: torch.Tensor,
    roi_size: int,
    extend_ratio: float,
    *,
    aligned: bool = False,
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
    from torchvision.ops import roi_align  # here: importing torchvision costs seconds (encoder.py)

    out = roi_align(features.unsqueeze(-1), boxes, (roi_size, 1), 1.0, -1, aligned=aligned)
    return out.squeeze(-1)


@dataclass
class Bucket:
    """The taps of the proposals that take the same number of samples per bin: dense tensors, so
    they are built by broadcasting (no per-sample gathers) and gathered by one `embedding_bag`."""

    proposals: torch.Tensor  # [m]: which proposals of the batch
    time: torch.Tensor  # [m, bins, R] int32: the time step each tap reads (videos laid end to end)
    weight: torch.Tensor  # [m, bins, R]


@dataclass(frozen=True)
class Bags:
    """`embedding_bag`'s inputs for a set of taps: each bag one proposal's taps, bin by bin, each a
    row `time * bins + bin` of the per-video table and its weight; `order` the bag of each proposal
    (None: bag i is proposal i)."""

    rows: torch.Tensor  # [taps] int32 (half the bytes of int64 to lay out; embedding_bag takes either)
    weights: torch.Tensor  # [taps]
    offsets: torch.Tensor  # [proposals] int32 (as rows): where each bag's taps begin
    order: torch.Tensor | None


@dataclass
class Taps:
    """RoIAlign as sparse weights: bin j of a proposal is the sum of weight * features[:, time]
    over its taps. A bin's taps are its distinct time steps (`R` per bin in a bucket, zero weights
    where a bin reads fewer), so each step is read once however many samples fall near it."""

    buckets: list[Bucket]
    n: int  # proposals
    width: int  # time steps of the batch's videos, laid end to end
    reused: bool = False  # kept in a TapCache: worth laying out once for every later batch
    _parts: dict = field(default_factory=dict, repr=False, compare=False)

    def bins(self, first: int, count: int) -> Taps:
        """The taps of bins first .. first + count - 1 only (the start and end heads' context);
        kept, so reused taps lay out their bags once."""
        if (first, count) not in self._parts:
            parts = [
                Bucket(k.proposals, k.time[:, first : first + count], k.weight[:, first : first + count])
                for k in self.buckets
            ]
            self._parts[first, count] = Taps(parts, self.n, self.width, self.reused)
        return self._parts[first, count]

    @cached_property
    def bags(self) -> Bags:
        """The taps as bags. Without gradients (inference) or reused, without the taps of zero
        weight (a bin's padding and samples outside the video, a fifth of them at T = 128): a zero
        adds nothing and each proposal's taps keep their order, so the sums are bit for bit the
        same with fewer gathers (training keeps them: the backward would sum the table's gradient in
        other chunks, another rounding). Fresh taps (read once): in the buckets' order, the result
        reordered after. Reused taps: laid out once in the proposals' order, nothing reordered."""
        if not self.buckets:  # no proposals: nothing to sum or to reorder
            empty = torch.zeros(0, dtype=torch.int32)
            return Bags(empty, empty.float(), empty, None)
        n_bins, device = self.buckets[0].time.shape[1], self.buckets[0].time.device
        bins = torch.arange(n_bins, dtype=torch.int32, device=device)[None, :, None]
        spans = [k.time.numel() for k in self.buckets]  # each bucket's taps in `rows` and `weights`
        rows = torch.empty(sum(spans), dtype=torch.int32, device=device)
        for k, piece in zip(self.buckets, rows.split(spans)):  # time * n_bins + bin, in place
            torch.add(bins, k.time, alpha=n_bins, out=piece.view(k.time.shape))
        weights = torch.cat([k.weight.flatten() for k in self.buckets])
        proposals = torch.cat([k.proposals for k in self.buckets])
        if self.reused or not torch.is_grad_enabled():
            nonzero = weights != 0  # NaN (a non-finite box) is kept
            kept = nonzero.nonzero().squeeze(1)
            rows, weights = rows.index_select(0, kept), weights.index_select(0, kept)
            per_bag = torch.cat(
                [m.view(len(k.proposals), -1).sum(1) for k, m in zip(self.buckets, nonzero.split(spans))]
            )
        else:
            per_bag = torch.cat([torch.full_like(k.proposals, k.time[0].numel()) for k in self.buckets])
        if not self.reused:
            return Bags(rows, weights, (torch.cumsum(per_bag, 0) - per_bag).int(), torch.argsort(proposals))
        sizes = torch.zeros(self.n, dtype=per_bag.dtype, device=per_bag.device)
        sizes[proposals] = per_bag
        offsets = torch.cumsum(sizes, 0) - sizes
        # kept tap i (buckets' order) of bag b moves by where b starts now less where it started
        shift = torch.repeat_interleave(offsets[proposals] - (torch.cumsum(per_bag, 0) - per_bag), per_bag)
        where = torch.arange(len(shift), device=shift.device) + shift
        ordered_rows, ordered_weights = rows.new_empty(len(shift)), weights.new_empty(len(shift))
        ordered_rows[where] = rows
        ordered_weights[where] = weights
        return Bags(ordered_rows, ordered_weights, offsets.int(), None)

    def in_proposal_order(self, rows: torch.Tensor) -> torch.Tensor:
        """Rows in the order of these taps' bags (those of `gather_bins`) -> the proposals' order."""
        order = self.bags.order
        return rows if order is None else rows[order]

    def as_dense(self) -> torch.Tensor:
        """[n, bins, width]: the weight of every time step in every bin (for tests)."""
        n_bins = self.buckets[0].time.shape[1] if self.buckets else 0
        dense = torch.zeros(self.n, n_bins, self.width, dtype=torch.float32)
        for k in self.buckets:
            rows = k.proposals[:, None, None].expand_as(k.time)
            bins = torch.arange(n_bins)[None, :, None].expand_as(k.time)
            dense.index_put_((rows, bins, k.time.long()), k.weight.float(), accumulate=True)
        return dense


def _bucket(
    boxes: torch.Tensor,
    step: torch.Tensor,
    share: torch.Tensor,
    video_start: torch.Tensor,
    *,
    g: int,
    t: int,
    bins: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Time steps and weights [m, bins, R] of m boxes that take g samples per bin."""
    j = torch.arange(bins, device=boxes.device)[None, :, None]
    i = torch.arange(g, device=boxes.device)[None, None, :]
    start, step = boxes[:, 0, None, None], step[:, None, None]
    # torchvision's arithmetic, in its order: start + bin * step + ((i + 0.5) * step) / g
    y = start + j * step + ((i + 0.5) * step) / g  # [m, bins, g]
    weight = ((y >= -1.0) & (y <= t)) * share[:, None, None]
    # in place from here on (each new [m, bins, g] tensor is memory written for the first time):
    # y clamped, then its fraction; the same operations, so the same numbers
    frac = y.clamp_(0.0, t - 1.0)
    low = frac.long()
    frac.sub_(low)
    up = low < t - 1  # the next step exists (at the end both taps read step t - 1)
    # a bin's samples are in order and (below the length cap) under one step apart: its taps are
    # the steps first .. last (+1); sum each sample's two interpolation weights into them
    first = low[..., :1].clone()
    rel = low.sub_(first)
    r = int((rel[..., -1] + up[..., -1]).max()) + 1 if len(low) else 1
    merged = torch.zeros(*low.shape[:2], r, dtype=y.dtype, device=y.device)
    merged.scatter_add_(2, rel, torch.rsub(frac, 1.0).mul_(weight))
    merged.scatter_add_(2, rel.add_(up), frac.mul_(weight))
    start = video_start[:, None, None]  # past a bin's last tap (weight 0): the video's last step
    time = (first + start).int() + torch.arange(r, dtype=torch.int32, device=y.device)
    time = torch.minimum(time, (start + (t - 1)).int(), out=time)
    return time, merged


def roi_taps(boxes: torch.Tensor, t: int, bins: int, videos: int = 1, *, aligned: bool = False) -> Taps:
    """The taps of torchvision's roi_align (sampling_ratio=-1) for 1-D boxes [N, 2] (start, end)
    in time steps over features of length t, pooled to `bins`. With `videos` > 1, boxes are
    N / videos per video, and video v reads time steps v * t ... (after the previous video's).

    As torchvision: aligned=False: the box is at least 1 step long; aligned=True: the box is shifted
    by -0.5 and not lengthened (an empty or reversed box reads nothing, gives 0); bin j takes
    g = ceil(length / bins) samples at start + (j + (i + 0.5) / g) * length / bins; a sample
    outside [-1, t] counts zero, one below 0 is read at 0, one at or past t - 1 reads step t - 1;
    each sample interpolates linearly between its two neighbours; the bin is the mean of its g
    samples. Boxes are grouped by g, so each group is a few broadcast operations.
    """
    with torch.no_grad():
        if boxes.dtype in (torch.float16, torch.bfloat16):
            boxes = boxes.float()
        n, device = len(boxes), boxes.device
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
        grid = torch.ceil(step).clamp(min=0, max=cap).long()
        # the weight of one sample: 1 / g; 0 for an empty box (it reads nothing), NaN for a non-finite one
        share = torch.where(grid > 0, 1.0 / grid.clamp(min=1).to(step.dtype), 0.0)
        share = torch.where(finite, share, torch.nan)
        grid = grid.clamp(min=1)
        video_start = (torch.arange(n, device=device) // max(n // videos, 1)) * t
        buckets = []
        for g in torch.unique(grid).tolist():
            chosen = torch.nonzero(grid == g).flatten()
            args = boxes[chosen], step[chosen], share[chosen], video_start[chosen]
            buckets.append(Bucket(chosen, *_bucket(*args, g=g, t=t, bins=bins)))
    return Taps(buckets, n, videos * t)


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
    anchors: torch.Tensor,
    t: int,
    bins: int,
    extend_ratio: float,
    *,
    cache: TapCache | None = None,
    aligned: bool = False,
) -> Taps:
    """Taps of every proposal of a batch, anchors [B, K, 2] normalised; proposal b*K + k reads time
    steps b*t + ... of the batch's features laid end to end. When every video has the same
    proposals (an expanded tensor, as at test time) they are computed for one video, and cached."""
    b, k = anchors.shape[:2]
    if b > 1 and anchors.stride(0) == 0:  # the same proposals for every video

        def make() -> Taps:
            one = roi_taps(extend_anchors(anchors[0], extend_ratio) * t, t, bins, aligned=aligned)
            video = torch.arange(b, device=anchors.device)

            def spread(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:  # every video's copy
                return (x[None] + shift.view(b, *[1] * x.dim()).to(x.dtype)).flatten(0, 1)

            parts = [
                Bucket(spread(p.proposals, video * k), spread(p.time, video * t), p.weight.repeat(b, 1, 1))
                for p in one.buckets
            ]
            return Taps(parts, b * k, b * t, reused=cache is not None)

        if cache is None:
            return make()
        key = (anchors.device, b, t, bins, extend_ratio, aligned, anchors[0].cpu().numpy().tobytes())
        return cache.get(key, make)
    boxes = extend_anchors(anchors.reshape(b * k, 2), extend_ratio) * t
    return roi_taps(boxes, t, bins, videos=b, aligned=aligned)


INFERENCE_ROWS = 8192  # proposals at a time at inference (binned_layers): about one video's map


def inference_rows() -> int | None:
    """How many proposals `binned_layers` takes at a time: all at once in training (None)."""
    return None if torch.is_grad_enabled() else INFERENCE_ROWS


def bin_table(features: torch.Tensor, layer: torch.nn.Linear) -> torch.Tensor:
    """`W_j · F[:, t]` for every time step t and bin j of `layer` in one matrix product: features
    [B, C, T] -> [B * T * bins, out_features], row (b * T + t) * bins + j (as the taps' rows)."""
    b, c, t = features.shape
    n_bins, out_features = layer.in_features // c, layer.out_features
    weight = layer.weight.view(out_features, c, n_bins).permute(1, 2, 0).reshape(c, n_bins * out_features)
    return (features.transpose(1, 2).reshape(b * t, c) @ weight).view(b * t * n_bins, out_features)


def gather_bins(table: torch.Tensor, bags: Bags, first: int = 0, last: int | None = None) -> torch.Tensor:
    """The weighted sums of bags first .. last - 1 (default: all) of `table`'s rows, no bias:
    [bags, out_features]. Each bag's sum is its own, so a range gives the same numbers as all."""
    offsets = bags.offsets[first:last]
    if not len(offsets):  # no proposals
        return table.new_zeros(0, table.shape[1])
    begin = int(offsets[0])
    end = int(bags.offsets[last]) if last is not None and last < len(bags.offsets) else len(bags.rows)
    rows, weights = bags.rows[begin:end], bags.weights[begin:end].to(table.dtype)
    return F.embedding_bag(rows, table, offsets - begin, mode="sum", per_sample_weights=weights)


def binned_layers(
    features: torch.Tensor,
    parts: list[Taps],
    layers: list[torch.nn.Sequential],
    then: Callable[..., list[torch.Tensor]],
    *,
    rows: int | None = None,
) -> list[torch.Tensor]:
    """`then(*outs)`, outs[i] = `layers[i](flatten(RoIAlign(features)[:, :, bins of parts[i]]))` for
    every proposal (layers[i][0] the Linear the taps feed), without the RoI tensor: in the
    proposals' order. `parts` share their proposals (a stage's taps and its context bins').

    rows=None (training): each out whole and in the proposals' order before `then`, so the weights'
    gradients sum as they always have. With `rows` (inference): `rows` proposals at a time, in the
    taps' bags' order, and only `then`'s results put back in the proposals' order: each chunk's
    [rows, 512] activations stay in the CPU's cache from layer to layer (docs/benchmarks.md,
    infer_speed), and every proposal's numbers are the same (none depends on another's)."""
    tables = [bin_table(features, layer[0]) for layer in layers]

    def outputs(first: int, last: int | None, *, reorder: bool) -> list[torch.Tensor]:
        outs = []
        for table, part, layer in zip(tables, parts, layers):
            out = gather_bins(table, part.bags, first, last)
            out = part.in_proposal_order(out) if reorder else out
            bias = layer[0].bias
            outs.append(layer[1:](out.add_(bias) if bias is not None else out))  # in place: no new pages
        return then(*outs)

    n = parts[0].n
    if rows is None or n == 0:
        return outputs(0, None, reorder=True)
    chunks = [outputs(first, first + rows, reorder=False) for first in range(0, n, rows)]
    return [parts[0].in_proposal_order(torch.cat(pieces)) for pieces in zip(*chunks)]
