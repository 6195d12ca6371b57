"""What training reads: the items of a subset as a dataset whose samples carry the model's training
targets (stages.model.targets.TrainingTargets, built here from the model settings and handed to the
dataset), and the note on the classifier head that suits those videos."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from stages.data.annotations import several_classes
from stages.data.datasets import CacheReader, DetectionDataset, build_items
from stages.data.protocols import Item
from stages.model.targets import TrainingTargets

if TYPE_CHECKING:  # the settings models, for type hints only
    from stages.core.settings import Settings


def training_dataset(
    settings: Settings, subset: str, load: CacheReader, *, mode: str, transform: Callable | None = None
) -> tuple[DetectionDataset, list[str], list[str]]:
    """(dataset, classes, notes) of a subset's items with their training targets: proposals sampled
    per the settings for mode 'train', the fixed grid for 'val' (a validation loss)."""
    items, classes, notes = build_items(settings, subset, load.cache.length, training=True)
    if mode == "train":
        notes += head_hint(settings, items, subset)
    targets = TrainingTargets(settings.model, settings.data.temporal_scale, classes, sampled=mode == "train")
    dataset = DetectionDataset(
        items, classes, settings, load, mode=mode, targets=targets, transform=transform
    )
    return dataset, classes, notes


def head_hint(settings: Settings, items: list[Item], subset: str) -> list[str]:
    """The note where the video head is selected and most videos hold several classes."""
    if settings.model.classifier != "video":
        return []
    labels: dict[str, set[str]] = {}
    for item in items:  # an item carries its whole video's segments
        labels.setdefault(item.video_id, {label for _, _, label in item.segments})
    hint = several_classes(list(labels.values()))
    return [f"{subset}: {hint}"] if hint else []
