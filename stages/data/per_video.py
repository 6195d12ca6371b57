"""Running one job per video so that one bad video never stops a run, optionally in worker processes."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from stages.core.errors import FULL, DiskFull, UserError, disk_full
from stages.data.video_io import VideoError

LOST = "a worker process died (killed, e.g. out of memory) before this video was done; rerun to do it"


def guarded(job: Callable, *args: Any) -> tuple[Any, str | None]:
    """(result, None), or (None, the reason it failed) instead of raising; a full disk stops the run
    (every later video would fail the same way)."""
    try:
        return job(*args), None
    except DiskFull:
        raise
    except (UserError, VideoError) as exc:
        return None, str(exc)
    except OSError as exc:
        if exc.errno in FULL:
            raise disk_full(exc.filename or "a cache file", exc) from None
        return None, f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": ")
    except Exception as exc:  # a decoder or encoder bug on one file must not end the run
        return None, f"{exc.__class__.__name__}: {str(exc)[:200]}"


def run_each(
    tasks: list[tuple[str, Callable, tuple]],
    workers: int,
    on_done: Callable[[str, Any, str | None], None],
) -> None:
    """Run job(*args) for each (video_id, job, args); on_done(video_id, result, failure) as each ends.
    A worker killed from outside (the OOM killer) breaks the pool: every video not finished by then
    is reported as failed with that reason, so the run ends cleanly and a rerun does them."""
    if workers <= 1:
        for video_id, job, args in tasks:
            on_done(video_id, *guarded(job, *args))
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        futures = {pool.submit(guarded, job, *args): video_id for video_id, job, args in tasks}
        try:
            for future in as_completed(futures):
                try:
                    outcome = future.result()
                except BrokenProcessPool:
                    outcome = (None, LOST)
                on_done(futures[future], *outcome)
        except DiskFull:
            pool.shutdown(cancel_futures=True)
            raise
