"""What frozen-feature pretraining and end-to-end training share: devices, seeding, DDP setup,
optimizers, the step schedule, atomic checkpoints with `last`/`best` pointers, the metrics log.

Reproducibility: every random draw is derived from (seed, epoch[, index, rank]) at the start of an
epoch, and the state of every other generator a run draws from is saved in its checkpoints, so a
run resumed from an epoch checkpoint continues exactly as an uninterrupted run would.

Safety: a run folder that holds an earlier run is never overwritten by accident (`--resume`
continues it, `--restart` moves it aside); a non-finite loss stops the run before the optimizer
step, keeping the last good checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from stages.core.errors import TrainingDiverged, UserError
from stages.core.files import atomic_output, ensure_writable_dir
from stages.model.classifier import refit
from stages.core.progress import SILENT, Progress
from stages.core.workdir import run_dir

if TYPE_CHECKING:  # for type hints only
    from stages.data.datasets import DetectionDataset
    from stages.core.settings import ModelSettings, Optimisation, Settings

CHECKPOINT_FORMAT = "etad-checkpoint-1"


def as_float(out: dict) -> dict:
    """Detector outputs in float32 for the losses (they may come out of autocast in half precision)."""
    return {k: [t.float() for t in v] if isinstance(v, list) else v.float() for k, v in out.items()}


def load_weights(module: torch.nn.Module, state: dict, source: object, what: str = "model") -> None:
    """module.load_state_dict(state[what]), or a one-line UserError saying why it does not fit."""
    if not isinstance(state.get(what), dict):
        raise UserError(f"{source}: holds no {what!r} weights")
    try:
        module.load_state_dict(state[what])
    except RuntimeError as exc:
        first = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), None)
        detail = first or str(exc).splitlines()[0]
        raise UserError(f"{source}: the {what} weights do not fit this model: {detail[:200]}") from None


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device is 'cuda' but no CUDA device is available")
    return torch.device(name)


def use_threads(threads: int | None) -> int:
    """Set torch's CPU threads: `threads`, or every core this process may use."""
    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(threads)
    return threads


def start_run(settings: Settings, section: Optimisation) -> tuple[torch.device, Distributed]:
    """What every training run does first: CPU threads, the device, torchrun's process group (which
    `fit` closes) and the seeds."""
    use_threads(settings.threads)
    device = pick_device(section.device)
    dist = Distributed.setup(device)
    seed_everything(settings.seed)
    return dist.device(device), dist


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    return seed * 1_000_003 + epoch * 7919 + rank * 104_729 + 17


@dataclass
class Distributed:
    """torchrun's environment: rank, world size, local rank; a single process when absent."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def setup(cls, device: torch.device) -> Distributed:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if device.type == "cuda":
            torch.cuda.set_device(local)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(rank, world, local)

    def device(self, device: torch.device) -> torch.device:
        return torch.device("cuda", self.local_rank) if device.type == "cuda" and self.world > 1 else device

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def mean(self, value: float) -> float:
        """The mean of a number over all ranks (every rank gets it)."""
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return float(t.item()) / self.world

    def gather(self, value: float) -> list[float]:
        """One number from every rank, in rank order (a check that replicas agree)."""
        if self.world == 1:
            return [value]
        t = torch.tensor([value], dtype=torch.float64)
        out = [torch.zeros_like(t) for _ in range(self.world)]
        torch.distributed.all_gather(out, t)
        return [float(x.item()) for x in out]

    def close(self) -> None:
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def weights_checksum(model: torch.nn.Module) -> float:
    """A number that differs when any weight differs (to check that DDP replicas agree)."""
    with torch.no_grad():
        return float(sum((p.double() * (i + 1)).sum() for i, p in enumerate(model.parameters())))


def make_optimizer(groups: list[dict], kind: str, weight_decay: float) -> torch.optim.Optimizer:
    cls = torch.optim.AdamW if kind == "adamw" else torch.optim.Adam
    return cls(groups, weight_decay=weight_decay)


def autocast(device: torch.device, amp: str):
    """Mixed precision on GPU only (bf16 or fp16); a no-op context elsewhere."""
    enabled = amp != "none" and device.type == "cuda"
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype, enabled=enabled)


def save_checkpoint(folder: Path, epoch: int, state: dict, best: bool) -> Path:
    """Write checkpoints/epoch_NNN.pt atomically, then point last.pt (and best.pt) at it (hard links,
    so each pointer is a complete checkpoint that survives the epoch file being deleted)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"epoch_{epoch:03d}.pt"
    tmp = folder / f".{path.name}.tmp{os.getpid()}"
    torch.save({"format": CHECKPOINT_FORMAT, **state}, tmp)
    os.replace(tmp, path)
    for name in ("last.pt", "best.pt") if best else ("last.pt",):
        pointer = folder / name
        link_tmp = folder / f".{name}.tmp{os.getpid()}"
        link_tmp.unlink(missing_ok=True)
        try:
            os.link(path, link_tmp)
        except OSError:
            import shutil

            shutil.copyfile(path, link_tmp)
        os.replace(link_tmp, pointer)
    return path


def read_weights_file(path: Path) -> object:
    """torch.load with weights_only (no code is unpickled), failures as one-line UserErrors."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a truncated or foreign file
        raise UserError(f"{path}: not a loadable checkpoint ({exc.__class__.__name__})") from None


def as_etad_checkpoint(state: object, path: Path) -> dict:
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path}: not an etad checkpoint (no '{CHECKPOINT_FORMAT}' format tag)")
    if state.get("kind") == "finetune":  # the name of end-to-end runs before 0.2
        state["kind"] = "e2e"
    return state


def load_checkpoint(path: Path) -> dict:
    """A checkpoint written by etad."""
    return as_etad_checkpoint(read_weights_file(path), path)


class MetricsLog:
    """JSON lines, one per logged iteration or epoch. A resumed run first drops the records of the
    epochs after its checkpoint (an interrupted epoch is run again and logged again)."""

    def __init__(self, path: Path, keep_epochs: int, enabled: bool = True) -> None:
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if keep_epochs > 0 and path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a kill
                if int(record.get("epoch", 0)) <= keep_epochs:
                    kept.append(line + "\n")
        with atomic_output(path) as tmp:
            tmp.write_text("".join(kept), encoding="utf-8")

    def write(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


def to_device(batch: dict, device: torch.device) -> dict:
    non_blocking = device.type == "cuda"
    return {k: v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v for k, v in batch.items()}


def loader(
    dataset, batch_size: int, workers: int, shuffle: bool, seed: int, dist: Distributed, device: torch.device
):
    """A DataLoader whose order depends only on (seed, epoch): call `.sampler.set_epoch(e)` or rebuild."""
    sampler = None
    if dist.world > 1:
        sampler = torch.utils.data.DistributedSampler(
            dataset, dist.world, dist.rank, shuffle=shuffle, seed=seed
        )
    generator = torch.Generator().manual_seed(seed)
    # training drops the last incomplete batch, as the original, unless that would leave no batch
    drop_last = shuffle and len(dataset) // max(dist.world, 1) >= batch_size
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        generator=generator,
        persistent_workers=False,
        drop_last=drop_last,
    )


@dataclass
class TrainSummary:
    out_dir: Path
    kind: str = "pretrain"  # the Job's kind: pretrain, e2e or encoder
    epochs: list[dict] = field(default_factory=list)  # per epoch: epoch, train_loss, val_loss, lr, seconds
    notes: list[str] = field(default_factory=list)
    resumed_from: int = 0
    parameters: int = 0
    peak_memory_mb: float = 0.0


@dataclass
class Job:
    """One training run: what to save, how to take a step, what to validate on."""

    kind: str  # "pretrain" or "e2e": the run folder under work_dir and the checkpoint kind
    modules: dict[str, torch.nn.Module]  # saved by name; "model" is the detector
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train_set: torch.utils.data.Dataset
    step: Callable[[dict], dict]  # batch -> loss terms; leaves gradients in the parameters
    validate: Callable[[], float | None]
    classes: list[str]
    parameters: int = 0
    generators: dict[str, torch.Generator] = field(default_factory=dict)  # saved and restored
    model_settings: ModelSettings | None = None  # the model section as run (in_channels resolved)
    finish: Callable[[], dict] | None = None  # after the last epoch's steps, before its checkpoint


def classifier_refit(
    model: torch.nn.Module,
    dataset: DetectionDataset,
    settings: Settings,
    device: torch.device,
    encode: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Callable[[], dict] | None:
    """Job.finish that fits the video classifier head again on the final features of the training
    items (stages.model.classifier.refit), or None without a head or model.classifier_refit_steps."""
    steps = settings.model.classifier_refit_steps
    if model.classifier is None or steps == 0:
        return None

    def finish() -> dict:
        inputs, targets = dataset.classifier_data(encode)
        fitted = refit(model.classifier, inputs.to(device), targets.to(device), steps, settings.seed)
        return {"classifier_refit_steps": steps, **fitted}

    return finish


def earlier_run(out_dir: Path) -> str | None:
    """What a run folder already holds (checkpoints or a metrics log), or None when it is empty."""
    ckpt_dir = out_dir / "checkpoints"
    epochs = sorted(ckpt_dir.glob("epoch_*.pt")) if ckpt_dir.is_dir() else []
    if epochs:
        return f"checkpoints up to {epochs[-1].name}"
    if (ckpt_dir / "last.pt").is_file():
        return "a last.pt checkpoint"
    log = out_dir / "metrics.jsonl"
    if log.is_file() and log.stat().st_size > 0:
        return "the metrics of an interrupted first epoch"
    return None


def set_aside(out_dir: Path) -> Path:
    """Move a run folder to <name>.<time> beside it (--restart keeps the old run, never deletes it)."""
    target = out_dir.with_name(f"{out_dir.name}.{time.strftime('%Y%m%d-%H%M%S')}")
    n = 1
    while target.exists():
        target = out_dir.with_name(f"{out_dir.name}.{time.strftime('%Y%m%d-%H%M%S')}-{n}")
        n += 1
    os.replace(out_dir, target)
    return target


def prepare_run_dir(out_dir: Path, resume: bool, restart: bool, notes: list[str]) -> None:
    """Refuse to start over an earlier run unless told how (resume or restart); check that the
    checkpoint folder is writable before any work; clear temporaries of killed saves."""
    held = earlier_run(out_dir)
    if held is not None and not resume:
        if not restart:
            raise UserError(
                f"{out_dir}: holds an earlier run ({held}); pass --resume to continue it "
                "or --restart to move it aside and start again"
            )
        notes.append(f"the earlier run was moved to {set_aside(out_dir)}")
    try:
        ensure_writable_dir(out_dir / "checkpoints")
    except OSError as exc:
        raise UserError(
            f"{out_dir / 'checkpoints'}: cannot write checkpoints: {exc.strerror or exc}"
        ) from None


def rng_state(generators: dict[str, torch.Generator]) -> dict:
    """The state of the generators that carry over from one epoch to the next (tensors only, so
    that checkpoints load with weights_only)."""
    return {f"generator.{name}": g.get_state() for name, g in generators.items()}


def restore_generators(state: dict, generators: dict[str, torch.Generator]) -> None:
    """Put back the generators a run draws from across epochs (the others are re-seeded per epoch)."""
    saved = state.get("rng") or {}
    for name, generator in generators.items():
        if f"generator.{name}" in saved:
            generator.set_state(saved[f"generator.{name}"])


def fit(job: Job, settings: Settings, section: Optimisation, dist: Distributed, device: torch.device, *,
        resume: bool, restart: bool = False, progress: Progress = SILENT,
        notes: list[str] | None = None) -> TrainSummary:  # fmt: skip
    """The epoch loop shared by `etad train` and `etad train --e2e`: seeds per epoch, steps,
    clips, logs JSON lines, validates, writes a checkpoint per epoch, resumes from last.pt. Closes
    the process group of `start_run` when it ends, however it ends."""
    try:
        return _epochs(job, settings, section, dist, device, resume, restart, progress, notes)
    finally:
        dist.close()


def _epochs(job: Job, settings: Settings, section: Optimisation, dist: Distributed, device: torch.device,
            resume: bool, restart: bool, progress: Progress,
            notes: list[str] | None) -> TrainSummary:  # fmt: skip
    out_dir = run_dir(settings, job.kind)
    ckpt_dir = out_dir / "checkpoints"
    summary = TrainSummary(out_dir, job.kind, notes=list(notes or []), parameters=job.parameters)
    if dist.main:
        prepare_run_dir(out_dir, resume, restart, summary.notes)
    dist.barrier()
    start_epoch, best = 0, float("inf")
    if resume and (ckpt_dir / "last.pt").is_file():
        state = load_checkpoint(ckpt_dir / "last.pt")
        if state.get("kind") != job.kind:
            raise UserError(
                f"{ckpt_dir / 'last.pt'}: a {state.get('kind')} checkpoint, cannot resume {job.kind}"
            )
        for name, module in job.modules.items():
            load_weights(module, state, ckpt_dir / "last.pt", name)
        job.optimizer.load_state_dict(state["optimizer"])
        job.scheduler.load_state_dict(state["scheduler"])
        restore_generators(state, job.generators)
        start_epoch, best = int(state["epoch"]), float(state.get("best", best))
        summary.resumed_from = start_epoch
    elif resume:
        summary.notes.append(f"--resume: no {ckpt_dir / 'last.pt'} yet, starting from scratch")
    log = MetricsLog(out_dir / "metrics.jsonl", keep_epochs=start_epoch, enabled=dist.main)
    data = loader(job.train_set, section.batch_size, section.workers, True, settings.seed, dist, device)
    progress.start(len(data) * max(section.epochs - start_epoch, 0), f"{len(job.train_set)} training items")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    params = [p for group in job.optimizer.param_groups for p in group["params"]]
    step = start_epoch * len(data)
    for epoch in range(start_epoch, section.epochs):
        began = time.perf_counter()
        job.train_set.set_epoch(epoch)
        data.generator.manual_seed(epoch_seed(settings.seed, epoch))
        if dist.world > 1:
            data.sampler.set_epoch(epoch)
        torch.manual_seed(epoch_seed(settings.seed, epoch, dist.rank))  # the losses' negative sampling
        losses = []
        for batch in data:
            t0 = time.perf_counter()
            job.optimizer.zero_grad(set_to_none=True)
            terms = job.step(to_device(batch, device))
            record = {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in terms.items()}
            if not math.isfinite(record["total"]):
                raise TrainingDiverged(
                    f"epoch {epoch + 1}, step {step + 1}: the loss is {record['total']}; stopped before "
                    f"the optimizer step (the last good checkpoint in {ckpt_dir} is kept)"
                )
            if section.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, section.grad_clip)
            job.optimizer.step()
            step += 1
            losses.append(record["total"])
            seconds = time.perf_counter() - t0
            record.update(epoch=epoch + 1, step=step, lr=job.optimizer.param_groups[0]["lr"], seconds=seconds)
            record["videos_per_s"] = len(batch["index"]) / max(seconds, 1e-9)
            if step % section.log_every == 0 or step == 1:
                log.write(record)
            progress.advance(
                info=f"epoch {epoch + 1} loss {record['total']:.3f} {record['videos_per_s']:.1f} items/s"
            )
        if epoch + 1 == section.epochs and job.finish is not None:
            t0 = time.perf_counter()
            finished = job.finish()
            seconds = time.perf_counter() - t0
            log.write({"event": "finish", "epoch": epoch + 1, **finished, "seconds": seconds})
            summary.notes.append(", ".join(f"{k} {v:.4g}" for k, v in finished.items()))
        lr = job.optimizer.param_groups[0]["lr"]
        job.scheduler.step()
        train_loss = dist.mean(sum(losses) / max(len(losses), 1))
        val_loss = job.validate()
        score = val_loss if val_loss is not None else train_loss
        is_best = score < best
        best = min(best, score)
        model = job.modules["model"]
        record = {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss, "lr": lr,
                  "seconds": time.perf_counter() - began,
                  "weights_checksum_per_rank": dist.gather(weights_checksum(model))}  # fmt: skip
        summary.epochs.append(record)
        log.write({"event": "epoch", **record})
        if dist.main:
            state = {name: module.state_dict() for name, module in job.modules.items()}
            run_settings = settings.model_dump(mode="json")
            if job.model_settings is not None:
                run_settings["model"] = job.model_settings.model_dump(mode="json")
            state.update(
                kind=job.kind,
                epoch=epoch + 1,
                optimizer=job.optimizer.state_dict(),
                scheduler=job.scheduler.state_dict(),
                rng=rng_state(job.generators),
                best=best,
                classes=job.classes,
                settings=run_settings,
                train_loss=train_loss,
                val_loss=val_loss,
            )
            save_checkpoint(ckpt_dir, epoch + 1, state, is_best)
        dist.barrier()
    if device.type == "cuda":
        summary.peak_memory_mb = torch.cuda.max_memory_allocated(device) / 2**20
    return summary
