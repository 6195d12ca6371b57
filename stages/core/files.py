"""Writing files so that a kill at any moment never leaves a half-written file under its final name."""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def temporary(path: Path) -> Path:
    """The temporary name beside `path` that this process writes before renaming."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{os.getpid()}@{HOST}{path.suffix}")


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it to `path` only if the block finishes."""
    path = Path(path)
    tmp = temporary(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, data: object, indent: int | None = 1) -> None:
    """Write JSON atomically."""
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(data, indent=indent) + "\n", encoding="utf-8")


# the host in a temporary's name: on a folder shared by several machines (a Slurm array), a run
# only ever clears the leftovers of dead processes of its own host
HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"
# what atomic_output names: .<name>.tmp<pid>@<host><suffix> (older etad: .<name>.tmp<pid><suffix>)
TEMPORARY = re.compile(r"^\..+\.tmp(\d+)(?:@([A-Za-z0-9-]+))?(\.[^.]*)?$")


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporaries of atomic_output left in `folder` by a process of this host that no
    longer runs (a killed run); those of live processes (a concurrent run) and of other hosts
    (another machine writing to the same shared folder) are kept."""
    removed = []
    for path in Path(folder).iterdir():
        match = TEMPORARY.match(path.name)
        if match is None or not path.is_file() or match.group(2) not in (None, HOST):
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
