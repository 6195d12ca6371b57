"""Extracted frames on disk: written by `etad extract`, read by `etad cache` (docs/extract.md).

Per video in <work_dir>/frames/: <id>.npy (uint8 [N, H, W, 3]) and <id>.json, its completion record
{video_id, num_frames, fps, height, width, source, source_frames, source_fps}, written last.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from stages.core.errors import UserError
from stages.data.annotations import safe_path


def frames_file(folder: Path, video_id: str) -> Path:
    return safe_path(folder, video_id, "{id}.npy")


def record_file(folder: Path, video_id: str) -> Path:
    return safe_path(folder, video_id, "{id}.json")


def read_meta(folder: Path, video_id: str) -> dict | None:
    """The completion record of an extracted video, or None if it is not (fully) extracted."""
    try:
        meta = json.loads(record_file(folder, video_id).read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return meta if isinstance(meta, dict) else None


def load_frames(folder: Path, video_id: str) -> tuple[np.ndarray, dict]:
    """(frames memory-mapped as uint8 [N, H, W, 3], completion record) of an extracted video."""
    meta = read_meta(folder, video_id)
    if meta is None:
        raise UserError(f"{folder}: video {video_id!r} has not been extracted; run `etad extract` first")
    path = frames_file(folder, video_id)
    try:
        frames = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UserError(
            f"{path}: unreadable frames ({exc.__class__.__name__}); rerun `etad extract`"
        ) from None
    if frames.dtype != np.uint8 or frames.ndim != 4 or len(frames) != meta.get("num_frames"):
        raise UserError(f"{path}: frames do not match their record; rerun `etad extract`")
    return frames, meta
