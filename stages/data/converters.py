"""Other benchmarks' annotation files, as ActivityNet-layout databases ({id: {subset, duration,
annotations: [{segment, label, ...}]}}): what every etad command reads. FORMATS names them.

Durations come from the dataset's own source; segments are clipped to [0, duration] where the
benchmark's own protocol clips them, and counted; a malformed row, an unknown class id or a missing
duration is one line naming the file and the row.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from stages.core.errors import UserError
from stages.data.annotations import read_json, unsafe_id_reason
from stages.data.segments import clipped, duration_problem, segment_problem


@dataclass
class Converted:
    database: dict[str, dict]
    clipped: int = 0  # segments cut to their video's duration
    notes: list[str] = field(default_factory=list)
    probed: dict = field(default_factory=dict)  # id -> video_index.Probe, where read from the videos


def _rows(path: Path) -> list[dict[str, str]]:
    try:
        with Path(path).open(newline="", encoding="utf-8-sig") as f:
            return list(csv.DictReader(f))
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{path}: not a readable CSV file ({exc.__class__.__name__})") from None


def _need(path: Path, rows: list[dict], columns: tuple[str, ...]) -> None:
    missing = [c for c in columns if rows and c not in rows[0]]
    if not rows or missing:
        raise UserError(
            f"{path}: expected the columns {', '.join(columns)}"
            + (f"; missing {', '.join(missing)}" if missing else "; no rows")
        )


def _number(path: Path, row: int, what: str, text: str) -> float:
    """A finite number of a row, or one line naming the file, the row and the column."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise UserError(f"{path}: row {row}: {what} {str(text)[:40]!r} is not a number") from None
    if not math.isfinite(value):
        raise UserError(f"{path}: row {row}: {what} {text!r} is not finite")
    return value


def _clock(path: Path, row: int, text: str) -> float:
    """EPIC's HH:MM:SS.ff (or .fff) -> seconds; never its 60-per-second frame columns."""
    match = re.fullmatch(r"(\d+):(\d{2}):(\d{2}(?:\.\d+)?)", (text or "").strip())
    if match is None:
        raise UserError(f"{path}: row {row}: timestamp {str(text)[:40]!r} is not HH:MM:SS.ff")
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _add(
    out: Converted,
    video: str,
    *,
    where: str,
    subset: str,
    duration: object,
    segment: tuple[object, object],
    label: str,
    extra: dict | None = None,
) -> None:
    """One instance, its numbers checked (segments.py) and clipped to [0, duration] (counted);
    anything that cannot be used is one line naming `where` (the file and its row or video)."""
    if (why := unsafe_id_reason(video)) is not None:
        raise UserError(f"{where}: video id {video[:80]!r} {why}; it cannot be used as a file name")
    if (why := duration_problem(duration)) is not None:
        raise UserError(f"{where}: video {video!r}: {why}")
    entry = out.database.setdefault(video, {"subset": subset, "duration": duration, "annotations": []})
    if (why := segment_problem(*segment)) is not None:
        raise UserError(f"{where}: {why}")
    cut = clipped(float(segment[0]), float(segment[1]), float(duration))
    out.clipped += cut != (segment[0], segment[1])
    entry["annotations"].append({"segment": list(cut), "label": label, **(extra or {})})


def _once(seen: dict, key: object, place: str, what: str) -> None:
    """Refuse a key given twice in one file (the first would be lost or merged), naming both places."""
    if key in seen:
        raise UserError(f"{place}: {what} {str(key)[:80]!r} again (first at {seen[key]}); give each once")
    seen[key] = place


def _class_list(path: Path, key: Callable[[str], object]) -> dict:
    """`<id> <name>` lines (MultiTHUMOS' class_list.txt, Charades' classes): id (as `key`) -> name."""
    try:
        lines = [line.split(maxsplit=1) for line in Path(path).read_text(encoding="utf-8").splitlines()]
        names, seen = {}, {}
        for i, fields in enumerate(lines, start=1):
            if fields:
                _once(seen, key(fields[0]), f"{path}: line {i}", "class id")
                names[key(fields[0])] = fields[1].strip()
        return names
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (UnicodeDecodeError, IndexError, ValueError) as exc:
        raise UserError(f"{path}: not a list of '<id> <name>' lines ({exc.__class__.__name__})") from None


def _split_of(path: Path, train: str, other: str) -> str:
    """The subset of a dataset whose files are named by split (EPIC_100_train.csv, Charades_v1_test.csv)."""
    return train if "train" in Path(path).stem.lower() else other


def _durations(path: Path, video_column: str = "video") -> dict[str, float]:
    """A CSV of each video's duration: `video,duration` (`--durations`), or EPIC's video info
    (`video_column` video_id)."""
    table = _rows(path)
    _need(path, table, (video_column, "duration"))
    lengths, seen = {}, {}
    for i, r in enumerate(table, start=2):
        _once(seen, r[video_column], f"{path}: row {i}", "video")
        lengths[r[video_column]] = _number(path, i, "duration", r["duration"])
        if (why := duration_problem(lengths[r[video_column]])) is not None:
            raise UserError(f"{path}: row {i}: {why}")
    return lengths


def _classes(path: Path | None, id_column: str = "id", key_column: str = "key") -> dict[int, str] | None:
    if path is None:
        return None
    rows = _rows(path)
    _need(path, rows, (id_column, key_column))
    return {
        int(_number(path, i, id_column, r[id_column])): r[key_column] for i, r in enumerate(rows, start=2)
    }


def epic100(
    path: Path,
    *,
    video_info: Path | None = None,
    verbs: Path | None = None,
    nouns: Path | None = None,
    label: str = "action",
    subset: str | None = None,
    **_,
) -> Converted:
    """EPIC-KITCHENS-100 (EPIC_100_{train,validation}.csv): segments from start/stop_timestamp,
    durations from EPIC_100_video_info.csv; `label` verb, noun or action ("verb noun"), the other
    classes kept as fields (verb, noun, verb_class, noun_class). Subset: the file's split, from its
    name (train, else validation), unless given."""
    subset = subset or _split_of(path, "train", "validation")
    if label not in ("verb", "noun", "action"):
        raise UserError(f"--label {label}: expected verb, noun or action")
    if video_info is None:
        raise UserError("--from epic100 needs --video-info EPIC_100_video_info.csv (the videos' durations)")
    durations = _durations(video_info, "video_id")
    names = {"verb": _classes(verbs), "noun": _classes(nouns)}
    rows = _rows(path)
    _need(path, rows, ("video_id", "start_timestamp", "stop_timestamp", "verb_class", "noun_class"))
    out = Converted({})
    for i, r in enumerate(rows, start=2):  # row 1 is the header
        video = r["video_id"]
        if video not in durations:
            raise UserError(f"{path}: row {i}: video {video!r} is not in {video_info}")
        ids = {k: int(_number(path, i, f"{k}_class", r[f"{k}_class"])) for k in ("verb", "noun")}
        keys = {}
        for k, table in names.items():
            if table is not None and ids[k] not in table:
                raise UserError(
                    f"{path}: row {i}: {k}_class {ids[k]} is not a class of {verbs if k == 'verb' else nouns}"
                )
            keys[k] = table[ids[k]] if table is not None else str(ids[k])
        name = {"verb": keys["verb"], "noun": keys["noun"], "action": f"{keys['verb']} {keys['noun']}"}[label]
        extra = {
            "verb": keys["verb"],
            "noun": keys["noun"],
            "verb_class": ids["verb"],
            "noun_class": ids["noun"],
        }
        segment = (_clock(path, i, r["start_timestamp"]), _clock(path, i, r["stop_timestamp"]))
        _add(
            out,
            video,
            where=f"{path}: row {i}",
            subset=subset,
            duration=durations[video],
            segment=segment,
            label=name,
            extra=extra,
        )
    return out


def multithumos(path: Path, *, classes: Path | None = None, **_) -> Converted:
    """MultiTHUMOS (multithumos.json: {id: {subset, duration, actions: [[class 1..65, start, end]]}}),
    class names from class_list.txt (`<id> <name>` lines) when given, else the ids."""
    data = read_json(Path(path), "annotation file", unique_keys=True)  # a video twice: refused
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of video id -> {{subset, duration, actions}}")
    names = _class_list(classes, int) if classes is not None else None
    out = Converted({})
    for video, entry in data.items():
        where = f"{path}: video {video!r}"
        if not isinstance(entry, dict) or not isinstance(entry.get("actions"), list):
            raise UserError(f"{where}: expected {{subset, duration, actions}}")
        duration = entry.get("duration")
        if (why := duration_problem(duration)) is not None:
            raise UserError(f"{where}: {why}")
        subset = str(entry.get("subset", ""))
        out.database[video] = {"subset": subset, "duration": duration, "annotations": []}
        for k, action in enumerate(entry["actions"]):
            if not (isinstance(action, list) and len(action) == 3):
                raise UserError(f"{where}: action {k} is not [class, start, end]")
            cls = action[0]
            if isinstance(cls, bool) or not isinstance(cls, int | float) or cls != int(cls):
                raise UserError(f"{where}: action {k}: class {str(cls)[:20]!r} is not a class number")
            cls = int(cls)
            if names is not None and cls not in names:
                raise UserError(f"{where}: action {k}: class {cls} is not in {classes}")
            _add(
                out,
                video,
                where=f"{where} action {k}",
                subset=subset,
                duration=duration,
                segment=(action[1], action[2]),
                label=names[cls] if names else str(cls),
            )
    return out


def charades(path: Path, *, subset: str | None = None, classes: Path | None = None, **_) -> Converted:
    """Charades (Charades_v1_{train,test}.csv: id, length (s), actions "c092 11.90 21.20;..."); the
    actions past the video's length (about 30% of them) are clipped, as Charades' protocol clips them.
    Subset: from the file's name (training, else testing), unless given."""
    subset = subset or _split_of(path, "training", "testing")
    rows = _rows(path)
    _need(path, rows, ("id", "length", "actions"))
    names = _class_list(classes, str) if classes is not None else None
    out, seen = Converted({}), {}
    for i, r in enumerate(rows, start=2):
        _once(seen, r["id"], f"{path}: row {i}", "video")
        duration = _number(path, i, "length", r["length"])
        if (why := duration_problem(duration)) is not None:
            raise UserError(f"{path}: row {i}: {why}")
        out.database.setdefault(r["id"], {"subset": subset, "duration": duration, "annotations": []})
        for part in filter(None, (r["actions"] or "").split(";")):
            fields = part.split()
            if len(fields) != 3:
                raise UserError(f"{path}: row {i}: action {part[:40]!r} is not 'cNNN start end'")
            if names is not None and fields[0] not in names:
                raise UserError(f"{path}: row {i}: class {fields[0]!r} is not in {classes}")
            segment = (_number(path, i, "start", fields[1]), _number(path, i, "end", fields[2]))
            _add(
                out,
                r["id"],
                where=f"{path}: row {i}",
                subset=subset,
                duration=duration,
                segment=segment,
                label=names[fields[0]] if names else fields[0],
            )
    return out


def generic_csv(path: Path, *, durations: Path | None = None, subset: str = "validation", **_) -> Converted:
    """A user's own `video,start,end,label[,subset]` CSV (seconds); durations from a
    `video,duration` CSV (`--durations`), else each video's last end. A time past a given duration
    is an error (nothing says the file is cut)."""
    rows = _rows(path)
    _need(path, rows, ("video", "start", "end", "label"))
    lengths = _durations(durations) if durations is not None else None
    out = Converted({})
    ends: dict[str, float] = {}
    first_row: dict[str, int] = {}  # where each video's subset was given first
    for i, r in enumerate(rows, start=2):
        start, end = _number(path, i, "start", r["start"]), _number(path, i, "end", r["end"])
        if end < start or start < 0:
            raise UserError(f"{path}: row {i}: segment [{start}, {end}] is not 0 <= start <= end")
        if not r["label"]:
            raise UserError(f"{path}: row {i}: empty label")
        video = r["video"]
        if (why := unsafe_id_reason(video)) is not None:
            raise UserError(f"{path}: row {i}: video id {video[:80]!r} {why}; it cannot name a file")
        if lengths is not None:
            if video not in lengths:
                raise UserError(f"{path}: row {i}: video {video!r} has no duration in {durations}")
            if end > lengths[video]:
                raise UserError(f"{path}: row {i}: end {end} is past the video's duration {lengths[video]}")
        ends[video] = max(ends.get(video, 0.0), end)
        here = r.get("subset") or subset
        entry = out.database.setdefault(video, {"subset": here, "duration": None, "annotations": []})
        first_row.setdefault(video, i)
        if here != entry["subset"]:
            first = f"{entry['subset']!r} at row {first_row[video]}"
            raise UserError(
                f"{path}: row {i}: video {video!r} is in subset {here!r} here and {first}; give "
                "each video one subset"
            )
        entry["annotations"].append({"segment": [start, end], "label": r["label"]})
    for video, entry in out.database.items():
        entry["duration"] = lengths[video] if lengths is not None else ends[video]
        if (why := duration_problem(entry["duration"])) is not None:
            raise UserError(f"{path}: video {video!r}: {why}")
    if lengths is None:
        out.notes.append("no --durations: each video's duration is its last instance's end")
    return out


def ego4d_mq(path: Path, **_) -> Converted:
    """Ego4D Moment Queries (moments_{train,val}.json: videos -> clips -> annotators -> labels): one
    entry per clip (its clip_uid), its duration video_end_sec - video_start_sec, the primary labels
    of every annotator at their clip-relative start_time / end_time (as Ego4D's own conversion takes
    them), subset = the video's split; segments clipped to the clip and counted."""
    data = read_json(Path(path), "annotation file", unique_keys=True)
    videos = data.get("videos") if isinstance(data, dict) else None
    if not isinstance(videos, list):
        raise UserError(f"{path}: expected {{'videos': [...]}} (Ego4D's moments file)")
    out, seen = Converted({}), {}
    for v, video in enumerate(videos):
        if not isinstance(video, dict) or not isinstance(video.get("clips") or [], list):
            raise UserError(f"{path}: video {v}: expected {{split, clips: [...]}}")
        for c, clip in enumerate(video.get("clips") or []):
            where = f"{path}: video {v} clip {c}"
            try:
                clip_id, split = str(clip["clip_uid"]), str(video["split"])
                duration = float(clip["video_end_sec"]) - float(clip["video_start_sec"])
            except (KeyError, TypeError, ValueError) as exc:
                raise UserError(f"{where}: malformed ({exc.__class__.__name__}: {str(exc)[:60]})") from None
            _once(seen, clip_id, where, "clip_uid")
            if (why := duration_problem(duration)) is not None:
                raise UserError(f"{where}: clip {clip_id!r}: {why}")
            out.database.setdefault(clip_id, {"subset": split, "duration": duration, "annotations": []})
            for a, annotator in enumerate(_list_of(clip.get("annotations"), f"{where}: annotations")):
                if not isinstance(annotator, dict):
                    got = type(annotator).__name__
                    raise UserError(f"{where} annotator {a}: expected a mapping, got {got}")
                labels = annotator.get("labels")
                for k, label in enumerate(_list_of(labels, f"{where} annotator {a}: labels")):
                    if not isinstance(label, dict):
                        raise UserError(f"{where} annotator {a} label {k}: expected a mapping")
                    if not label.get("primary"):
                        continue
                    segment = (label.get("start_time"), label.get("end_time"))
                    _add(
                        out,
                        clip_id,
                        where=f"{where} annotator {a} label {k}",
                        subset=split,
                        duration=duration,
                        segment=segment,
                        label=str(label.get("label")),
                    )
    out.notes.append("Ego4D MQ: each annotator's primary labels kept, as Ego4D's conversion keeps them")
    return out


def _list_of(value: object, where: str) -> list:
    """A list field of a JSON file (absent is empty), or one line naming where it is not a list."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise UserError(f"{where}: expected a list, got {type(value).__name__}")
    return value


def thumos_txt(path: Path, *, durations: Path | None = None, subset: str | None = None, **_) -> Converted:
    """THUMOS-14's official annotation folder (`<Class>_<subset>.txt`, lines `<video> <start> <end>`
    in seconds; `Ambiguous_<subset>.txt` left out, as the evaluation leaves it out); durations from a
    `video,duration` CSV (`--durations`), else each video's last end (noted)."""
    folder = Path(path)
    files = sorted(p for p in folder.glob("*_*.txt") if p.is_file()) if folder.is_dir() else []
    if not files:
        raise UserError(f"{folder}: no <Class>_<subset>.txt files (THUMOS-14's annotation folder)")
    lengths = _durations(durations) if durations is not None else None
    out, ends, ambiguous = Converted({}), {}, 0
    for file in files:
        label, _, split = file.stem.rpartition("_")
        try:
            lines = [line.split() for line in file.read_text(encoding="utf-8").splitlines()]
        except UnicodeDecodeError as exc:  # an id would hold U+FFFD, and match no video file
            raise UserError(f"{file}: not UTF-8 text (byte {exc.start}); convert it to UTF-8") from None
        for i, fields in enumerate(lines, start=1):
            if not fields:
                continue
            if len(fields) != 3:
                got = " ".join(fields)[:60]
                raise UserError(f"{file}: row {i}: expected '<video> <start> <end>', got {got!r}")
            if label == "Ambiguous":
                ambiguous += 1
                continue
            video = fields[0]
            start, end = _number(file, i, "start", fields[1]), _number(file, i, "end", fields[2])
            if lengths is not None and video not in lengths:
                raise UserError(f"{file}: row {i}: video {video!r} has no duration in {durations}")
            if start < 0 or (lengths is not None and end > lengths[video]):  # not clipped (docs)
                raise UserError(
                    f"{file}: row {i}: segment [{start}, {end}] is outside the video [0, "
                    f"{lengths[video] if lengths is not None else 'its end'}]"
                )
            duration = lengths[video] if lengths is not None else max(end, ends.get(video, 0.0))
            ends[video] = max(end, ends.get(video, 0.0))
            _add(
                out,
                video,
                where=f"{file}: row {i}",
                subset=subset or split,
                duration=duration,
                segment=(start, end),
                label=label,
            )
    for video, entry in out.database.items():
        entry["duration"] = lengths[video] if lengths is not None else ends[video]
    out.notes.append(f"{ambiguous} Ambiguous instance(s) left out, as THUMOS-14's evaluation leaves them out")
    if lengths is None:
        out.notes.append("no --durations: each video's duration is its last instance's end")
    return out


FORMATS: dict[str, Callable[..., Converted]] = {
    "epic100": epic100,
    "multithumos": multithumos,
    "charades": charades,
    "ego4d-mq": ego4d_mq,
    "thumos-txt": thumos_txt,
    "csv": generic_csv,
}
