"""`etad train`: pretrain the ETAD detector on frozen features from the HDF5 feature cache.

Reads <work_dir>/cache/features/<id>.h5; writes <work_dir>/pretrain/checkpoints/epoch_NNN.pt with
last.pt / best.pt pointers, and <work_dir>/pretrain/metrics.jsonl. Resumable from last.pt.
Multi-GPU / multi-node through torchrun (DistributedDataParallel; gloo on CPU, nccl on GPU).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from stages.cache import features_dir
from stages.datasets import DetectionDataset, build_items, window_reader
from stages.errors import UserError
from stages.model.detector import build_detector
from stages.model.losses import detector_loss
from stages.store import VideoCache
from stages.training import (
    Distributed,
    Job,
    TrainSummary,
    autocast,
    fit,
    loader,
    make_optimizer,
    pick_device,
    seed_everything,
    to_device,
)


def feature_datasets(settings) -> tuple[DetectionDataset, DetectionDataset | None, list[str], list[str]]:
    """Training and validation datasets over the feature cache (validation only if it has videos)."""
    cache = VideoCache(features_dir(settings), "features")
    if settings.data.annotations is None:
        raise UserError("data.annotations is not set")

    load = window_reader(cache, settings.data.temporal_scale)
    d = settings.data
    items, classes, notes = build_items(settings, d.train_subset, cache.length, training=True)
    train = DetectionDataset(items, classes, settings, load, "train")
    try:
        val_items, _, val_notes = build_items(settings, d.eval_subset, cache.length, training=True)
        notes += val_notes
        val = DetectionDataset(val_items, classes, settings, load, "val")
    except UserError as exc:
        notes.append(f"no validation loss: {exc}")
        val = None
    return train, val, classes, notes


def check_inputs(dataset: DetectionDataset, in_channels: int, source: str) -> None:
    channels = dataset.inputs(dataset.items[0]).shape[0]
    if channels != in_channels:
        raise UserError(
            f"{source}: cached features have {channels} channels but model.in_channels is {in_channels}"
        )


def validation_loss(model, dataset, settings, device, dist: Distributed) -> float | None:
    """Mean loss on the evaluation subset with the fixed proposal grid (no gradient)."""
    if dataset is None:
        return None
    torch.manual_seed(settings.seed)
    model.eval()
    total, n = 0.0, 0
    data = loader(
        dataset, settings.train.batch_size, settings.train.workers, False, settings.seed, dist, device
    )
    with torch.no_grad():
        for batch in data:
            batch = to_device(batch, device)
            out = model(batch["inputs"], batch["anchors"])
            total += float(detector_loss(out, batch, settings.model.stage_iou_thresholds)["total"]) * len(
                batch["index"]
            )
            n += len(batch["index"])
    model.train()
    return dist.mean(total / max(n, 1))


def run(
    settings,
    resume: bool = False,
    on_start: Callable[[int, int], None] | None = None,
    on_step: Callable[[dict], None] | None = None,
) -> TrainSummary:
    """Train for settings.train.epochs epochs (continuing from last.pt with `resume`)."""
    tr = settings.train
    device = pick_device(tr.device)
    dist = Distributed.setup(device)
    device = dist.device(device)
    seed_everything(settings.seed)
    train_set, val_set, classes, notes = feature_datasets(settings)
    check_inputs(train_set, settings.model.in_channels, str(features_dir(settings)))
    model = build_detector(settings.model, len(classes)).to(device)
    optimizer = make_optimizer([{"params": model.parameters(), "lr": tr.lr}], tr.optimizer, tr.weight_decay)
    net = model
    if dist.world > 1:
        ids = [device.index] if device.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    scaler = torch.amp.GradScaler(enabled=tr.amp == "fp16" and device.type == "cuda")

    def step(batch: dict) -> dict:
        net.train()
        with autocast(device, tr.amp):
            out = net(batch["inputs"], batch["anchors"])
        terms = detector_loss(as_float(out), batch, settings.model.stage_iou_thresholds)
        scaler.scale(terms["total"]).backward()
        if scaler.is_enabled():
            scaler.unscale_(optimizer)
        return terms

    job = Job(
        "pretrain",
        {"model": model},
        optimizer,
        torch.optim.lr_scheduler.StepLR(optimizer, tr.lr_step, tr.lr_gamma),
        train_set,
        step,
        lambda: validation_loss(net, val_set, settings, device, dist),
        classes,
        model.detector_parameters(),
    )
    try:
        return fit(job, settings, tr, dist, device, resume, on_start, on_step, notes)
    finally:
        dist.close()


def as_float(out: dict) -> dict:
    """Detector outputs in float32 for the losses (they may come out of autocast in half precision)."""
    return {k: [t.float() for t in v] if isinstance(v, list) else v.float() for k, v in out.items()}
