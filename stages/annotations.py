"""`etad annotations convert` and `check`: other benchmarks' annotation files in the layout every
etad command reads (ActivityNet's JSON), and what a file holds (docs/annotations.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stages.core.errors import UserError
from stages.core.files import write_json
from stages.data.annotations import load_annotations, several_classes, unsafe_id_reason
from stages.data.converters import FORMATS, Converted
from stages.data.segments import duration_problem, segment_problem
from stages.data.video_index import VIDEO_EXTENSIONS, probe, video_file


def convert(sources: list[Path], *, fmt: str, out: Path, videos: Path | None = None, **options) -> Converted:
    """Convert `sources` (files of one FORMATS name, e.g. a dataset's training and validation
    files) into one database and write it to `out` (a new file, written atomically): training and
    evaluation read one file, so that both see the same classes. Ids lose a video file's extension;
    with `videos`, each video's duration is read from its file there (`with_durations_of`)."""
    if fmt not in FORMATS:
        raise UserError(f"--from {fmt}: expected one of {', '.join(FORMATS)}")
    if Path(out).exists():
        raise UserError(f"{out}: exists; give a new file name")
    if videos is not None and not Path(videos).is_dir():
        raise UserError(f"--videos {videos}: no such folder")
    merged = Converted({})
    where: dict[str, Path] = {}
    for source in map(Path, sources):
        converted = FORMATS[fmt](source, **options)
        if not converted.database:
            raise UserError(f"{source}: no video to convert")
        if twice := next((v for v in converted.database if v in where), None):
            raise UserError(f"{source}: video {twice!r} is in {where[twice]} too; give each video once")
        where.update(dict.fromkeys(converted.database, source))
        merged.database.update(converted.database)
        merged.clipped += converted.clipped
        merged.notes += converted.notes
    merged.database, where = _without_extensions(merged, where)
    if videos is not None:
        with_durations_of(merged, Path(videos))
    for video, entry in merged.database.items():  # checked before the first byte is written
        if (why := unsafe_id_reason(video)) is not None:
            raise UserError(f"{where[video]}: video id {video[:80]!r} {why}; it cannot name a file")
        if (why := duration_problem(entry["duration"])) is not None:
            raise UserError(f"{where[video]}: video {video!r}: {why}")
    names = " + ".join(Path(source).name for source in sources)
    try:
        write_json(Path(out), {"version": f"etad conversion of {names} ({fmt})", "database": merged.database})
    except OSError as exc:
        raise UserError(f"{out}: cannot write: {exc.strerror or exc.__class__.__name__}") from None
    load_annotations(Path(out))  # what every command will read: checked once more
    return merged


def _without_extensions(done: Converted, where: dict[str, Path]) -> tuple[dict, dict[str, Path]]:
    """Ids with a video file's extension stripped (noted); two ids that become one are refused."""
    database, origin, stripped = {}, {}, []
    for video, entry in done.database.items():
        suffix = Path(video).suffix
        name = video[: -len(suffix)] if suffix.lower() in VIDEO_EXTENSIONS else video  # bikes.mp4 -> bikes
        if name != video:
            stripped.append(video)
        if name in database:
            raise UserError(
                f"{where[video]}: video {video!r} and {origin[name]!r} are one id once the "
                "extension is stripped; give each video once"
            )
        database[name], origin[name] = entry, video
    if stripped:
        done.notes.append(
            f"{len(stripped)} id(s) named a video file: the extension stripped "
            f"({stripped[0]} -> {Path(stripped[0]).stem}); ids name videos, data.video_name "
            "finds their files"
        )
    return database, {name: where[video] for name, video in origin.items()}


def with_durations_of(done: Converted, folder: Path) -> None:
    """Each video's duration from its file in `folder` (`<id>.*`, as decoding reads it: the player's
    clock to the end of the last picture), in place of one the annotation file lacks or guessed from
    its last instance; an instance past it is cut to it (counted). What was read stays in
    `done.probed` (`etad init` chooses sizes from it)."""
    missing, cut = [], 0
    for video, entry in done.database.items():
        found = video_file(folder, video)
        if found is None:
            missing.append(video)
            continue
        done.probed[video] = probe(found)
        entry["duration"] = round(done.probed[video].duration, 3)
        for a in entry["annotations"]:
            start, end = a["segment"]
            if end > entry["duration"]:
                a["segment"], cut = [min(start, entry["duration"]), entry["duration"]], cut + 1
    if missing:
        raise UserError(
            f"--videos {folder}: no video file for {len(missing)} id(s) (first: {missing[0]!r}; tried <id>.*)"
        )
    done.notes = [n for n in done.notes if "duration is its last instance's end" not in n]
    done.notes.append(
        f"durations read from the {len(done.database)} video files in {folder}"
        + (f"; {cut} instance(s) ending past their video cut to its end" if cut else "")
    )
    done.clipped += cut


def check(path: Path) -> dict:
    """What an annotation file holds, per subset: videos, instances, classes, and the instances of
    zero length, outside [0, duration], and overlapping another of their class in their video."""
    records = load_annotations(Path(path), require_duration=False)
    rows: dict[str, dict] = {}
    for record in records.values():
        counted = ("videos", "instances", "unusable", "zero_length", "out_of_range", "overlapping")
        blank = dict.fromkeys((*counted, "no_duration"), 0)
        row = rows.setdefault(record.subset or "(none)", {**blank, "classes": set()})
        row["videos"] += 1
        row["no_duration"] += record.duration is None
        unusable = [s for s in record.segments if segment_problem(s.start, s.end) is not None]
        segs = [s for s in record.segments if segment_problem(s.start, s.end) is None]
        row["unusable"] += len(unusable)  # NaN, inf or reversed: no command scores or trains on them
        row["instances"] += len(segs)
        row["classes"].update(s.label for s in segs)
        row["zero_length"] += sum(s.end <= s.start for s in segs)
        if record.duration is not None:
            row["out_of_range"] += sum(s.start < 0 or s.end > record.duration + 1e-6 for s in segs)
        by_class: dict[str, list] = {}
        for s in segs:
            by_class.setdefault(s.label, []).append((s.start, s.end))
        for spans in by_class.values():
            a = np.array(sorted(spans))
            if len(a) > 1:  # pairs that overlap: start before an earlier one's end
                row["overlapping"] += int(
                    sum(
                        ((a[i + 1 :, 0] < a[i, 1]) & (a[i + 1 :, 0] < a[i + 1 :, 1])).sum()
                        for i in range(len(a) - 1)
                    )
                )
    for row in rows.values():
        row["classes"] = len(row["classes"])
    total_classes = len({s.label for r in records.values() for s in r.segments})
    hint = several_classes(list(records.values()))
    return {"file": str(path), "subsets": rows, "classes": total_classes, "notes": [hint] if hint else []}
