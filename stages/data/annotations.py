"""Reading ActivityNet-1.3 and THUMOS-14 (ActionFormer) style annotation files into one shape: the
one reader of ground truth for training, extraction and evaluation.

Both keep a top-level `database` mapping video id -> {subset, duration, annotations[{segment, label}]};
THUMOS files add `fps`; BSN / mmaction2 files put the ids at the top level. Video ids are used as
file names later, so every id is checked here: an id that could name a path outside its folder, or
is too long to be a file name, is rejected. A structurally broken entry is an error naming the
file and the video; numbers that cannot be used (NaN, inf, a reversed segment, a duration that is
not positive) are recorded on the video (`problem`), so that training can skip it with a note and
evaluation can refuse the file.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from stages.core.errors import UserError
from stages.data.segments import MAX_DURATION, duration_problem, segment_problem

UNSAFE_CHARACTERS = set("/\\\x00:") | {os.sep} | ({os.altsep} if os.altsep else set())
MAX_ID_BYTES = 240  # file names are at most 255 bytes: room for "v_" and ".json" (temporaries are cut)


@dataclass
class Segment:
    start: float  # seconds
    end: float
    label: str


@dataclass
class VideoRecord:
    video_id: str
    subset: str | None
    duration: float | None  # seconds; None when the file does not say
    segments: list[Segment] = field(default_factory=list)
    fps: float | None = None
    problem: str | None = None  # why a segment cannot be used (names the annotation index)

    def unusable(self) -> str | None:
        """Why this video cannot train a detector, or None."""
        if self.duration is None or not math.isfinite(self.duration) or self.duration <= 0:
            return f"duration {self.duration} is not a positive number"
        if self.duration > MAX_DURATION:
            return f"duration {self.duration:g} s is longer than {MAX_DURATION:g} s (11.6 days)"
        return self.problem


def unsafe_id_reason(video_id: str) -> str | None:
    """Why a video id cannot be used as a file name, or None when it can."""
    if not video_id or video_id in (".", ".."):
        return "is empty or a relative folder name"
    bad = sorted(c for c in set(video_id) & UNSAFE_CHARACTERS)
    if bad:
        return f"contains the path separator {bad[0]!r}"
    if video_id.startswith("."):
        return "starts with '.'"
    if len(video_id.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
        return f"is longer than {MAX_ID_BYTES} bytes"
    return None


def safe_path(folder: Path, video_id: str, name_pattern: str = "{id}") -> Path:
    """`folder / pattern.format(id=video_id)`, refusing any id that would escape `folder`."""
    reason = unsafe_id_reason(video_id)
    if reason is not None:
        raise UserError(f"video id {video_id!r} {reason}; it cannot be used as a file name")
    path = folder / name_pattern.replace("{id}", video_id)
    # compare the path as built, not where a symlink at it points (a user's video may be a link)
    if Path(os.path.abspath(path)).parent != Path(os.path.abspath(folder)):
        raise UserError(f"video id {video_id!r} would escape {folder}")
    return path


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key[:80]!r} appears twice")
        out[key] = value
    return out


def _integer(text: str) -> int | float:
    """A JSON integer; one of more digits than a float can hold reads as a float (inf beyond 1e308),
    so that 401 digits is refused as non-finite, like 1e400, and never overflows later."""
    return int(text) if len(text.lstrip("-")) <= 300 else float(text)


def read_json(path: Path, what: str = "JSON file", unique_keys: bool = False) -> object:
    """Parse a JSON file, turning every failure into a one-line UserError naming the file; with
    `unique_keys`, a key given twice in one object is an error (JSON would keep the last)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such {what}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read {what}: {exc.__class__.__name__}") from None
    if not text.strip():
        raise UserError(f"{path}: empty {what}")
    try:
        return json.loads(text, object_pairs_hook=_unique_keys if unique_keys else None, parse_int=_integer)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except ValueError as exc:  # from _unique_keys
        raise UserError(f"{path}: {exc}") from None
    except RecursionError:
        raise UserError(f"{path}: {what} nested too deeply") from None


def _database(data: object, path: Path) -> dict:
    """The id -> entry mapping: `database` (ActivityNet, THUMOS) or the top level (BSN, mmaction2)."""
    if isinstance(data, dict) and isinstance(data.get("database"), dict):
        return data["database"]
    if (
        isinstance(data, dict)
        and data
        and all(isinstance(v, dict) and "annotations" in v for v in data.values())
    ):
        return data
    raise UserError(f"{path}: expected a top-level 'database' mapping of video id -> entry")


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError(f"{type(value).__name__} is not a number")
    return float(value)


def _segments(entry: dict) -> tuple[list[Segment], str | None]:
    """The instances of an entry, and the first problem with their numbers (None if all are usable)."""
    annotations = entry.get("annotations") or []
    if not isinstance(annotations, list):
        raise TypeError("'annotations' is not a list")
    segments, problem = [], None
    for i, ann in enumerate(annotations):
        if not isinstance(ann, dict):
            raise TypeError(f"annotation {i} is a {type(ann).__name__}, not a mapping")
        seg = ann["segment"]
        if not isinstance(seg, list | tuple) or len(seg) != 2:
            raise ValueError(f"annotation {i}: 'segment' is not [start, end]")
        if isinstance(seg[0], str) or isinstance(seg[1], str):  # "15" is no number of seconds
            raise TypeError(f"annotation {i}: segment [{seg[0]!r}, {seg[1]!r}] holds text, not numbers")
        start, end = _number(seg[0]), _number(seg[1])
        if problem is None and (why := segment_problem(start, end)) is not None:
            problem = f"annotation {i}: {why}"
        segments.append(Segment(start, end, str(ann["label"])))
    return segments, problem


def load_annotations(path: Path, require_duration: bool = True) -> dict[str, VideoRecord]:
    """All videos of an annotation file, ids checked, in file order. `require_duration`: every
    entry must have one (training and extraction; ground truth for evaluation need not)."""
    database = _database(read_json(path, "annotation file", unique_keys=True), path)
    if not database:
        raise UserError(f"{path}: the 'database' has no videos")
    records = {}
    for video_id, entry in database.items():
        reason = unsafe_id_reason(video_id)
        if reason is not None:
            raise UserError(f"{path}: video id {video_id[:80]!r} {reason}; it cannot be used as a file name")
        try:
            if not isinstance(entry, dict):
                raise TypeError(f"the entry is a {type(entry).__name__}, not a mapping")
            segments, problem = _segments(entry)
            duration = entry.get("duration")
            if duration is None and require_duration:
                raise KeyError("duration")
            records[video_id] = VideoRecord(
                video_id=video_id,
                subset=str(entry["subset"]) if entry.get("subset") is not None else None,
                duration=None if duration is None else _number(duration),
                segments=segments,
                fps=_number(entry["fps"]) if entry.get("fps") is not None else None,
                problem=problem,
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            detail = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
            raise UserError(f"{path}: video {video_id!r}: malformed entry ({detail[:200]})") from None
    return records


def refuse_unusable_truth(path: Path, records: dict[str, VideoRecord]) -> None:
    """Ground truth to score against: every segment finite and in order, every given duration
    positive (eval, diagnose and view refuse what one of them refuses: a reversed segment would
    match anything of its length, a negative duration give a negative coverage)."""
    for video_id, record in records.items():
        if record.problem is not None:
            raise UserError(f"{path}: video {video_id!r} {record.problem}")
        if record.duration is not None and (why := duration_problem(record.duration)) is not None:
            raise UserError(f"{path}: video {video_id!r}: {why}")


def several_classes(videos: list[VideoRecord] | list[set[str]]) -> str | None:
    """A note where most videos hold instances of several classes (a dense benchmark, a user's own
    videos): the video head then gives every segment of a video the same classes at one score.
    `videos`: their records, or each one's set of labels."""
    labels = [v if isinstance(v, set) else {s.label for s in v.segments} for v in videos]
    labelled = [held for held in labels if held]
    several = sum(len(held) > 1 for held in labelled)
    if not labelled or several * 2 <= len(labelled):
        return None
    return (
        f"{several} of {len(labelled)} videos hold instances of several classes: the video head "
        "labels every segment of a video alike; model.classifier: proposal (with "
        "model.classifier_head: true) labels each segment by its own classes (docs/method.md)"
    )


def read_blocked(path: Path) -> set[str]:
    """A JSON list of video ids (ETAD's blocked.json)."""
    data = read_json(path, "blocked list")
    if not isinstance(data, list) or not all(isinstance(v, str) for v in data):
        raise UserError(f"{path}: expected a JSON list of video ids")
    return set(data)
