"""`etad train`: pretrain the ETAD detector on frozen features from the HDF5 feature cache.

Reads <work_dir>/cache/features/<id>.h5; writes <work_dir>/pretrain/checkpoints/epoch_NNN.pt with
last.pt / best.pt pointers, and <work_dir>/pretrain/metrics.jsonl. Resumable from last.pt.
Multi-GPU / multi-node through torchrun (DistributedDataParallel; gloo on CPU, nccl on GPU).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from stages.cache import features_dir
from stages.datasets import DetectionDataset, build_items
from stages.errors import UserError
from stages.model.detector import build_detector
from stages.model.losses import detector_loss
from stages.store import VideoCache
from stages.training import (
    Distributed,
    MetricsLog,
    autocast,
    epoch_seed,
    load_checkpoint,
    loader,
    make_optimizer,
    pick_device,
    save_checkpoint,
    seed_everything,
    to_device,
    weights_checksum,
)


@dataclass
class TrainSummary:
    out_dir: Path
    epochs: list[dict] = field(default_factory=list)  # per epoch: epoch, train_loss, val_loss, lr, seconds
    notes: list[str] = field(default_factory=list)
    resumed_from: int = 0
    parameters: int = 0
    peak_memory_mb: float = 0.0


def run_dir(settings, kind: str = "pretrain") -> Path:
    return settings.work_dir / kind


def feature_datasets(settings) -> tuple[DetectionDataset, DetectionDataset | None, list[str], list[str]]:
    """Training and validation datasets over the feature cache (validation only if it has videos)."""
    cache = VideoCache(features_dir(settings), "features")
    if settings.data.annotations is None:
        raise UserError("data.annotations is not set")

    def load(video_id: str, window: int | None):
        if window is None:
            return cache.read(video_id)
        return cache.read(video_id, slice(window, window + settings.data.temporal_scale))

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
    out_dir = run_dir(settings)
    ckpt_dir = out_dir / "checkpoints"
    seed_everything(settings.seed)
    train_set, val_set, classes, notes = feature_datasets(settings)
    check_inputs(train_set, settings.model.in_channels, str(features_dir(settings)))
    model = build_detector(settings.model, len(classes)).to(device)
    optimizer = make_optimizer([{"params": model.parameters(), "lr": tr.lr}], tr.optimizer, tr.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, tr.lr_step, tr.lr_gamma)
    summary = TrainSummary(out_dir, notes=notes, parameters=model.detector_parameters())
    start_epoch, best = 0, float("inf")
    if resume and (ckpt_dir / "last.pt").is_file():
        state = load_checkpoint(ckpt_dir / "last.pt")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, best = int(state["epoch"]), float(state.get("best", best))
        summary.resumed_from = start_epoch
    elif resume:
        notes.append(f"--resume: no {ckpt_dir / 'last.pt'} yet, starting from scratch")
    net = model
    if dist.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    log = MetricsLog(out_dir / "metrics.jsonl", fresh=start_epoch == 0, enabled=dist.main)
    data = loader(train_set, tr.batch_size, tr.workers, True, settings.seed, dist, device)
    if on_start:
        on_start(len(data) * max(tr.epochs - start_epoch, 0), len(train_set))
    scaler = torch.amp.GradScaler(enabled=tr.amp == "fp16" and device.type == "cuda")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step = start_epoch * len(data)
    for epoch in range(start_epoch, tr.epochs):
        began = time.perf_counter()
        train_set.set_epoch(epoch)
        data.generator.manual_seed(epoch_seed(settings.seed, epoch))
        if dist.world > 1:
            data.sampler.set_epoch(epoch)
        torch.manual_seed(epoch_seed(settings.seed, epoch, dist.rank))  # the losses' negative sampling
        net.train()
        losses = []
        for batch in data:
            t0 = time.perf_counter()
            batch = to_device(batch, device)
            with autocast(device, tr.amp):
                out = net(batch["inputs"], batch["anchors"])
            terms = detector_loss(_float(out), batch, settings.model.stage_iou_thresholds)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(terms["total"]).backward()
            if tr.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), tr.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            step += 1
            record = {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in terms.items()}
            losses.append(record["total"])
            record.update(
                epoch=epoch + 1,
                step=step,
                lr=optimizer.param_groups[0]["lr"],
                seconds=time.perf_counter() - t0,
            )
            record["videos_per_s"] = len(batch["index"]) / max(record["seconds"], 1e-9)
            if step % tr.log_every == 0 or step == 1:
                log.write(record)
            if on_step:
                on_step(record)
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        train_loss = dist.mean(sum(losses) / max(len(losses), 1))
        val_loss = validation_loss(net, val_set, settings, device, dist)
        score = val_loss if val_loss is not None else train_loss
        is_best = score < best
        best = min(best, score)
        epoch_record = {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss, "lr": lr,
                        "seconds": time.perf_counter() - began,
                        "weights_checksum_per_rank": dist.gather(weights_checksum(model))}  # fmt: skip
        summary.epochs.append(epoch_record)
        log.write({"event": "epoch", **epoch_record})
        if dist.main:
            state = {
                "kind": "pretrain",
                "epoch": epoch + 1,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "best": best,
                "classes": classes,
                "settings": settings.model_dump(mode="json"),
                "train_loss": train_loss,
                "val_loss": val_loss,
            }
            save_checkpoint(ckpt_dir, epoch + 1, state, is_best)
        dist.barrier()
    if device.type == "cuda":
        summary.peak_memory_mb = torch.cuda.max_memory_allocated(device) / 2**20
    dist.close()
    return summary


def _float(out: dict) -> dict:
    """Detector outputs in float32 for the losses (they may come out of autocast in half precision)."""
    return {k: [t.float() for t in v] if isinstance(v, list) else v.float() for k, v in out.items()}
