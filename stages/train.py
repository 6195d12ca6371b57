"""`etad train`: pretrain the ETAD detector on frozen features from the HDF5 feature cache.

Reads <work_dir>/cache/features/<id>.h5; writes <work_dir>/pretrain/checkpoints/epoch_NNN.pt with
last.pt / best.pt pointers, and <work_dir>/pretrain/metrics.jsonl. Resumable from last.pt.
Multi-GPU / multi-node through torchrun (gradients averaged by hand, stages/training/loop.py; gloo on
CPU, nccl on GPU).
"""

from __future__ import annotations

import torch

from stages.core.errors import UserError
from stages.core.progress import SILENT, Progress
from stages.core.runtime import Distributed, autocast, to_device
from stages.core.settings import Settings
from stages.core.workdir import features_dir
from stages.data.datasets import CacheReader, DetectionDataset
from stages.data.fingerprints import ExpectedFingerprint
from stages.data.hdf5_cache import VideoCache
from stages.model.detector import VARIANTS, build_detector
from stages.model.losses import as_float, detector_loss
from stages.training.loop import Job, TrainSummary, classifier_refit, fit, loader, start_run
from stages.training.optimisation import make_optimizer
from stages.training.samples import training_dataset


def feature_datasets(
    settings: Settings,
) -> tuple[DetectionDataset, DetectionDataset | None, list[str], list[str]]:
    """Training and validation datasets over the feature cache (validation only if it has videos)."""
    if settings.data.annotations is None:
        raise UserError("data.annotations is not set")
    cache = VideoCache(features_dir(settings), "features", ExpectedFingerprint.of(settings, "features"))
    load = CacheReader(cache, settings)
    d = settings.data
    train, classes, notes = training_dataset(settings, d.train_subset, load, mode="train")
    try:
        val, _, val_notes = training_dataset(settings, d.eval_subset, load, mode="val")
        notes += val_notes
    except UserError as exc:
        notes.append(f"no validation loss: {exc}")
        val = None
    return train, val, classes, notes


def feature_width(settings: Settings, dataset: DetectionDataset) -> int:
    """model.in_channels, or the cached features' width when it is unset; they must agree."""
    channels = dataset.inputs(dataset.items[0]).shape[0]
    wanted = settings.model.in_channels
    if wanted is not None and channels != wanted:
        raise UserError(
            f"{features_dir(settings)}: cached features have {channels} channels "
            f"but model.in_channels is {wanted}"
        )
    if channels % 4:
        raise UserError(
            f"{features_dir(settings)}: the detector needs a feature width divisible by 4, got {channels}"
        )
    return channels


def validation_loss(model, dataset, settings: Settings, device, *, dist: Distributed) -> float | None:
    """Mean loss on the evaluation subset with the fixed proposal grid (no gradient)."""
    if dataset is None:
        return None
    torch.manual_seed(settings.seed)
    model.eval()
    total, n = 0.0, 0
    tr, thresholds = settings.train, settings.model.stage_iou_thresholds
    tem_loss = VARIANTS[settings.model.variant].tem_loss
    data = loader(dataset, tr.batch_size, tr.workers, False, seed=settings.seed, dist=dist, device=device)
    with torch.no_grad():
        for batch in data:
            batch = to_device(batch, device)
            out = model(batch["inputs"], batch["anchors"])
            terms = detector_loss(out, batch, thresholds, tem_loss)
            total += float(terms["total"]) * len(batch["index"])
            n += len(batch["index"])
    model.train()
    return dist.mean(total / max(n, 1))


def run(
    settings: Settings, *, resume: bool = False, restart: bool = False, progress: Progress = SILENT
) -> TrainSummary:
    """Train for train.epochs epochs (continuing from last.pt with `resume`)."""
    tr = settings.train
    device, dist = start_run(settings, tr)
    train_set, val_set, classes, notes = feature_datasets(settings)
    model_settings = settings.model.model_copy(update={"in_channels": feature_width(settings, train_set)})
    model = build_detector(model_settings, len(classes)).to(device)
    thresholds, tem_loss = model_settings.stage_iou_thresholds, VARIANTS[model_settings.variant].tem_loss
    optimizer = make_optimizer([{"params": model.parameters(), "lr": tr.lr}], tr.optimizer, tr.weight_decay)

    def step(batch: dict, scale) -> dict:
        model.train()
        with autocast(device, tr.amp):
            out = model(batch["inputs"], batch["anchors"])
        terms = detector_loss(as_float(out), batch, thresholds, tem_loss)
        (terms["total"] * scale).backward()
        return terms

    job = Job(
        "pretrain",
        {"model": model},
        optimizer,
        torch.optim.lr_scheduler.StepLR(optimizer, tr.lr_step, tr.lr_gamma),
        train_set=train_set,
        step=step,
        validate=lambda: validation_loss(model, val_set, settings, device, dist=dist),
        classes=classes,
        parameters=model.detector_parameters(),
        model_settings=model_settings,
        finish=classifier_refit(model, train_set, settings, device),
        inputs=train_set.load.cache.expected,  # the settings the training cache was checked against
    )
    return fit(
        job, settings, tr, dist, device=device, resume=resume, restart=restart, progress=progress, notes=notes
    )
