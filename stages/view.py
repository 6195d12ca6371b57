"""`etad view`: a self-contained HTML page to look at detections (docs/view.md).

Per video a timeline (stages/evaluation/timeline.py): the ground truth on one row, the top
detections below, coloured by class, as opaque as their score, each with its DETAD error type
(stages/evaluation/detad.py, at tIoU 0.5) on hover; the video playing beside it when its file is
local (a click on a segment seeks the player; the player's time moves a cursor over the timeline).
Videos sortable by AP or by errors; AP per class; the diagnosis figures when `etad diagnose` wrote
them. Works offline from the file system: no CDN, no server, data inlined. `subtitles` also writes
one SRT or ASS file per video with its detections, for any player.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import numpy as np

from stages.core.errors import UserError
from stages.core.files import aliased_output, atomic_output, ensure_writable_dir
from stages.core.workdir import beside_output
from stages.data.annotations import safe_path
from stages.data.video_index import video_file
from stages.evaluation import detad
from stages.evaluation.detad_files import FIGURES, Inputs, default_subset, files_request, read_inputs
from stages.evaluation.metrics import voc_ap
from stages.evaluation.timeline import class_color, timeline_rows

if TYPE_CHECKING:  # the settings models, for type hints only
    from stages.core.settings import Settings

TIOU = 0.5  # the tIoU of the error types and per-video AP shown
SUBTITLES = ("srt", "ass")
TEMPLATE = Path(__file__).with_name("view.html")


def request(settings: Settings | None, **given) -> dict:
    """run()'s arguments: the options given, else the settings' (infer.output, data.annotations,
    data.protocol, data.eval_subset, data.video_dir); output: <stem>/view beside <stem>.json."""
    return files_request(settings, given, folder="view", videos=True)


def video_ap(inputs: Inputs, matched: np.ndarray) -> dict[int, float]:
    """Each video's AP at TIOU: the mean over its ground-truth classes of the AP of that class's
    detections in the video (VOC-style, as the official evaluator computes AP)."""
    truth, pred = inputs.truth, inputs.pred
    out: dict[int, list[float]] = {}
    order = np.lexsort((-pred.score, pred.label, pred.video))  # per (video, class), best first
    keys = pred.video[order] * truth.n_classes + pred.label[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else np.zeros(0, dtype=int)
    groups = dict(zip(keys[starts].tolist(), np.split(order, starts[1:]), strict=True)) if len(keys) else {}
    pairs, counts = np.unique(truth.video * truth.n_classes + truth.label, return_counts=True)
    for pair, npos in zip(pairs.tolist(), counts.tolist(), strict=True):
        idx = groups.get(pair, np.zeros(0, dtype=int))
        ap = float(voc_ap(matched[:1, idx] >= 0, npos)[0]) if len(idx) else 0.0
        out.setdefault(pair // truth.n_classes, []).append(ap)
    return {v: float(np.mean(aps)) for v, aps in out.items()}


def class_ap(inputs: Inputs, matched: np.ndarray) -> list[float]:
    """AP at TIOU of each class over the whole subset."""
    truth, pred = inputs.truth, inputs.pred
    npos = np.bincount(truth.label, minlength=truth.n_classes)
    out = []
    for c in range(truth.n_classes):
        idx = np.flatnonzero(pred.label == c)
        idx = idx[pred.score[idx].argsort()[::-1]]
        ok = npos[c] > 0 and len(idx) > 0
        out.append(float(voc_ap(matched[:1, idx] >= 0, int(npos[c]))[0]) if ok else 0.0)
    return out


def find_video(folder: Path | None, video_id: str, patterns: tuple[str, ...] = ("{id}.*",)) -> Path | None:
    """The video file of an id in `folder`, found as every command finds it: the first of
    data.video_name's `patterns` that names a file (`{id}.*`: video_index.video_file's rule)."""
    if folder is None or not Path(folder).is_dir():
        return None
    safe_path(Path(folder), video_id, "{id}")  # an id that would leave the folder: refused
    for pattern in patterns:
        named = Path(folder) / pattern.replace("{id}", video_id)
        found = video_file(folder, video_id) if pattern == "{id}.*" else named
        if found is not None and found.is_file():
            return found
    return None


def page_data(
    inputs: Inputs,
    *,
    top: int,
    videos: Path | None,
    out: Path,
    figures: list[Path],
    patterns: tuple[str, ...] = ("{id}.*",),
) -> dict:
    """Everything the page shows, as JSON (numbers rounded to what a timeline can show)."""
    truth, pred = inputs.truth, inputs.pred
    _, matched = detad.normalised_ap(truth, pred, np.array([TIOU]))
    types = detad.error_types(truth, pred, matched, np.array([TIOU]))[0]
    per_video_ap = video_ap(inputs, matched)
    by_video: dict[int, list[int]] = {}
    for i, v in enumerate(pred.video.tolist()):
        by_video.setdefault(v, []).append(i)
    truth_of: dict[int, list[tuple]] = {}
    for (s, e), c, v in zip(truth.segments.tolist(), truth.label.tolist(), truth.video.tolist(), strict=True):
        truth_of.setdefault(v, []).append((s, e, inputs.classes[c]))
    index, entries = {c: i for i, c in enumerate(inputs.classes)}, []
    for code, video_id in enumerate(inputs.videos[: len(inputs.durations)]):
        mine = by_video.get(code, [])
        detections = [
            {
                "segment": pred.segments[i].tolist(),
                "label": inputs.classes[pred.label[i]],
                "score": float(pred.score[i]),
                "type": int(types[i]),
            }
            for i in mine
        ]
        rows = timeline_rows(truth_of.get(code, []), detections, top)
        kept = sorted(detections, key=lambda d: -d["score"])[:top]
        file = find_video(videos, video_id, patterns)
        entries.append(
            {
                "id": video_id,
                "duration": inputs.durations[code],
                "src": quote(os.path.relpath(file, out)) if file is not None else None,
                "ap": round(per_video_ap.get(code, 0.0), 4),
                "errors": sum(d["type"] != detad.TRUE_POSITIVE for d in kept),
                "truth": [[round(s, 2), round(e, 2), index[label]] for s, e, label in rows["truth"]],
                "detections": [
                    [round(s, 2), round(e, 2), index[label], round(score, 4), round(op, 3), d["type"]]
                    for (s, e, label, score, op), d in zip(rows["detections"], kept, strict=True)
                ],
            }
        )
    return {
        "classes": inputs.classes,
        "tiouText": f"{TIOU:g}",
        "colors": [class_color(name) for name in inputs.classes],
        "errorTypes": list(detad.ERROR_TYPES),
        "tiou": TIOU,
        "videos": entries,
        "classAP": [round(a, 4) for a in class_ap(inputs, matched)],
        "figures": [{"name": p.stem, "src": _data_uri(p)} for p in figures],
    }


def _data_uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()


def html(data: dict) -> str:
    """The page: the template with the data inlined as JSON (ASCII, `<` escaped: no `</script>`
    in a label can end it); its policy runs the page's one script by its hash, nothing inline else."""
    blob = json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")
    page = TEMPLATE.read_text(encoding="utf-8")
    script = re.search(r"<script>(.*?)</script>", page, re.S).group(1)
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode()
    return page.replace("/*SCRIPT_HASH*/", f"sha256-{digest}").replace("/*DATA*/null", blob)


def _clock(seconds: float, ass: bool) -> str:
    hours, rest = divmod(max(0.0, seconds), 3600)
    minutes, secs = divmod(rest, 60)
    if ass:  # H:MM:SS.cc
        return f"{int(hours)}:{int(minutes):02d}:{secs:05.2f}"
    whole = int(secs)
    return f"{int(hours):02d}:{int(minutes):02d}:{whole:02d},{int(round((secs - whole) * 1000)) % 1000:03d}"


def subtitles(video: dict, classes: list[str], kind: str) -> str:
    """The video's detections as SRT or ASS cues (label and score), in time order: one cue per
    detection whatever its label holds (line breaks, markup, override codes are text)."""
    cues = sorted(video["detections"], key=lambda d: d[0])
    if kind == "srt":
        return "".join(
            f"{i}\n{_clock(s, False)} --> {_clock(e, False)}\n{_srt_text(classes[c])} ({score:.2f})\n\n"
            for i, (s, e, c, score, *_) in enumerate(cues, start=1)
        )
    head = (
        "[Script Info]\nScriptType: v4.00+\nPlayResX: 640\nPlayResY: 360\n\n[V4+ Styles]\n"
        "Format: Name, Fontname, Fontsize, PrimaryColour, BackColour, BorderStyle, Outline, Alignment\n"
        "Style: Default,Arial,18,&H00FFFFFF,&H80000000,3,1,2\n\n[Events]\n"
        "Format: Layer, Start, End, Style, Text\n"
    )
    return head + "".join(
        f"Dialogue: 0,{_clock(s, True)},{_clock(e, True)},Default,{_ass_text(classes[c])} ({score:.2f})\n"
        for s, e, c, score, *_ in cues
    )


LINE_BREAKS = re.compile(r"[\r\n\v\f\x1c-\x1e\x85\u2028\u2029]+")  # what ends a line somewhere


def _one_line(label: str) -> str:
    """A label on one line: a blank line would start a new SRT cue, a new line a new ASS event."""
    return LINE_BREAKS.sub(" ", label)


def _srt_text(label: str) -> str:
    """SRT cue text without markup (players read <i>, <font> and {\\an8} in SRT, and libass a
    backslash escape such as \\N: a word joiner after a backslash keeps it one)."""
    return re.sub(r"<[^>]*>|\{[^}]*\}", "", _one_line(label)).strip().replace("\\", "\\\u2060") or "?"


def _ass_text(label: str) -> str:
    """ASS event text: braces would start override codes (made parentheses), a backslash an
    escape such as \\N (a word joiner after it keeps it a backslash)."""
    return _one_line(label).replace("\\", "\\\u2060").replace("{", "(").replace("}", ")")


def run(
    ground_truth: Path,
    predictions: Path,
    *,
    dataset: str,
    out: Path,
    subset: str | None = None,
    videos: Path | None = None,
    top: int = 20,
    subtitle: str | None = None,
    video_names: tuple[str, ...] = ("{id}.*",),
) -> dict:
    """Write <out>/index.html (and subtitles/<id>.srt|ass); returns what was written."""
    if subtitle is not None and subtitle not in SUBTITLES:
        raise UserError(f"--subtitles {subtitle}: expected one of {', '.join(SUBTITLES)}")
    if top < 1:
        raise UserError(f"--top {top}: expected at least 1")
    out = Path(out)
    given = {"--ground-truth": ground_truth, "--predictions": predictions}
    if why := aliased_output({"index.html": out / "index.html"}, given):
        raise UserError(why)
    subset = subset or default_subset(Path(ground_truth), dataset)
    inputs = read_inputs(Path(ground_truth), Path(predictions), dataset, subset)
    for folder in (out, out / "subtitles") if subtitle is not None else (out,):  # all before any write
        try:
            ensure_writable_dir(folder)
        except OSError as exc:
            raise UserError(f"{folder}: cannot write the output folder: {exc.strerror or exc}") from None
    diagnosis = beside_output(predictions, "diagnosis")  # this model's, never another's
    figures = [diagnosis / name for name in FIGURES if (diagnosis / name).is_file()]
    folder = Path(videos) if videos else None
    data = page_data(inputs, top=top, videos=folder, out=out.resolve(), figures=figures, patterns=video_names)
    with atomic_output(out / "index.html") as tmp:
        tmp.write_text(html(data), encoding="utf-8")
    written = [out / "index.html"]
    if subtitle is not None:
        folder = out / "subtitles"
        for video in data["videos"]:
            path = safe_path(folder, video["id"], "{id}." + subtitle)
            with atomic_output(path) as tmp:
                tmp.write_text(subtitles(video, data["classes"], subtitle), encoding="utf-8")
            written.append(path)
    played = sum(v["src"] is not None for v in data["videos"])
    if folder is not None and played < len(data["videos"]):  # where it looked, and for what
        inputs.notes.append(
            f"{len(data['videos']) - played} of {len(data['videos'])} videos have no file "
            f"in {folder} (tried {', '.join(video_names)} for each id)"
        )
    return {
        "page": out / "index.html",
        "videos": len(data["videos"]),
        "with_file": played,
        "figures": len(figures),
        "written": written,
        "notes": inputs.notes,
    }
