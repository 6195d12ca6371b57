"""Cache fingerprints: a short hash of the settings that decide a cache file's content.

Every cache file carries one, so a rerun of `etad cache` skips current files and redoes stale
ones, and a reader given the fingerprint it expects refuses a stale file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from stages.data.protocols import protocol

if TYPE_CHECKING:  # the settings models, for type hints only
    from stages.core.settings import Settings


def fingerprint(values: dict) -> str:
    """A short stable hash of the settings that decide a cache's content."""
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def snippet_fingerprint(settings: Settings) -> str:
    d, c = settings.data, settings.cache
    return fingerprint(
        {
            "dataset": d.protocol,  # named "dataset" so that caches written before the rename stay current
            "fps": d.fps,
            "size": [d.frame_height, d.frame_width],
            "snippet_length": d.snippet_length,
            "positions": protocol(d).positions(),
            "layout": "frames-1",  # each frame once (docs/cache.md)
            "codec": c.codec,
            "jpeg_quality": c.jpeg_quality if c.codec == "jpeg" else None,
            "compression": c.compression if c.codec == "raw" else None,
        }
    )


def feature_fingerprint(settings: Settings) -> str:
    e = settings.model.encoder
    checkpoint = str(e.checkpoint) if e.checkpoint else None
    stamp = e.checkpoint.stat().st_mtime_ns if e.checkpoint and e.checkpoint.is_file() else None
    return fingerprint(
        {
            "snippets": snippet_fingerprint(settings),
            "encoder": e.name,
            "checkpoint": [checkpoint, stamp],
            # a randomly initialised encoder is drawn from the seed: another seed, other features
            "seed": settings.seed if checkpoint is None else None,
            "crop": e.crop_size,
            "dtype": settings.cache.dtype,
        }
    )


def npy_fingerprint(npy_dir: Path) -> str:
    return fingerprint({"npy": str(Path(npy_dir).resolve())})
