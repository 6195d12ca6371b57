"""Extracted frames on disk: written by `etad extract`, read by `etad cache` (docs/extract.md).

Per video in <work_dir>/frames/: <id>.h5, every frame of the video at data.fps stored once in the
snippet cache's frame layout (JPEG by default, `cache.codec` and `cache.jpeg_quality`; see
`hdf5_cache.store_frames`), and <id>.json, its completion record {video_id, num_frames, fps,
height, width, codec, jpeg_quality, source, source_stamp (size, mtime), source_frames,
source_fps}, written last.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from stages.core.errors import UserError
from stages.data.annotations import safe_path
from stages.data.hdf5_cache import read_frames, read_jpeg


def frames_file(folder: Path, video_id: str) -> Path:
    return safe_path(folder, video_id, "{id}.h5")


def record_file(folder: Path, video_id: str) -> Path:
    return safe_path(folder, video_id, "{id}.json")


def source_stamp(video: Path) -> list[int]:
    """What tells a replaced video file from the one extracted: its size and modification time."""
    stat = video.stat()
    return [stat.st_size, stat.st_mtime_ns]


def read_meta(folder: Path, video_id: str) -> dict | None:
    """The completion record of an extracted video, or None if it is not (fully) extracted."""
    try:
        meta = json.loads(record_file(folder, video_id).read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return meta if isinstance(meta, dict) else None


def frame_reader(
    folder: Path, video_id: str, *, encoded: bool = False
) -> tuple[Callable[[np.ndarray], Any], dict]:
    """(read, completion record) of an extracted video; `read` takes sorted unique frame numbers and
    gives uint8 frames [n, H, W, 3], or with `encoded` their JPEG byte strings (a jpeg-codec file).
    The file is checked against its record once, here."""
    meta = read_meta(folder, video_id)
    if meta is None:
        raise UserError(f"{folder}: video {video_id!r} has not been extracted; run `etad extract` first")
    path = frames_file(folder, video_id)
    unreadable = f"{path}: unreadable or truncated frames file; rerun `etad extract`"
    try:
        with h5py.File(path, "r") as f:
            stored = len(f["jpeg_offsets"]) - 1 if f.attrs.get("codec") == "jpeg" else len(f["frames"])
    except (OSError, KeyError):
        raise UserError(unreadable) from None
    if stored != meta.get("num_frames"):
        said = meta.get("num_frames")
        raise UserError(f"{path}: {stored} frames, its record says {said}; rerun `etad extract`")

    def read(numbers: np.ndarray) -> np.ndarray:
        try:
            with h5py.File(path, "r") as f:
                return read_jpeg(f, numbers) if encoded else read_frames(f, numbers)
        except (OSError, KeyError):
            raise UserError(unreadable) from None

    return read, meta
