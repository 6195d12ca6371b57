"""Extracted frames on disk: written by `etad extract`, read by `etad cache` (docs/extract.md).

Per video in <work_dir>/frames/: <id>.npy (uint8 [N, H, W, 3]) and <id>.json, its completion record
{video_id, num_frames, fps, height, width, source, source_frames, source_fps}, written last.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from stages.core.errors import UserError
from stages.core.workdir import frames_dir
from stages.data.annotations import safe_path
from stages.data.protocols import protocol

if TYPE_CHECKING:  # the settings models, for type hints only
    from stages.core.settings import Settings


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


def cut_snippets(settings: Settings, video_id: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """(snippets [T, L, H, W, 3], frame indices [T, L], extraction record) of an extracted video."""
    folder = frames_dir(settings)
    frames, meta = load_frames(folder, video_id)
    d = settings.data
    if meta.get("fps") != d.fps or tuple(frames.shape[1:3]) != (d.frame_height, d.frame_width):
        raise UserError(
            f"{folder}: video {video_id!r} was extracted with other fps/size; rerun `etad extract`"
        )
    indices = protocol(d).snippet_frames(len(frames))
    return np.asarray(frames[indices.reshape(-1)]).reshape(*indices.shape, *frames.shape[1:]), indices, meta
