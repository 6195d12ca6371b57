"""Reading ActivityNet-1.3 and THUMOS-14 (ActionFormer) style annotation files into one shape.

Both keep a top-level `database` mapping video id -> {subset, duration, annotations[{segment, label}]};
THUMOS files add `fps`. Video ids are used as file names later, so every id is checked here: an id
that could name a path outside its folder is rejected.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from stages.errors import UserError

UNSAFE_CHARACTERS = set("/\\\x00:") | {os.sep} | ({os.altsep} if os.altsep else set())


@dataclass
class Segment:
    start: float  # seconds
    end: float
    label: str


@dataclass
class VideoRecord:
    video_id: str
    subset: str
    duration: float  # seconds
    segments: list[Segment] = field(default_factory=list)
    fps: float | None = None


def unsafe_id_reason(video_id: str) -> str | None:
    """Why a video id cannot be used as a file name, or None when it can."""
    if not video_id or video_id in (".", ".."):
        return "is empty or a relative folder name"
    bad = sorted(c for c in set(video_id) & UNSAFE_CHARACTERS)
    if bad:
        return f"contains the path separator {bad[0]!r}"
    if video_id.startswith("."):
        return "starts with '.'"
    return None


def safe_path(folder: Path, video_id: str, name_pattern: str = "{id}") -> Path:
    """`folder / pattern.format(id=video_id)`, refusing any id that would escape `folder`."""
    reason = unsafe_id_reason(video_id)
    if reason is not None:
        raise UserError(f"video id {video_id!r} {reason}; it cannot be used as a file name")
    path = folder / name_pattern.replace("{id}", video_id)
    if path.resolve().parent != folder.resolve():
        raise UserError(f"video id {video_id!r} would escape {folder}")
    return path


def read_json(path: Path, what: str = "JSON file") -> object:
    """Parse a JSON file, turning every failure into a one-line UserError naming the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such {what}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read {what}: {exc.__class__.__name__}") from None
    if not text.strip():
        raise UserError(f"{path}: empty {what}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None


def load_annotations(path: Path) -> dict[str, VideoRecord]:
    """All videos of an ActivityNet or THUMOS style file, ids checked, in file order."""
    data = read_json(path, "annotation file")
    database = data.get("database") if isinstance(data, dict) else None
    if not isinstance(database, dict):
        raise UserError(f"{path}: expected a top-level 'database' mapping of video id -> entry")
    if not database:
        raise UserError(f"{path}: the 'database' has no videos")
    records = {}
    for video_id, entry in database.items():
        reason = unsafe_id_reason(video_id)
        if reason is not None:
            raise UserError(f"{path}: video id {video_id!r} {reason}; it cannot be used as a file name")
        try:
            segments = [
                Segment(float(a["segment"][0]), float(a["segment"][1]), str(a["label"]))
                for a in entry.get("annotations", [])
            ]
            records[video_id] = VideoRecord(
                video_id=video_id,
                subset=str(entry.get("subset", "")),
                duration=float(entry["duration"]),
                segments=segments,
                fps=float(entry["fps"]) if entry.get("fps") is not None else None,
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise UserError(
                f"{path}: video {video_id!r}: malformed entry ({exc.__class__.__name__}: {exc})"
            ) from None
    return records
