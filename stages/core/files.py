"""Writing files so that a kill at any moment never leaves a half-written file under its final name."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

NAME_BYTES = 255  # the longest file name of common file systems (ext4, XFS, APFS, NTFS)


def temporary(path: Path) -> Path:
    """The temporary name beside `path` that this process writes before renaming; a long name is
    cut and a hash of it added, so the temporary of a name that fits fits too."""
    path = Path(path)
    tail = f".tmp{os.getpid()}@{HOST}{path.suffix}"
    name = path.name
    if len(f".{name}{tail}".encode()) > NAME_BYTES:
        name = f"{name[:100]}~{hashlib.sha256(name.encode()).hexdigest()[:12]}"
    return path.with_name(f".{name}{tail}")


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it to `path` only if the block finishes. An
    OSError without a file name (a full disk met by a write) is given `path`'s."""
    path = Path(path)
    tmp = temporary(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        if exc.filename is None or Path(exc.filename) == tmp:
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise
    finally:
        tmp.unlink(missing_ok=True)


def human_bytes(count: float) -> str:
    """A byte count in the unit that fits it (TB, GB, MB, kB, bytes)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= size:
            return f"{count / size:,.2f} {unit}"
    return f"{count:,.0f} bytes"


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


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file: the same path once made absolute, or the same file through
    a link (what a write to one would do to the other)."""
    if os.path.abspath(a) == os.path.abspath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet
        return False


def aliased_output(outputs: dict[str, Path | None], inputs: dict[str, Path | None]) -> str | None:
    """Why an output would overwrite an input or another output (one line), or None: checked before
    anything is read, so an output named as an input never destroys it."""
    named = [(n, Path(p)) for n, p in outputs.items() if p is not None]
    for i, (name, path) in enumerate(named):
        for other, given in [(n, Path(p)) for n, p in inputs.items() if p is not None] + named[:i]:
            if same_file(path, given):
                return f"{name} {path} is {other} {given}: an output never overwrites an input; name another"
    return None
