"""Writing files so that a kill at any moment never leaves a half-written file under its final name."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it to `path` only if the block finishes."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, data: object, indent: int | None = 1) -> None:
    """Write JSON atomically."""
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(data, indent=indent) + "\n", encoding="utf-8")


TEMPORARY = re.compile(r"^\..+\.tmp(\d+)(\.[^.]*)?$")  # what atomic_output names: .<name>.tmp<pid><suffix>


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporaries of atomic_output left in `folder` by a process that no longer runs
    (a killed run); those of live processes (a concurrent run) are kept."""
    removed = []
    for path in Path(folder).iterdir():
        match = TEMPORARY.match(path.name)
        if match is None or not path.is_file():
            continue
        try:
            os.kill(int(match.group(1)), 0)
            continue  # the writer is still alive
        except ProcessLookupError:
            pass
        except (PermissionError, OverflowError):
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def ensure_writable_dir(folder: Path) -> Path:
    """Create `folder`, prove it is writable (or raise OSError with the reason), and clear the
    temporaries that a killed earlier run left there."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".write-test{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()
    remove_stale_temporaries(folder)
    return folder
