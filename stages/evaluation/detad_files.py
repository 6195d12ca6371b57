"""The files DETAD's analyses read: a ground-truth file (ActivityNet layout, with durations or
DETAD's characteristics per instance) and a prediction file, coded as stages/evaluation/detad.py
takes them; `etad diagnose` and `etad view` read them alike. Bad input is one line naming the file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from stages.core.errors import UserError
from stages.core.workdir import beside_output, output_path
from stages.data.annotations import load_annotations, read_json, refuse_unusable_truth, unsafe_id_reason
from stages.evaluation import detad
from stages.evaluation.detections import Instances, given_or_settings, read_predictions

if TYPE_CHECKING:  # the settings models, for type hints only
    from stages.core.settings import Settings

DATASETS = tuple(detad.BINS)


@dataclass
class Inputs:
    """The analysed ground truth and predictions, with the codes that name them."""

    truth: detad.Truth
    pred: detad.Predictions
    classes: list[str]
    videos: list[str]  # video codes -> ids (the truth's first, then predictions' other videos)
    bins: dict[str, list[str]]  # the characteristics analysed -> their bucket names
    source: dict[str, str]  # characteristic -> "file" or "computed"
    durations: list[float] = field(default_factory=list)  # the subset's videos (codes 0..): seconds
    notes: list[str] = field(default_factory=list)


def files_request(settings: Settings | None, given: dict, *, folder: str, videos: bool = False) -> dict:
    """The files `etad diagnose` and `etad view` read: the options given, else the settings'
    (infer.output, data.annotations, data.protocol, data.eval_subset; with `videos`,
    data.video_dir); the output folder defaults to the predictions' own (results/e2e.json ->
    results/e2e/<folder>: workdir.beside_output)."""
    defaults = {}
    if settings is not None:
        d = settings.data
        defaults = {
            "predictions": output_path(settings),
            "ground_truth": d.annotations,
            "dataset": d.protocol,
            "subset": d.eval_subset,
        }
        if videos:  # found as extract finds them: data.video_name's patterns
            defaults["videos"], defaults["video_names"] = d.video_dir, tuple(d.video_names)
    given = given_or_settings(given, defaults)
    given.setdefault("dataset", "anet")
    given.setdefault("out", beside_output(given["predictions"], folder))
    return given


# the diagnosis figures `etad diagnose` writes and `etad view` shows
FIGURES = ("false_positive_analysis.png", "sensitivity_analysis.png", "false_negative_analysis.png")


def default_subset(path: Path, dataset: str) -> str:
    """DETAD's subset: ActivityNet's validation; THUMOS-14's test (named `test` or `testing`)."""
    if dataset != "thumos":
        return "validation"
    held = {(r.subset or "").lower() for r in load_annotations(path, require_duration=False).values()}
    return next((s for s in ("test", "testing") if s in held), "test")


def read_inputs(ground_truth: Path, predictions: Path, dataset: str, subset: str) -> Inputs:
    """Ground truth of `subset` with its characteristics, and the predictions coded alike; bad
    input (unknown labels, another dataset's file, no ground truth in the subset) is one line."""
    if dataset not in DATASETS:
        raise UserError(f"--dataset {dataset}: expected one of {', '.join(DATASETS)}")
    records = load_annotations(ground_truth, require_duration=False)  # ids, segments and numbers checked
    refuse_unusable_truth(ground_truth, records)
    raw = read_json(ground_truth, "annotation file")
    database = raw["database"] if isinstance(raw, dict) and isinstance(raw.get("database"), dict) else raw
    wanted = {k: r for k, r in records.items() if (r.subset or "").lower() == subset.lower()}
    if not wanted:
        held = sorted({r.subset for r in records.values() if r.subset})
        raise UserError(
            f"{ground_truth}: no video in subset {subset!r} (subsets: {', '.join(held) or 'none'})"
        )
    videos, rows = list(wanted), []
    for code, (video_id, record) in enumerate(wanted.items()):
        extra = database[video_id].get("annotations") or []
        for i, seg in enumerate(record.segments):
            given = extra[i] if i < len(extra) else {}
            rows.append((code, seg.start, seg.end, seg.label, given, record.duration))
    if not rows:
        raise UserError(f"{ground_truth}: subset {subset!r} has no ground-truth instance")
    classes = list(dict.fromkeys(r[3] for r in rows))  # DETAD's class index: first appearance
    video = np.array([r[0] for r in rows])
    segments = np.array([(r[1], r[2]) for r in rows], dtype=float)
    values, source = _characteristics(
        ground_truth, dataset, rows, video=video, segments=segments, videos=videos
    )
    keep = (segments[:, 0] < segments[:, 1]) & (values["coverage"] <= 1.0)  # as DETAD leaves out
    bins = {name: detad.BINS[dataset][name][1] for name in values}
    label = _codes([r[3] for r in rows], classes)
    buckets = {n: detad.bucket(v[keep], detad.BINS[dataset][n][0]) for n, v in values.items()}
    truth = detad.Truth(
        video=video[keep], segments=segments[keep], label=label[keep], n_classes=len(classes), buckets=buckets
    )
    notes = (
        [
            f"{int((~keep).sum())} ground-truth instance(s) of zero length or covering more than their "
            "video left out, as DETAD leaves them out"
        ]
        if (~keep).any()
        else []
    )
    labels = {seg.label for r in records.values() for seg in r.segments}
    pred = _predictions(predictions, classes, videos, subset=subset, labels=labels, notes=notes)
    durations = [
        r.duration if r.duration else max((seg.end for seg in r.segments), default=0.0)
        for r in wanted.values()
    ]
    return Inputs(truth, pred, classes, videos, bins=bins, source=source, durations=durations, notes=notes)


def _codes(names: list[str], vocabulary: list[str]) -> np.ndarray:
    index = {name: i for i, name in enumerate(vocabulary)}
    return np.array([index[n] for n in names], dtype=np.int64)


def _characteristics(
    path: Path, dataset: str, rows: list, *, video: np.ndarray, segments: np.ndarray, videos: list[str]
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Each characteristic's value per instance: the file's where every instance carries it, else
    (length, coverage, number of instances) computed from the ground truth and the durations."""
    values, source = {}, {}
    for name in detad.BINS[dataset]:
        given = [r[4].get(name) if isinstance(r[4], dict) else None for r in rows]
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in given):
            values[name], source[name] = np.array(given, dtype=float), "file"
    missing = [n for n in detad.COMPUTED if n not in values]
    if missing:
        durations = np.array([np.nan if r[5] is None else r[5] for r in rows], dtype=float)
        if "coverage" in missing and not np.isfinite(durations).all():
            first = videos[int(video[~np.isfinite(durations)][0])]
            raise UserError(
                f"{path}: video {first!r} has no duration; coverage needs every video's "
                "duration (or DETAD's characteristics in the file)"
            )
        computed = detad.computed_characteristics(segments, video, durations)
        for name in missing:
            values[name], source[name] = computed[name], "computed"
    return {n: values[n] for n in detad.BINS[dataset] if n in values}, source


def _predictions(
    path: Path, classes: list[str], videos: list[str], *, subset: str, labels: set[str], notes: list[str]
) -> detad.Predictions:
    """The predictions coded as the truth: a label the annotation file never names is an error (a
    file of another dataset); one of another subset's classes is dropped with a note, as `etad eval`
    drops it (DETAD's code raises KeyError)."""
    table = read_predictions(path)  # every segment and score finite and ordered, or one line
    if not table.videos:  # as `etad eval` refuses it
        raise UserError(f"{path}: no prediction left to score")
    known = {c: i for i, c in enumerate(classes)}
    unknown = sorted({label for label in table.labels if label not in labels})
    if unknown:
        raise UserError(
            f"{path}: {len(unknown)} label(s) the ground truth never names (first: "
            f"{unknown[0][:60]!r}); a prediction file of another dataset?"
        )
    elsewhere = sorted({label for label in table.labels if label not in known})
    if elsewhere:
        kept = np.array([label in known for label in table.labels], dtype=bool)
        notes.append(
            f"{int((~kept).sum())} prediction(s) of {len(elsewhere)} class(es) without ground truth "
            f"in subset {subset!r} left out (first: {elsewhere[0][:60]!r}), as etad eval leaves "
            "them out"
        )
        videos_kept = [v for v, k in zip(table.videos, kept, strict=True) if k]
        labels_kept = [x for x, k in zip(table.labels, kept, strict=True) if k]
        table = Instances(videos_kept, table.segments[kept], labels_kept, table.scores[kept])
    for video_id in dict.fromkeys(table.videos):  # the viewer names files after them
        if (reason := unsafe_id_reason(video_id)) is not None:
            raise UserError(f"{path}: video id {video_id[:80]!r} {reason}")
    code = {v: i for i, v in enumerate(videos)}
    if table.videos and not any(v in code for v in table.videos):
        raise UserError(
            f"{path}: no prediction is for a video of subset {subset!r}; another dataset or subset?"
        )
    for v in table.videos:  # videos without ground truth: codes past the truth's
        code.setdefault(v, len(code))
    names = np.empty(len(code), dtype=object)
    names[list(code.values())] = list(code)
    return detad.Predictions(
        np.array([code[v] for v in table.videos], dtype=np.int64),
        table.segments,
        np.array([known[label] for label in table.labels], dtype=np.int64),
        np.asarray(table.scores, dtype=float),
        names=names,
    )
