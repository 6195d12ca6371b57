"""How `etad study` runs its points: each one's `train` and `infer --eval` (stages.api) in a fresh
child process (so each point's peak memory is its own, and one GPU can be given to it), the point's
figures sent back as a return value. Leaving `ChildPoints`' `with` block stops any child still
running (Ctrl-C on a study never leaves a trainer behind), and a child whose study was killed
outright stops itself."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
import traceback
from typing import TYPE_CHECKING

from stages import api
from stages.core.errors import TrainingDiverged, UserError

if TYPE_CHECKING:  # the stages load when a command runs, so --help stays fast
    from stages.studies.plan import PointJob


def point_figures(job: PointJob) -> dict:
    """Run one study point here (train, then infer --eval for each scoring) and return its figures:
    the last training run's summary and cost, each scoring's metrics, the seconds of every run."""
    from stages.core.workdir import last_checkpoint

    settings = api.load_settings(job.config, job.overrides)
    trained, seconds = None, 0.0
    for kind in job.trains:
        extra = []
        if kind == "e2e" and job.trains[0] == "train":  # end to end from the point's own detector
            init = last_checkpoint(settings, "pretrain")
            extra = [f"e2e.init_from={init}"]
            print(f"$ etad train --e2e --init-from {init}", flush=True)
        else:
            print(f"$ etad train{' --e2e' if kind == 'e2e' else ''}", flush=True)
        trained = api.train(api.load_settings(job.config, job.overrides + extra), kind, resume=True)
        seconds += trained.cost["seconds"]
    scores = {}
    for name, sets in job.scorings.items():
        sets = [f"infer.output=results/{name}.json", *sets]
        print(f"$ etad infer --eval {' '.join('--set ' + s for s in sets)}", flush=True)
        inferred = api.infer(api.load_settings(job.config, [*job.overrides, *sets]), evaluate=True)
        scores[name] = inferred.report.as_dict()
        seconds += inferred.cost["seconds"]
    summary = trained.summary
    return {
        "step_seconds": summary.step_seconds,
        "peak_gpu_mib": trained.cost["peak_gpu_mib"],
        "peak_rss_mib": trained.cost["peak_rss_mib"],
        "scores": scores,
        "seconds": seconds,
    }


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
