"""A training run's folder: never started over by accident (`--resume` continues it, `--restart`
moves it aside, nothing is deleted), checked writable before any work."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from stages.core.errors import UserError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
from stages.core.files import ensure_writable_dir


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


def set_aside_runs(work_dir: Path) -> list[Path]:
    """The run folders --restart moved aside in a work folder (<kind>.<time>), oldest first."""
    pattern = re.compile(r"^[A-Za-z0-9_]+\.\d{8}-\d{6}(-\d+)?$")
    return sorted(
        (p for p in Path(work_dir).iterdir() if p.is_dir() and pattern.match(p.name)),
        key=lambda p: p.name.split(".", 1)[1],
    )


class RunLock:
    """An exclusive lock on a run folder while a run trains in it, so a second `etad train` (another
    terminal, a study rerun beside an orphaned point) refuses instead of writing into the same
    checkpoints and metrics. The lock file is <work_dir>/logs/<run>.lock, outside the run folder
    (`--restart` moves that), holding the pid; the operating system drops the lock when its process
    dies, however it dies."""

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir.parent / "logs" / f"{out_dir.name}.lock"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a+")
        if fcntl is None:  # Windows: no advisory locks; the folder checks below still apply
            return
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._file.seek(0)
            holder = self._file.read().strip() or "?"
            self._file.close()
            raise UserError(
                f"{out_dir}: another training run (process {holder}) is running in this folder; "
                "wait for it to end or stop it"
            ) from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"{os.getpid()}\n")
        self._file.flush()

    def release(self) -> None:
        self._file.close()  # closing drops the lock


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
