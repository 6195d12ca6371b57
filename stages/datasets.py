"""What the detector trains and runs on: one sample per ActivityNet video (resampled to T snippets,
spec 1.4) or per THUMOS sliding window (spec 1.5), with its training targets (spec 1.6).

A sample's randomness (which proposals it trains on) comes from a generator seeded by
(seed, epoch, index), so a run, a resumed run and a run with DataLoader workers draw the same.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import roi_align

from stages.annotations import VideoRecord, load_annotations
from stages.errors import UserError
from stages.model.sampling import sample_proposals
from stages.model.targets import boundary_targets, match_ground_truth, proposal_map

MIN_GT_LENGTH = 0.01  # ActivityNet: a training video needs one instance longer than 1% of it


@dataclass
class Item:
    """One training/inference unit: a whole video (window None) or a window starting at a snippet."""

    video_id: str
    duration: float
    segments: list[tuple[float, float, str]]  # seconds
    window: int | None = None
    valid: int = 0  # snippets of the window that exist (the rest is zero padding)


def class_names(records: dict[str, VideoRecord]) -> list[str]:
    """Every label of the annotation file, sorted: the class index of the classifier head."""
    return sorted({seg.label for r in records.values() for seg in r.segments})


def resize_features(features: np.ndarray, t: int) -> torch.Tensor:
    """[T_orig, C] -> [C, t] with 1-D RoIAlign over the whole sequence (the original rule: bin j
    averages ceil(T_orig / t) linear samples; inputs rounded through fp16 first, for determinism)."""
    x = torch.from_numpy(np.ascontiguousarray(features.T)).half().double()  # [C, T_orig]
    n = x.shape[1]
    box = torch.tensor([[0.0, 0.0, 0.0, 1.0, float(n)]], dtype=torch.float64)
    out = roi_align(x[None, :, :, None], box, (t, 1), 1.0, -1, aligned=True)
    return out[0, :, :, 0].float()


@dataclass
class Timeline:
    """Where THUMOS snippets sit: snippet i is centred on frame i * stride + length / 2 at `fps`."""

    fps: float
    stride: int
    length: int

    def to_snippets(self, seconds: float) -> float:
        return (seconds * self.fps - self.length / 2) / self.stride

    def to_seconds(self, snippets: np.ndarray | float) -> np.ndarray | float:
        return (np.asarray(snippets) * self.stride + self.length / 2) / self.fps


def window_starts(n_snippets: int, t: int, overlap: float) -> list[int]:
    """Sliding windows of t snippets covering the video; the last one ends at the last snippet."""
    step = max(1, int(round(t * (1 - overlap))))
    starts = list(range(0, max(n_snippets - t, 0) + 1, step))
    if starts[-1] + t < n_snippets:
        starts.append(n_snippets - t)
    return starts


def window_ground_truth(item: Item, timeline: Timeline, t: int, ioa_threshold: float | None) -> torch.Tensor:
    """Instances of a window in normalised window coordinates [G, 2]; with a threshold, only those
    of which more than that share lies inside the window's snippets."""
    boxes = []
    for start, end, _ in item.segments:
        s, e = timeline.to_snippets(start) - item.window, timeline.to_snippets(end) - item.window
        if e <= s:
            continue
        cut = min(e, item.valid - 1) - max(s, 0.0)
        if ioa_threshold is not None and cut / (e - s) <= ioa_threshold:
            continue
        if cut > 0 or ioa_threshold is None:
            boxes.append((s / t, e / t))
    return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 2)


def video_ground_truth(item: Item) -> torch.Tensor:
    """ActivityNet: instances normalised by the duration and clipped to [0, 1], [G, 2]."""
    d = item.duration
    boxes = [(min(max(s / d, 0.0), 1.0), min(max(e / d, 0.0), 1.0)) for s, e, _ in item.segments]
    return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 2)


def video_items(
    settings, video_id: str, duration: float, segments: list[tuple[float, float, str]], n_snippets: int
) -> list[Item]:
    """ActivityNet: the whole video is one item; THUMOS: one item per sliding window of snippets."""
    d = settings.data
    if d.dataset == "anet":
        return [Item(video_id, duration, segments)]
    t = d.temporal_scale
    return [
        Item(video_id, duration, segments, w, min(t, n_snippets - w))
        for w in window_starts(n_snippets, t, d.window_overlap)
    ]


def has_training_target(item: Item, timeline: Timeline, t: int, ioa_threshold: float) -> bool:
    """ActivityNet: an instance longer than 1% of the video; THUMOS: a complete enough instance."""
    if item.window is None:
        d = item.duration
        return any(min(e / d, 1) - max(s / d, 0) > MIN_GT_LENGTH for s, e, _ in item.segments)
    return len(window_ground_truth(item, timeline, t, ioa_threshold)) > 0


def build_items(
    settings,
    subset: str,
    available: Callable[[str], int | None],
    training: bool,
) -> tuple[list[Item], list[str], list[str]]:
    """The items of one subset, the class names, and notes on what was left out.

    `available(video_id)` gives the number of cached snippets of a video, or None when it is not
    cached. ActivityNet training drops videos without an instance longer than 1% of the video;
    THUMOS training drops windows without a complete enough instance.
    """
    d = settings.data
    records = load_annotations(d.annotations)
    classes = class_names(records)
    blocked: set[str] = set()
    if d.blocked is not None:
        from stages.evaluate import read_blocked

        blocked = read_blocked(d.blocked)
    chosen = [r for r in records.values() if r.subset.lower() == subset.lower() and r.video_id not in blocked]
    if not chosen:
        raise UserError(f"{d.annotations}: no video in subset {subset!r}")
    notes, items, missing = [], [], []
    timeline = Timeline(d.fps, d.snippet_stride, d.snippet_length)
    for r in chosen:
        n = available(r.video_id)
        if n is None:
            missing.append(r.video_id)
            continue
        segments = [(s.start, s.end, s.label) for s in r.segments]
        for item in video_items(settings, r.video_id, r.duration, segments, n):
            if training and not has_training_target(item, timeline, d.temporal_scale, d.window_ioa_threshold):
                continue
            items.append(item)
    if missing:
        notes.append(
            f"{len(missing)} video(s) of subset {subset!r} are not cached, left out (first: {missing[0]})"
        )
    if not items:
        raise UserError(
            f"{d.annotations}: nothing to use in subset {subset!r} ({'; '.join(notes) or 'no instances'})"
        )
    return items, classes, notes


def window_reader(cache, t: int) -> Callable[[str, int | None], np.ndarray]:
    """`load(video_id, window)` over a VideoCache: the whole video, or the t rows of a window.
    A short snippet window is padded with its last snippet; a short feature window is returned
    as is (DetectionDataset.inputs zero-pads features)."""

    def load(video_id: str, window: int | None) -> np.ndarray:
        if window is None:
            return cache.read(video_id)
        data = cache.read(video_id, slice(window, window + t))
        if data.dtype == np.uint8 and len(data) < t:
            data = np.concatenate([data, np.repeat(data[-1:], t - len(data), axis=0)])
        return data

    return load


class DetectionDataset(torch.utils.data.Dataset):
    """Samples for the detector. `load(video_id, window)` returns the input of a whole video
    (features [T_orig, C] or snippets [T, ...]); mode 'train' samples proposals per the settings,
    'val' uses the fixed grid, 'test' returns no targets."""

    def __init__(
        self, items: list[Item], classes: list[str], settings, load: Callable, mode: str, transform=None
    ) -> None:
        self.items, self.classes, self.load, self.mode = items, classes, load, mode
        self.transform = transform  # (uint8 snippets, generator) -> snippets: end-to-end augmentation
        d, m = settings.data, settings.model
        self.dataset, self.t, self.max_duration = d.dataset, d.temporal_scale, m.max_duration
        self.strategy = m.proposal_sampling if mode == "train" else "grid"
        self.ratio = m.proposal_ratio
        self.timeline = Timeline(d.fps, d.snippet_stride, d.snippet_length)
        self.ioa = d.window_ioa_threshold
        self.seed, self.epoch = settings.seed, 0
        self.anchors = proposal_map(self.t, self.max_duration)
        self.class_index = {c: i for i, c in enumerate(classes)}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def inputs(self, item: Item) -> torch.Tensor:
        """The detector's input for an item: features [C, T] (or snippets [T, ...] end to end)."""
        data = self.load(item.video_id, item.window)
        if data.dtype == np.uint8:  # snippets: already one per position, windows padded by the loader
            return torch.from_numpy(np.ascontiguousarray(data))
        if item.window is None:
            return resize_features(data, self.t)
        x = torch.zeros(data.shape[1], self.t)
        x[:, : len(data)] = torch.from_numpy(np.ascontiguousarray(data.T)).float()
        return x

    def ground_truth(self, item: Item) -> torch.Tensor:
        if item.window is None:
            return video_ground_truth(item)
        return window_ground_truth(item, self.timeline, self.t, self.ioa if self.mode == "train" else None)

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch * 10_007 + index)
        inputs = self.inputs(item)
        if self.transform is not None:
            inputs = self.transform(inputs, generator)
        sample = {"inputs": inputs, "index": index}
        if self.mode == "test":
            return sample
        gt = self.ground_truth(item)
        chosen = sample_proposals(self.t, self.max_duration, self.strategy, self.ratio, generator)
        anchors = self.anchors[chosen]
        start, end = boundary_targets(gt, self.t)
        labels = torch.zeros(len(self.classes))
        for _, _, label in item.segments:
            labels[self.class_index[label]] = 1.0
        sample.update(
            anchors=anchors, gt_box=match_ground_truth(anchors, gt), gt_start=start, gt_end=end, labels=labels
        )
        return sample


def seconds_per_unit(item: Item, t: int, timeline: Timeline) -> Callable[[np.ndarray], np.ndarray]:
    """Turn normalised coordinates of an item back into seconds, clipped to the video."""
    if item.window is None:
        return lambda x: np.clip(np.asarray(x) * item.duration, 0.0, item.duration)
    return lambda x: np.clip(timeline.to_seconds(np.asarray(x) * t + item.window), 0.0, item.duration)
