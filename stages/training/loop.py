"""The training loop every `etad train` variant runs (`fit`): a Job says what to train and how to
take a step; the loop seeds, steps, logs, checkpoints and resumes.

Reproducibility: every random draw is derived from the seed and where it happens: the data order
from (seed, epoch) (training.batches), an item's draws (augmentation, proposals, sampled snippets)
from (seed, epoch, item), the losses' from (seed, epoch, micro-batch). Nothing carries over from
one epoch to the next but the weights, optimizer, schedule and fp16 scale, all in the checkpoints,
so a resumed run continues exactly as an uninterrupted one, and N ranks equal one process taking
the same micro-batches (`accumulate`).

Several processes (torchrun): no DistributedDataParallel wrapper; each rank takes its step's
backward passes, then the gradients are averaged once (Distributed.average_gradients), and one
optimizer-step function (optimisation.Precision) serves every precision.

Safety: a run folder that holds an earlier run is never overwritten by accident (`--resume`
continues it, `--restart` moves it aside); a non-finite loss stops the run before the optimizer
step, keeping the last good checkpoint.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from stages.core.checkpoints import save_checkpoint
from stages.core.errors import TrainingDiverged
from stages.core.progress import SILENT, Progress
from stages.core.runtime import (
    Distributed,
    PhaseMemory,
    loader_workers,
    pick_device,
    seed_everything,
    to_device,
    use_threads,
    weights_checksum,
)
from stages.core.workdir import run_dir
from stages.data.fingerprints import ExpectedFingerprint
from stages.model.classifier import VideoClassifier, refit
from stages.training.batches import EpochBatches, micro_batch_seed
from stages.training.metrics_log import MetricsLog
from stages.training.optimisation import Precision
from stages.training.resume import SECTIONS, restore
from stages.training.run_folder import RunLock, prepare_run_dir

if TYPE_CHECKING:  # for type hints only
    from stages.core.settings import ModelSettings, Optimisation, Settings
    from stages.data.datasets import DetectionDataset


def start_run(settings: Settings, section: Optimisation) -> tuple[torch.device, Distributed]:
    """What every training run does first: CPU threads, the device, torchrun's process group (which
    `fit` closes) and the seeds."""
    use_threads(settings.threads)
    device = pick_device(section.device)
    dist = Distributed.setup(device)
    seed_everything(settings.seed)
    return dist.device(device), dist


def loader(
    dataset,
    batch_size: int,
    workers: int | None,
    shuffle: bool,
    *,
    seed: int,
    dist: Distributed,
    device: torch.device,
    accumulate: int = 1,
):
    """A DataLoader over this rank's micro-batches (training.batches.EpochBatches: drawn from
    (seed, epoch) alone; call `.batch_sampler.set_epoch(e)`). `workers` unset: min(cores - 1, 8)
    on CUDA, 0 on the CPU; workers persist across epochs (the epoch travels with each item key)."""
    workers = loader_workers(workers, device)
    batches = EpochBatches(
        len(dataset),
        batch_size,
        world=dist.world,
        rank=dist.rank,
        accumulate=accumulate,
        seed=seed,
        shuffle=shuffle,
    )
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(seed),  # worker seeds; leaves torch's own generator be
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers else None,
        # fork where there is one: workers start in no time and share the dataset's memory (in a
        # study's child, started by spawn, the default would be spawn too)
        multiprocessing_context="fork" if workers and "fork" in mp.get_all_start_methods() else None,
    )


@dataclass
class TrainSummary:
    out_dir: Path
    kind: str = "pretrain"  # the Job's kind: pretrain, e2e or encoder
    epochs: list[dict] = field(default_factory=list)  # per epoch: epoch, train_loss, val_loss, lr, seconds
    notes: list[str] = field(default_factory=list)
    resumed_from: int = 0
    parameters: int = 0
    peak_memory_mb: float = 0.0  # CUDA: the training step's peak (its phases' without the refit)
    phase_memory_mb: dict[str, float] = field(default_factory=dict)  # CUDA: per phase, incl. refit
    step_seconds: list[float] = field(default_factory=list)  # every optimizer step of this call


@dataclass
class Job:
    """One training run: what to save, how to take a step, what to validate on."""

    kind: str  # "pretrain" or "e2e": the run folder under work_dir and the checkpoint kind
    modules: dict[str, torch.nn.Module]  # saved by name; "model" is the detector
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train_set: torch.utils.data.Dataset
    # (batch, scale) -> loss terms; leaves the gradients of scale x loss in the parameters
    step: Callable[[dict, torch.Tensor | float], dict]
    validate: Callable[[], float | None]
    classes: list[str]
    parameters: int = 0
    model_settings: ModelSettings | None = None  # the model section as run (in_channels resolved)
    finish: Callable[[], dict] | None = None  # after the last epoch's steps, before its checkpoint
    memory: PhaseMemory | None = None  # the step's phases' peak CUDA memory, when the step records them
    # what it is trained on: the cache's settings by name (fingerprints.ExpectedFingerprint), saved in every
    # checkpoint so that `--resume` and `etad infer` refuse inputs made with other settings
    inputs: ExpectedFingerprint | None = None


def classifier_refit(
    model: torch.nn.Module,
    dataset: DetectionDataset,
    settings: Settings,
    device: torch.device,
    *,
    encode: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Callable[[], dict] | None:
    """Job.finish that fits the video classifier head again on the final features of the training
    items (stages.model.classifier.refit), or None without a video head or model.classifier_refit_steps
    (the per-proposal head trains with the detector, on its features)."""
    steps = settings.model.classifier_refit_steps
    if not isinstance(model.classifier, VideoClassifier) or steps == 0:
        return None

    def finish() -> dict:
        inputs, targets = dataset.classifier_data(encode)
        fitted = refit(model.classifier, inputs.to(device), targets.to(device), steps, seed=settings.seed)
        return {"classifier_refit_steps": steps, **fitted}

    return finish


@dataclass
class Run:
    """What one call of `fit` works with, so the loop's pieces take one argument, not eight."""

    job: Job
    settings: Settings
    section: Optimisation
    dist: Distributed
    device: torch.device
    summary: TrainSummary
    ckpt_dir: Path
    precision: Precision
    log: MetricsLog | None = None
    best: float = float("inf")
    step: int = 0  # optimizer steps taken so far (also before a resume)


def fit(
    job: Job,
    settings: Settings,
    section: Optimisation,
    dist: Distributed,
    *,
    device: torch.device,
    resume: bool,
    restart: bool = False,
    progress: Progress = SILENT,
    notes: list[str] | None = None,
) -> TrainSummary:
    """The epoch loop shared by `etad train`, `train --e2e` and `train --encoder`: seeds per epoch,
    steps, clips, logs JSON lines, validates, writes a checkpoint per epoch, resumes from last.pt.
    Closes the process group of `start_run` when it ends, however it ends."""
    lock, run = None, None
    try:
        out_dir = run_dir(settings, job.kind)
        summary = TrainSummary(out_dir, job.kind, notes=list(notes or []), parameters=job.parameters)
        places = dict(summary=summary, ckpt_dir=out_dir / "checkpoints")
        run = Run(
            job, settings, section, dist, device=device, precision=Precision(section.amp, device), **places
        )
        if dist.main:
            lock = RunLock(out_dir)
            prepare_run_dir(out_dir, resume, restart, summary.notes)
        dist.barrier()
        start_epoch = restore(run) if resume else 0
        dist.broadcast(job.modules.values())  # every rank starts from rank 0's weights
        shuffled = dict(seed=settings.seed, dist=dist, device=device, accumulate=section.accumulate)
        data = loader(job.train_set, section.batch_size, section.workers, True, **shuffled)
        steps = len(data) // section.accumulate
        progress.start(steps * max(section.epochs - start_epoch, 0), f"{len(job.train_set)} training items")
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        run.step = start_epoch * steps
        run.log = MetricsLog(
            out_dir / "metrics.jsonl", keep_epochs=start_epoch, enabled=dist.main, step=run.step
        )
        if run.log.note:
            summary.notes.append(run.log.note)
        for epoch in range(start_epoch, section.epochs):
            _epoch(run, data, epoch, progress)
        if device.type == "cuda":
            _record_peaks(summary, job, device)
        return summary
    finally:
        if run is not None and run.log is not None:
            run.log.close()
        if lock is not None:
            lock.release()
        dist.close()


def _record_peaks(summary: TrainSummary, job: Job, device: torch.device) -> None:
    """The run's CUDA peak, and each phase's where the job measured them (the refit apart)."""
    summary.peak_memory_mb = torch.cuda.max_memory_allocated(device) / 2**20
    if job.memory is not None and job.memory.peaks_mib:
        summary.phase_memory_mb = dict(job.memory.peaks_mib)
        summary.peak_memory_mb = max(v for k, v in summary.phase_memory_mb.items() if k != "refit")


def _epoch(run: Run, data: torch.utils.data.DataLoader, epoch: int, progress: Progress) -> None:
    """One epoch: every step, the finish hook after the last one, the epoch record and checkpoint."""
    job, dist = run.job, run.dist
    began = time.perf_counter()
    data.batch_sampler.set_epoch(epoch)
    losses, waited, items, batches = [], 0.0, 0, iter(data)
    for index in range(len(data) // run.section.accumulate):
        loss, wait, count = _step(run, batches, epoch, index, progress=progress)
        losses, waited, items = losses + [loss], waited + wait, items + count
    seconds = time.perf_counter() - began
    if run.device.type == "cuda" and waited > 0.2 * seconds:
        run.summary.notes.append(
            f"epoch {epoch + 1}: the GPU waited on data {100 * waited / seconds:.0f}% of the time; "
            f"raise {SECTIONS[run.job.kind]}.workers or move augmentation off the CPU"
        )
    if epoch + 1 == run.section.epochs and job.finish is not None:
        t0 = time.perf_counter()
        with job.memory("refit") if job.memory is not None else contextlib.nullcontext():
            finished = job.finish()
        run.log.write(
            {"event": "finish", "epoch": epoch + 1, **finished, "seconds": time.perf_counter() - t0}
        )
        run.summary.notes.append(", ".join(f"{k} {v:.4g}" for k, v in finished.items()))
    lr = job.optimizer.param_groups[0]["lr"]
    job.scheduler.step()
    dist.broadcast(job.modules.values(), buffers_only=True)  # rank 0's BatchNorm statistics, as saved
    train_loss = dist.mean(sum(losses) / max(len(losses), 1))
    val_loss = job.validate()
    score = val_loss if val_loss is not None else train_loss
    is_best = score < run.best
    run.best = min(run.best, score)
    record = {
        "epoch": epoch + 1,
        "at_step": run.step,
        "train_loss": train_loss,
        "val_loss": val_loss,
        "lr": lr,
        "seconds": time.perf_counter() - began,
        "data_wait_s": waited,
        "items_per_s": items / max(seconds, 1e-9),
        "weights_checksum_per_rank": dist.gather(weights_checksum(job.modules["model"])),
    }
    if job.memory is not None and job.memory.peaks_mib:
        record["peak_mib_per_phase"] = dict(job.memory.peaks_mib)
    run.summary.epochs.append(record)
    run.log.write({"event": "epoch", **record})
    if dist.main:
        _save(run, epoch, train_loss, val_loss, is_best=is_best)
    dist.barrier()


def _micro_batches(run: Run, batches, epoch: int, index: int):
    """(batch, seconds waited for it) of step `index`'s micro-batches, torch's generator seeded
    for each (the losses' negative sampling) from its place among every rank's micro-batches."""
    accumulate, dist = run.section.accumulate, run.dist
    for a in range(accumulate):
        t0 = time.perf_counter()
        batch = next(batches)
        wait = time.perf_counter() - t0
        place = (index * accumulate + a) * dist.world + dist.rank
        torch.manual_seed(micro_batch_seed(run.settings.seed, epoch, place))
        yield to_device(batch, run.device), wait


def _step(run: Run, batches, epoch: int, index: int, *, progress: Progress) -> tuple[float, float, int]:
    """Optimizer step `index` of the epoch over `section.accumulate` micro-batches: (its mean total
    loss, seconds waited for data, items). A non-finite loss on any rank stops every rank first.
    Logged: its compute seconds, items/s (`videos_per_s`), `data_wait_s`, and a skipped fp16 step."""
    job, section, dist = run.job, run.section, run.dist
    t0 = time.perf_counter()
    job.optimizer.zero_grad(set_to_none=True)
    records, waited, items = [], 0.0, 0
    for batch, wait in _micro_batches(run, batches, epoch, index):
        terms = job.step(batch, run.precision.scale)
        records.append({k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in terms.items()})
        waited, items = waited + wait, items + len(batch["index"])
    record = {k: sum(r[k] for r in records) / len(records) for k in records[0]}
    if not dist.all_finite(record["total"]):
        raise TrainingDiverged(
            f"epoch {epoch + 1}, step {run.step + 1}: the loss is {record['total']} (on this rank or "
            f"another); stopped before the optimizer step (the last good checkpoint in {run.ckpt_dir} "
            "is kept)"
        )
    dist.average_gradients([p for g in job.optimizer.param_groups for p in g["params"]], section.accumulate)
    if not run.precision.step(job.optimizer, section.grad_clip):
        record["skipped"] = 1.0  # fp16: a gradient overflowed; the scale shrinks and the next step retries
    run.step += 1
    seconds = time.perf_counter() - t0 - waited
    run.summary.step_seconds.append(seconds)
    record.update(
        epoch=epoch + 1,
        step=run.step,
        lr=job.optimizer.param_groups[0]["lr"],
        seconds=seconds,
        data_wait_s=waited,
        videos_per_s=items / max(seconds, 1e-9),
    )
    if run.step % section.log_every == 0 or run.step == 1 or "skipped" in record:
        run.log.write(record)
    speed = f"{record['videos_per_s']:.1f} items/s"
    progress.advance(info=f"epoch {epoch + 1} loss {record['total']:.3f} {speed}")
    return record["total"], waited, items


def _save(run: Run, epoch: int, train_loss: float, val_loss: float | None, *, is_best: bool) -> None:
    """The epoch's checkpoint: every module, optimizer, schedule, generators, classes, settings."""
    job = run.job
    state = {name: module.state_dict() for name, module in job.modules.items()}
    run_settings = run.settings.model_dump(mode="json")
    if job.model_settings is not None:
        run_settings["model"] = job.model_settings.model_dump(mode="json")
    state.update(
        kind=job.kind,
        epoch=epoch + 1,
        optimizer=job.optimizer.state_dict(),
        scheduler=job.scheduler.state_dict(),
        scaler=run.precision.scaler.state_dict(),
        best=run.best,
        classes=job.classes,
        settings=run_settings,
        threads=torch.get_num_threads(),  # CPU results are bitwise reproducible for one thread count
        inputs=job.inputs.as_record() if job.inputs is not None else None,
        train_loss=train_loss,
        val_loss=val_loss,
    )
    save_checkpoint(run.ckpt_dir, epoch + 1, state, is_best)
