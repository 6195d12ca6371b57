"""Cache fingerprints: a short hash of the settings that decide a cache file's content.

Every cache file carries one, so a rerun of `etad cache` skips current files and redoes stale
ones, and a reader given the fingerprint it expects refuses a stale file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from stages.data.protocols import protocol

if TYPE_CHECKING:  # the settings models, for type hints only
    from stages.core.settings import Settings


def fingerprint(values: dict) -> str:
    """A short stable hash of the settings that decide a cache's content."""
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def snippet_inputs(settings: Settings) -> dict:
    """The settings that decide a snippet cache file's content."""
    d, c = settings.data, settings.cache
    return {
        "dataset": d.protocol,  # named "dataset" so that caches written before the rename stay current
        "fps": d.fps,
        "size": [d.frame_height, d.frame_width],
        "resize": d.resize,
        # frames by the player's clock (data/video_io.py): caches made before (by rank, from the first
        # picture, unrotated) may hold frames of other times or sideways on users' own files: rebuilt
        "timing": "player-clock",
        "snippet_length": d.snippet_length,
        "positions": protocol(d).positions(),
        "layout": "frames-1",  # each frame once (docs/cache.md)
        "codec": c.codec,
        "jpeg_quality": c.jpeg_quality if c.codec == "jpeg" else None,
        "compression": c.compression if c.codec == "raw" else None,
    }


def feature_inputs(settings: Settings) -> dict:
    """The settings that decide a feature cache file's content (the snippets' by their hash)."""
    e = settings.model.encoder
    checkpoint = str(e.checkpoint) if e.checkpoint else None
    stamp = e.checkpoint.stat().st_mtime_ns if e.checkpoint and e.checkpoint.is_file() else None
    return {
        "snippets": snippet_fingerprint(settings),
        "encoder": e.name,
        # (not the seed: features of a random encoder, drawn from the seed they were cached with,
        # serve training runs of any seed, as `etad study --seeds` does)
        "checkpoint": [checkpoint, stamp],
        "crop": e.crop_size,
        "dtype": settings.cache.dtype,
    }


def snippet_fingerprint(settings: Settings) -> str:
    return fingerprint(snippet_inputs(settings))


def feature_fingerprint(settings: Settings) -> str:
    return fingerprint(feature_inputs(settings))


# what a fingerprint input is called in the settings (for the line that refuses a stale cache)
SETTING_NAMES = {
    "dataset": "data.protocol",
    "fps": "data.fps",
    "size": "data.frame_height / data.frame_width",
    "snippet_length": "data.snippet_length",
    "positions": "the snippet positions (data.temporal_scale, data.snippet_stride)",
    "layout": "the cache layout (an older etad)",
    "codec": "cache.codec",
    "jpeg_quality": "cache.jpeg_quality",
    "compression": "cache.compression",
    "encoder": "model.encoder.name",
    "checkpoint": "model.encoder.checkpoint (or its file was rewritten)",
    "crop": "model.encoder.crop_size",
    "dtype": "cache.dtype",
    "features": "the features' origin (an encoder, or .npy imported with --from-npy)",
}


@dataclass(frozen=True)
class ExpectedFingerprint:
    """What a reader wants of a cache's files: the fingerprint of the settings it runs with, and
    those settings by name (a file records its own), to say which setting differs."""

    stamp: str
    described: dict

    @classmethod
    def of(cls, settings: Settings, kind: str) -> ExpectedFingerprint:
        if kind == "snippets":
            return cls(snippet_fingerprint(settings), snippet_inputs(settings))
        inputs = feature_inputs(settings)
        return cls(fingerprint(inputs), {**snippet_inputs(settings), **inputs, "snippets": None})

    def with_origin(self, origin: str) -> ExpectedFingerprint:
        """The same, knowing where a feature folder's features come from (`features`: an encoder,
        or an import): a detector trained on one origin refuses the other."""
        return ExpectedFingerprint(self.stamp, {**self.described, "features": origin})

    def as_record(self) -> dict:
        """The settings by name as JSON values: what a cache file or a checkpoint records."""
        return json.loads(json.dumps(self.described, default=str))

    def differences(self, recorded: dict, where: str = "in the cache") -> str:
        """'data.fps (15.0 in the cache, 10.0 now), ...' for the settings that differ from a record
        (a cache file's, or a checkpoint's: the inputs it was trained on)."""
        now = self.as_record()
        parts = []
        for key, wanted in now.items():
            if key in recorded and wanted != recorded[key]:
                name = SETTING_NAMES.get(key, key)
                parts.append(f"{name} ({recorded[key]!r} {where}, {self.described[key]!r} now)")
        return ", ".join(parts)


def npy_fingerprint(npy_dir: Path) -> str:
    return fingerprint({"npy": str(Path(npy_dir).resolve())})
