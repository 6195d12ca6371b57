"""The one runner API: a stage run from Python, its settings and cost logged, its results returned.

- `train(settings, kind, ...) -> Trained`: `etad train` (kind "train"), `train --e2e` ("e2e"),
  `train --encoder` ("encoder").
- `infer(settings, ...) -> Inferred`: `etad infer`, and with `evaluate=True` its `--eval`.
- `ChildPoints`: what `etad study` runs each point with: `train` and `infer` in a fresh child
  process per point (so each point's peak memory is its own, and one GPU can be given to it),
  the point's figures sent back as a return value. Leaving its `with` block stops any child
  still running (Ctrl-C on a study never leaves a trainer behind), and a child whose study was
  killed outright stops itself.

The commands in etad_cli/app.py call these and print what they return; each run appends its cost
(seconds, peak memory) to <work_dir>/logs/stages.jsonl, which `etad report` reads.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from etad_cli.runlog import StageRun
from stages.core.errors import TrainingDiverged, UserError
from stages.core.progress import SILENT, Progress

if TYPE_CHECKING:  # the stages load when a command runs, so --help stays fast
    from stages.core.settings import Settings
    from stages.study import PointJob

TRAIN_STAGES = {"train": "train", "e2e": "train --e2e", "encoder": "train --encoder"}  # kind -> name


@dataclass
class Trained:
    summary: Any  # stages.training.loop.TrainSummary
    cost: dict  # the stages.jsonl record: seconds, peak_rss_mib, peak_gpu_mib, ... (empty off rank 0)


@dataclass
class Inferred:
    summary: Any  # stages.infer.InferSummary
    report: Any = None  # stages.evaluate.EvalReport with evaluate=True
    cost: dict = field(default_factory=dict)


def _trainer(kind: str):
    """The stage module of a kind of training run."""
    from stages import train, train_e2e, train_encoder

    return {"train": train, "e2e": train_e2e, "encoder": train_encoder}[kind]


def train(settings: Settings, kind: str, *, resume: bool = False, restart: bool = False,
          progress: Progress = SILENT, log: bool = True) -> Trained:  # fmt: skip
    """One training run; `log=False` on the non-zero ranks of torchrun (they write nothing shared)."""
    run = StageRun.start(settings, TRAIN_STAGES[kind]) if log else None
    summary = _trainer(kind).run(settings, resume=resume, restart=restart, progress=progress)
    cost = {}
    if run is not None:
        cost = run.done(epochs=len(summary.epochs), peak_gpu_mib=round(summary.peak_memory_mb, 1))
    return Trained(summary, cost)


def infer(settings: Settings, *, checkpoint: Path | None = None, plot: int = 0, video: Path | None = None,
          evaluate: bool = False, shard=None, progress: Progress = SILENT) -> Inferred:  # fmt: skip
    """Detections of the evaluation subset (or of a `shard` of it, a video_selection.Shard, or one
    video file); with `evaluate`, scored as well once infer.output is complete (the report is also
    saved beside the detections as <output>.metrics.json)."""
    from stages import evaluate as evaluate_stage
    from stages import infer as infer_stage

    if evaluate and video is not None:
        raise UserError(f"--video {video}: --eval scores a subset against its annotation file, and this "
                        "video is in none; detect it without --eval, or add it to an annotation file")
    run = StageRun.start(settings, "infer --video" if video is not None else "infer")
    from stages.data.video_selection import WHOLE

    summary = infer_stage.run(settings, checkpoint=checkpoint, plot=plot, video=video, shard=shard or WHOLE,
                              progress=progress)  # fmt: skip
    done = Inferred(summary)
    scores = {}
    if evaluate and video is None and summary.complete:
        request = evaluate_stage.EvalRequest.from_settings(
            settings, predictions=summary.output, task=summary.task
        )
        done.report = evaluate_stage.run(request)
        evaluate_stage.save_json(done.report, summary.output.with_suffix(".metrics.json"))
        report = done.report
        scores = {"task": report.task, "average": report.average, "first_tiou": report.values[0]}
    done.cost = run.done(checkpoint=str(summary.checkpoint), kind=summary.kind, output=str(summary.output),
                         **scores)  # fmt: skip
    return done


def load(config: Path | None, overrides: list[str], check_parts: bool = True) -> Settings:
    """A command's settings: the file, then the overrides, part names checked (etad_cli/parts.py);
    `check_parts=False` leaves out those whose registries import torch."""
    from etad_cli.parts import registries
    from stages.core.settings_file import load_settings

    return load_settings(config, overrides, parts=registries(check_parts))


def point_figures(job: PointJob) -> dict:
    """Run one study point here (train, then infer --eval for each scoring) and return its figures:
    the last training run's summary and cost, each scoring's metrics, the seconds of every run."""
    from stages.core.workdir import last_checkpoint

    settings = load(job.config, job.overrides)
    trained, seconds = None, 0.0
    for kind in job.trains:
        extra = []
        if kind == "e2e" and job.trains[0] == "train":  # end to end from the point's own detector
            init = last_checkpoint(settings, "pretrain")
            extra = [f"e2e.init_from={init}"]
            print(f"$ etad train --e2e --init-from {init}", flush=True)
        else:
            print(f"$ etad train{' --e2e' if kind == 'e2e' else ''}", flush=True)
        trained = train(load(job.config, job.overrides + extra), kind, resume=True)
        seconds += trained.cost["seconds"]
    scores = {}
    for name, sets in job.scorings.items():
        sets = [f"infer.output=results/{name}.json", *sets]
        print(f"$ etad infer --eval {' '.join('--set ' + s for s in sets)}", flush=True)
        inferred = infer(load(job.config, [*job.overrides, *sets]), evaluate=True)
        scores[name] = inferred.report.as_dict()
        seconds += inferred.cost["seconds"]
    summary = trained.summary
    return {"step_seconds": summary.step_seconds, "peak_gpu_mib": trained.cost["peak_gpu_mib"],
            "peak_rss_mib": trained.cost["peak_rss_mib"], "scores": scores, "seconds": seconds}  # fmt: skip


def _point_child(job: PointJob, send, gpu: int | None) -> None:
    """The child process of one point: its output goes to the point's log; its figures, or why it
    failed, go back through `send`."""
    if gpu is not None:  # before torch is imported
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also where the study ignores SIGINT (`&`)
    threading.Thread(target=_stop_when_orphaned, args=(os.getppid(),), daemon=True).start()
    job.log.parent.mkdir(parents=True, exist_ok=True)
    with job.log.open("a") as out:
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
    try:
        send.send({"figures": point_figures(job)})
    except (UserError, TrainingDiverged) as exc:
        print(f"error: {exc}", flush=True)
        send.send({"error": str(exc).splitlines()[0]})
    except Exception as exc:  # a bug in one point must say what it was, not hang the study
        traceback.print_exc()
        send.send({"error": f"{exc.__class__.__name__}: {str(exc)[:200]}"})


def _stop_when_orphaned(parent: int) -> None:
    """A point's child stops as on Ctrl-C (its checkpoints kept) once the study that started it is
    gone, even killed with SIGKILL, where no cleanup of the study's own runs: no trainer is left
    running for a rerun to start a second one beside."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGINT)


class ChildPoints:
    """`etad study`'s point runner: each call runs one point in a new process and returns its
    figures (UserError with the point's own reason when it failed). Use it as a context manager:
    leaving it stops the children still running (SIGINT, then SIGKILL after 30 s)."""

    def __init__(self, *, spread_over_gpus: bool) -> None:
        self.children: set = set()
        self.lock = threading.Lock()
        self.gpus = _gpus() if spread_over_gpus else []  # counting GPUs imports torch: only when it matters
        self.started = 0

    def __call__(self, job: PointJob) -> dict:
        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no state of the parent's
        receive, send = ctx.Pipe(duplex=False)
        with self.lock:
            gpu = self.gpus[self.started % len(self.gpus)] if self.gpus else None
            self.started += 1
            child = ctx.Process(target=_point_child, args=(job, send, gpu))
            child.start()
            self.children.add(child)
        send.close()
        outcome = None
        try:
            outcome = receive.recv()
        except EOFError:  # the child died without a word (killed, out of memory)
            pass
        finally:
            child.join()
            with self.lock:
                self.children.discard(child)
        if outcome is None:
            outcome = {"error": f"its process ended with exit code {child.exitcode}"}
        if "error" in outcome:
            raise UserError(f"{job.log}: the point failed: {outcome['error']}")
        return outcome["figures"]

    def __enter__(self) -> ChildPoints:
        return self

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            children = list(self.children)
        for child in children:
            if child.is_alive():
                os.kill(child.pid, signal.SIGINT)  # the trainer stops as on Ctrl-C, checkpoints kept
        for child in children:
            child.join(30)
            if child.is_alive():
                child.kill()
                child.join()


def _gpus() -> list[int]:
    """The CUDA devices points are spread over (none without CUDA)."""
    try:
        import torch

        return list(range(torch.cuda.device_count()))
    except Exception:
        return []
