"""Temporal protocols: how a video becomes detector inputs, and detections become seconds again.

`data.protocol` names one entry of PROTOCOLS; `protocol(settings.data)` builds it once, holding
the data settings it needs, and callers pass the object on. A protocol owns everything that
differs between "the whole video resampled to T snippets" (ActivityNet, original ETAD) and
"sliding windows of T snippets at a fixed stride" (THUMOS-14): where snippets sit, which items a
video gives, the training ground truth of an item, how cached rows become the detector's input,
conversion back to seconds and the evaluation defaults. Nothing outside this module asks which
protocol it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from stages.core.errors import UserError
from stages.data.snippet_positions import anet_snippet_frames, strided_snippet_frames

if TYPE_CHECKING:  # torch is imported where tensors are made, so `etad eval` starts without it
    import torch

ANET_TIOUS = np.linspace(0.5, 0.95, 10)  # the evaluation defaults of each protocol
THUMOS_TIOUS = np.linspace(0.3, 0.7, 5)
MIN_GT_LENGTH = 0.01  # ActivityNet: a training video needs one instance longer than 1% of it


@dataclass
class Item:
    """One training/inference unit: a whole video (window None) or a window starting at a snippet."""

    video_id: str
    duration: float
    segments: list[tuple[float, float, str]]  # seconds
    window: int | None = None
    valid: int = 0  # snippets of the window that exist (the rest is padding)


def resize_features(features: np.ndarray, t: int) -> torch.Tensor:
    """[T_orig, C] -> [C, t] with 1-D RoIAlign over the whole sequence (the original rule: bin j
    averages ceil(T_orig / t) linear samples; inputs rounded through fp16 first, for determinism)."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(features.T)).half().double()  # [C, T_orig]
    n = x.shape[1]
    box = torch.tensor([[0.0, 0.0, 0.0, 1.0, float(n)]], dtype=torch.float64)
    out = _roi_align()(x[None, :, :, None], box, 1.0, t, 1, -1, True)
    return out[0, :, :, 0].float()


def _roi_align():
    """torchvision's compiled RoIAlign (input, boxes, scale, height, width, sampling, aligned), its
    library loaded without importing torchvision's Python package, whose import loads torch._dynamo:
    1.3 s of every `etad infer` on cached features. The package's own loader where the library is
    not where expected."""
    import glob
    import importlib.util
    import os

    import torch

    if not hasattr(torch.ops.torchvision, "roi_align"):
        spec = importlib.util.find_spec("torchvision")
        folders = spec.submodule_search_locations if spec is not None else None
        libraries = sorted(glob.glob(os.path.join(folders[0], "_C*.so"))) if folders else []
        if libraries:
            torch.ops.load_library(libraries[0])
        else:
            import torchvision.ops  # noqa: F401 - registers the operators
    return torch.ops.torchvision.roi_align


def pad_with_last(rows: np.ndarray, t: int) -> np.ndarray:
    """Rows [n, ...] padded to t rows by repeating the last one."""
    if len(rows) >= t:
        return rows
    return np.concatenate([rows, np.repeat(rows[-1:], t - len(rows), axis=0)])


class Protocol:
    """What every protocol holds: the data settings section it was built from."""

    def __init__(self, data) -> None:
        self.data = data


class WholeVideo(Protocol):
    """ActivityNet: every video is one item of `temporal_scale` snippets spread over all of it;
    coordinates are fractions of the video."""

    default_subset = "validation"
    tious = ANET_TIOUS

    def snippet_frames(self, num_frames: int) -> np.ndarray:
        return anet_snippet_frames(num_frames, self.data.temporal_scale, self.data.snippet_length)

    def positions(self) -> str:
        """What decides snippet positions (part of the cache fingerprint)."""
        return str(self.data.temporal_scale)

    def items(self, video_id: str, duration: float, segments: list, n_snippets: int) -> list[Item]:
        return [Item(video_id, duration, segments)]

    def ground_truth(self, item: Item, training: bool) -> tuple[torch.Tensor, list[str]]:
        """Instances normalised by the duration and clipped to [0, 1], [G, 2], and their labels."""
        import torch

        d = item.duration
        boxes = [(min(max(s / d, 0.0), 1.0), min(max(e / d, 0.0), 1.0)) for s, e, _ in item.segments]
        labels = [label for _, _, label in item.segments]
        return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 2), labels

    def has_training_target(self, item: Item) -> bool:
        """An instance longer than 1% of the video."""
        d = item.duration
        return any(min(e / d, 1) - max(s / d, 0) > MIN_GT_LENGTH for s, e, _ in item.segments)

    def rows(self, item: Item) -> slice | None:
        """Which cached rows an item reads (None: all)."""
        return None

    def feature_input(self, features: np.ndarray) -> torch.Tensor:
        """Cached features [N, C] of the item -> the detector's input [C, T] (resized)."""
        return resize_features(features, self.data.temporal_scale)

    def encoded_input(self, features: torch.Tensor) -> torch.Tensor:
        """Features [C, n] of the item's snippets encoded on the fly -> [C, T]."""
        return features

    def to_seconds(self, item: Item) -> Callable[[np.ndarray], np.ndarray]:
        return lambda x: np.clip(np.asarray(x) * item.duration, 0.0, item.duration)


@dataclass
class Timeline:
    """Where strided snippets sit: snippet i is centred on frame i * stride + length / 2 at `fps`."""

    fps: float
    stride: int
    length: int

    @classmethod
    def of(cls, data) -> Timeline:
        return cls(data.fps, data.snippet_stride, data.snippet_length)

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


def window_ground_truth(
    item: Item, timeline: Timeline, t: int, ioa_threshold: float | None
) -> tuple[torch.Tensor, list[str]]:
    """Instances of a window in normalised window coordinates [G, 2], and their labels. With a
    threshold (training, as OpenTAD's sliding windows): only those of which more than that share
    lies between the window's first and last snippet, cut to that span."""
    import torch

    boxes, labels = [], []
    for start, end, label in item.segments:
        s, e = timeline.to_snippets(start) - item.window, timeline.to_snippets(end) - item.window
        if e <= s:
            continue
        lo, hi = max(s, 0.0), min(e, item.valid - 1)
        if ioa_threshold is None:
            boxes.append((s / t, e / t))
        elif (hi - lo) / (e - s) > ioa_threshold:
            boxes.append((lo / t, hi / t))
        else:
            continue
        labels.append(label)
    return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 2), labels


class SlidingWindows(Protocol):
    """THUMOS-14: snippets every `snippet_stride` frames; items are windows of `temporal_scale`
    snippets overlapping by `window_overlap`; coordinates are fractions of the window."""

    default_subset = "test"
    tious = THUMOS_TIOUS

    def snippet_frames(self, num_frames: int) -> np.ndarray:
        return strided_snippet_frames(num_frames, self.data.snippet_stride, self.data.snippet_length)

    def positions(self) -> str:
        return f"stride {self.data.snippet_stride}"

    def items(self, video_id: str, duration: float, segments: list, n_snippets: int) -> list[Item]:
        t = self.data.temporal_scale
        return [
            Item(video_id, duration, segments, w, valid=min(t, n_snippets - w))
            for w in window_starts(n_snippets, t, self.data.window_overlap)
        ]

    def ground_truth(self, item: Item, training: bool) -> tuple[torch.Tensor, list[str]]:
        """Training: only instances complete enough in the window (IoA above the threshold)."""
        threshold = self.data.window_ioa_threshold if training else None
        return window_ground_truth(item, Timeline.of(self.data), self.data.temporal_scale, threshold)

    def has_training_target(self, item: Item) -> bool:
        return len(self.ground_truth(item, training=True)[1]) > 0

    def rows(self, item: Item) -> slice | None:
        return slice(item.window, item.window + self.data.temporal_scale)

    def feature_input(self, features: np.ndarray) -> torch.Tensor:
        """A window's features [n <= T, C] -> [C, T], zero-padded past the end of the video."""
        import torch

        x = torch.zeros(features.shape[1], self.data.temporal_scale)
        x[:, : len(features)] = torch.from_numpy(np.ascontiguousarray(features.T)).float()
        return x

    def encoded_input(self, features: torch.Tensor) -> torch.Tensor:
        """A window's encoded snippets [C, n] -> [C, T], padded with the last snippet (as the
        snippet cache is read)."""
        import torch

        t = self.data.temporal_scale
        return torch.cat([features, features[:, -1:].expand(-1, t - features.shape[1])], dim=1)

    def to_seconds(self, item: Item) -> Callable[[np.ndarray], np.ndarray]:
        timeline, t = Timeline.of(self.data), self.data.temporal_scale
        return lambda x: np.clip(timeline.to_seconds(np.asarray(x) * t + item.window), 0.0, item.duration)


# The temporal protocols (`data.protocol`). To add one, write a class with the methods above and
# add an entry here.
PROTOCOLS: dict[str, type[WholeVideo] | type[SlidingWindows]] = {"anet": WholeVideo, "thumos": SlidingWindows}


def protocol(data) -> WholeVideo | SlidingWindows:
    """The protocol of a data settings section, built from it."""
    if data.protocol not in PROTOCOLS:
        raise UserError(f"data.protocol: {data.protocol!r} is not one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[data.protocol](data)
