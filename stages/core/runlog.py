"""What each stage run cost: `<work_dir>/logs/stages.jsonl`, one line per finished run, and the
resolved settings of every run beside it (stages.api logs every run it makes). `etad report`
reads it back into the final demo table."""

from __future__ import annotations

import json
import os
import re
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from stages.core.errors import UserError
from stages.core.progress import SILENT, Progress


def peak_rss_mib() -> float:
    """Peak resident memory of this process or its largest finished child (worker), in MiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024  # Linux reports KiB


@dataclass
class StageRun:
    """One run of a stage: `start` logs its settings; `done` appends its cost to stages.jsonl."""

    logs: Path
    stage: str
    began: float = field(default_factory=time.perf_counter)

    @classmethod
    def start(cls, settings, stage: str, progress: Progress = SILENT) -> StageRun:
        """Log the resolved settings of this run (logs/<stage>-<time>-<pid>.settings.yaml), the file
        named to whoever watches (`progress.note`)."""
        from stages.core.settings_file import settings_as_yaml

        logs = settings.work_dir / "logs"
        try:
            logs.mkdir(parents=True, exist_ok=True)
            name = re.sub(r"[^a-z0-9]+", "-", stage)  # "train --e2e" -> "train-e2e"
            path = logs / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.settings.yaml"
            path.write_text(settings_as_yaml(settings))
        except OSError as exc:
            raise UserError(f"{logs}: cannot write to the work folder: {exc.strerror or exc}") from None
        progress.note(f"settings: {path}")
        return cls(logs, stage)

    def done(self, **extra) -> dict:
        """Append this run's cost (and `extra`) to stages.jsonl; the record written."""
        record = {
            "stage": self.stage,
            "seconds": round(time.perf_counter() - self.began, 2),
            "peak_rss_mib": round(peak_rss_mib(), 1),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "argv": sys.argv[1:],
            **extra,
        }
        with open(self.logs / "stages.jsonl", "a", encoding="utf-8") as out:
            out.write(json.dumps(record) + "\n")
        return record


def read_runs(work_dir: Path) -> list[dict]:
    """Every finished run recorded under work_dir, oldest first; the last run of a stage wins in reports."""
    path = work_dir / "logs" / "stages.jsonl"
    if not path.is_file():
        raise UserError(f"{path}: no stage has finished in this work folder yet")
    runs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            runs.append(json.loads(line))
        except json.JSONDecodeError:
            raise UserError(f"{path}: line {number} is not valid JSON") from None
    return runs
