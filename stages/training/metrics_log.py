"""<work_dir>/<run>/metrics.jsonl: one JSON line per step, epoch and event, written as the run goes;
a resume keeps the lines of the epochs it keeps and drops lines that are not records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from stages.core.files import atomic_output
from stages.training.curves import TensorBoard

if TYPE_CHECKING:  # for type hints only
    pass


class MetricsLog:
    """JSON lines, one per logged iteration or epoch. A resumed run first drops the records of the
    epochs after its checkpoint (an interrupted epoch is run again and logged again). Where
    TensorBoard is installed, the same records also go to <run>/tensorboard/ (training.curves)."""

    def __init__(self, path: Path, keep_epochs: int, enabled: bool = True, step: int = 0) -> None:
        """`step`: the optimizer steps before this run (a resume): later events are purged."""
        self.path, self.enabled, self.board, self.note = path, enabled, None, None
        if not enabled:
            return
        purge = step + 1 if step else None
        self.board, self.note = TensorBoard.open(path.parent / "tensorboard", purge_step=purge)
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if keep_epochs > 0 and path.is_file():
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                if (epoch := _epoch_of(line)) is not None and epoch <= keep_epochs:
                    kept.append(line + "\n")
        with atomic_output(path) as tmp:
            tmp.write_text("".join(kept), encoding="utf-8")

    def write(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        step = record.get("step", record.get("at_step"))  # a step's record, or an epoch's
        if self.board is not None and step is not None:
            self.board.write(record, int(step))

    def close(self) -> None:
        if self.board is not None:
            self.board.close()


def _epoch_of(line: str) -> int | None:
    """The epoch of a metrics.jsonl record; None for a line cut by a kill or edited into something
    else (not an object, an epoch that is not a whole number): a resume drops such lines."""
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, RecursionError):
        return None
    epoch = record.get("epoch", 0) if isinstance(record, dict) else None
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None
