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
from stages.data.hdf5_cache import frame_count, read_frames, read_jpeg


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


def stored_count(path: Path) -> int | None:
    """How many frames a frames file holds, or None when it cannot be opened (cut short, damaged)."""
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("codec") == "jpeg" and int(f["jpeg_offsets"][-1]) != len(f["jpeg"]):
                return None  # the offsets point past the stream: the file was cut
            return frame_count(f)
    except (OSError, KeyError, ValueError, IndexError):
        return None


def intact(folder: Path, video_id: str, meta: dict) -> bool:
    """Whether a video's frames file opens and holds the frames its record says (a file cut short
    by a full disk or a copy is not: `etad extract` redoes it)."""
    return stored_count(frames_file(folder, video_id)) == meta.get("num_frames")


def jpeg_problem(blobs: list[np.ndarray]) -> int | None:
    """The first of some JPEG byte strings that does not start and end as a JPEG does (SOI, EOI
    markers): garbage written over a file. Checking the markers costs nothing; decoding would."""
    for i, blob in enumerate(blobs):
        if len(blob) < 4 or blob[0] != 0xFF or blob[1] != 0xD8 or blob[-2] != 0xFF or blob[-1] != 0xD9:
            return i
    return None


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
    damaged = f"{path}: damaged frames file (%s); delete it and rerun `etad extract`"
    stored = stored_count(path)
    if stored is None:
        raise UserError(damaged % "unreadable or cut short")
    if stored != meta.get("num_frames"):
        said = meta.get("num_frames")
        raise UserError(damaged % f"{stored} frames, its record says {said}")

    def read(numbers: np.ndarray) -> np.ndarray:
        try:
            with h5py.File(path, "r") as f:
                if not encoded:
                    return read_frames(f, numbers)
                blobs = read_jpeg(f, numbers)
        except (OSError, KeyError, RuntimeError, ValueError, IndexError):  # RuntimeError: JPEG decoding
            raise UserError(damaged % "frames that do not decode") from None
        if (bad := jpeg_problem(blobs)) is not None:  # copied into a cache as they are: checked first
            raise UserError(damaged % f"frame {int(numbers[bad])} is not a JPEG")
        return blobs

    return read, meta
