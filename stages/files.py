"""Writing files so that a kill at any moment never leaves a half-written file under its final name."""

from __future__ import annotations

import json
import os
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


def ensure_writable_dir(folder: Path) -> Path:
    """Create `folder` and prove it is writable, or raise OSError with the reason."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".write-test{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()
    return folder
