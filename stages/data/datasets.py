"""What the detector trains and runs on: the items of a subset (whole videos or windows, as the
temporal protocol says) with their inputs and training targets.

A sample's randomness (which proposals it trains on, the e2e augmentation) comes from a generator
seeded by (seed, epoch, index), so a run, a resumed run and a run with DataLoader workers draw the
same.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch

from stages.core.errors import UserError
from stages.data.annotations import VideoRecord, load_annotations
from stages.data.protocols import Item, pad_with_last, protocol

if TYPE_CHECKING:  # the settings models, for type hints only
    from stages.core.settings import Settings


def class_names(records: dict[str, VideoRecord]) -> list[str]:
    """Every label of the annotation file, sorted: the class index of the classifier head."""
    return sorted({seg.label for r in records.values() for seg in r.segments})


def build_items(
    settings: Settings,
    subset: str,
    available: Callable[[str], int | None],
    training: bool,
) -> tuple[list[Item], list[str], list[str]]:
    """The items of one subset, the class names, and notes on what was left out.

    `available(video_id)` gives the number of cached snippets of a video, or None when it is not
    cached. A video whose duration or segments are unusable (NaN, inf, reversed) is left out with a
    note; training also drops items without a usable instance (the protocol's rule).
    """
    d = settings.data
    records = load_annotations(d.annotations)
    classes = class_names(records)
    # data.blocked leaves videos out of evaluation only (etad eval), as the original: not out of training
    chosen = [r for r in records.values() if (r.subset or "").lower() == subset.lower()]
    if not chosen:
        raise UserError(f"{d.annotations}: no video in subset {subset!r}")
    proto = protocol(d)
    notes, items, missing = [], [], []
    for r in chosen:
        reason = r.unusable()
        if reason is not None:
            notes.append(f"{d.annotations}: video {r.video_id!r} left out: {reason}")
            continue
        n = available(r.video_id)
        if n is None:
            missing.append(r.video_id)
            continue
        segments = [(s.start, s.end, s.label) for s in r.segments]
        for item in proto.items(r.video_id, r.duration, segments, n):
            if training and not proto.has_training_target(item):
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


class CacheReader:
    """`reader(item)`: the cached rows of an item (the whole video, or a window's) from a VideoCache.
    A short snippet window is padded with its last snippet; features are left for the protocol.
    `kind` is the cache's ('snippets' or 'features'), which the HDF5 files record."""

    def __init__(self, cache, settings: Settings) -> None:
        self.cache, self.kind = cache, cache.kind
        self.protocol, self.t = protocol(settings.data), settings.data.temporal_scale

    def __call__(self, item: Item) -> np.ndarray:
        rows = self.cache.read(item.video_id, self.protocol.rows(item))
        if self.kind == "snippets" and item.window is not None:
            rows = pad_with_last(rows, self.t)
        return rows


class DetectionDataset(torch.utils.data.Dataset):
    """Samples for the detector. `load(item)` returns an item's cached rows (features [N, C] or
    snippets [T, ...], as `load.kind` says); `targets(gt, labels, generator)` (training's, built from
    the model settings: stages.model.targets.TrainingTargets) adds the training targets to each
    sample, none without it. mode 'train' reads training ground truth (the protocol's rule), 'val'
    and 'test' the evaluation one."""

    def __init__(
        self,
        items: list[Item],
        classes: list[str],
        settings: Settings,
        load: CacheReader,
        *,
        mode: str,
        targets: Callable[[torch.Tensor, list[str], torch.Generator], dict] | None = None,
        transform=None,
    ) -> None:
        self.items, self.classes, self.load, self.mode = items, classes, load, mode
        self.targets = targets
        # (uint8 snippets, generator) -> snippets, or a dict of sample entries: end-to-end augmentation
        self.transform = transform
        self.protocol = protocol(settings.data)
        self.seed = settings.seed
        self.class_index = {c: i for i, c in enumerate(classes)}

    def __len__(self) -> int:
        return len(self.items)

    def inputs(self, item: Item) -> torch.Tensor:
        """The detector's input for an item: features [C, T] (or snippets [T, ...] end to end)."""
        data = self.load(item)
        if self.load.kind == "snippets":  # already one per position
            return torch.from_numpy(np.ascontiguousarray(data))
        return self.protocol.feature_input(data)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """Sample `index` (epoch 0), or (epoch, index) from a training loader: its draws come from
        (seed, epoch, index) alone."""
        epoch, index = key if isinstance(key, tuple) else (0, key)
        item = self.items[index]
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch * 10_007 + index)
        inputs = self.inputs(item)
        transformed = self.transform(inputs, generator) if self.transform is not None else inputs
        sample = transformed if isinstance(transformed, dict) else {"inputs": transformed}
        sample["index"] = index
        if self.targets is None:
            return sample
        gt, gt_labels = self.protocol.ground_truth(item, training=self.mode == "train")
        sample.update(self.targets(gt, gt_labels, generator), labels=self.labels(item))
        return sample

    def labels(self, item: Item) -> torch.Tensor:
        """The item's classes, multi-hot [K]: the video classifier's target."""
        labels = torch.zeros(len(self.classes))
        for _, _, label in item.segments:
            labels[self.class_index[label]] = 1.0
        return labels

    def classifier_data(
        self, encode: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every item's detector input [N, C, T] and classes [N, K], for the classifier refit;
        `encode` turns an item's uint8 snippets [1, T, ...] into features [1, C, T] (end to end)."""
        inputs = []
        for item in self.items:
            x = self.inputs(item)
            inputs.append(encode(x[None])[0].cpu() if encode is not None else x)
        return torch.stack(inputs), torch.stack([self.labels(item) for item in self.items])
