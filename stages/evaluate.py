"""`etad eval`: score a detection (or proposal) file against ground truth, ActivityNet style.

Reads: a prediction file {"results": {video_id: [{label, score, segment}]}} and a ground-truth file
(ActivityNet `database`, THUMOS/ActionFormer `database`, or a bare {video_id: entry} mapping such as
BSN/mmaction2 files). Writes nothing itself: it returns an `EvalReport` the CLI prints, and
optionally saves as JSON or draws. The numbers come from `stages.metrics`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stages.annotations import read_json
from stages.errors import UserError
from stages.files import atomic_output, write_json
from stages.metrics import (
    ANET_TIOUS,
    THUMOS_TIOUS,
    average_recall_vs_proposals,
    detection_ap,
    recall_auc,
)

DEFAULT_SUBSET = {"anet": "validation", "thumos": "test"}
PREFIX = "v_"


@dataclass
class EvalReport:
    task: str  # detection | proposals
    tious: list[float]
    values: list[float]  # mAP (detection) or recall at AN=100 (proposals) per tIoU
    average: float  # average mAP, or AUC of AR-AN (percent) for proposals
    per_class: dict[str, list[float]] = field(default_factory=dict)  # label -> AP per tIoU
    ar_at: dict[int, float] = field(default_factory=dict)  # proposals: AN -> average recall
    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "task": self.task,
            "tiou_thresholds": self.tious,
            "mAP" if self.task == "detection" else "recall@100": self.values,
            "average_mAP" if self.task == "detection" else "auc": self.average,
            **({"per_class_AP": self.per_class} if self.per_class else {}),
            **({"average_recall": {str(k): v for k, v in self.ar_at.items()}} if self.ar_at else {}),
            "counts": self.counts,
            "notes": self.notes,
        }


@dataclass
class _Table:
    """Instances as flat arrays (what the metrics take)."""

    videos: list[str]
    segments: np.ndarray
    labels: list[str]
    scores: np.ndarray | None = None


def _database(data: object, path: Path) -> dict:
    if isinstance(data, dict) and isinstance(data.get("database"), dict):
        return data["database"]
    if (
        isinstance(data, dict)
        and data
        and all(isinstance(v, dict) and "annotations" in v for v in data.values())
    ):
        return data  # BSN / mmaction2 style: ids at the top level
    raise UserError(
        f"{path}: not a ground-truth file (expected a 'database' mapping video id -> annotations)"
    )


def _segment(value: object) -> tuple[float, float]:
    start, end = value  # type: ignore[misc]
    return float(start), float(end)


def read_ground_truth(path: Path, subset: str | None, dedup: bool) -> tuple[_Table, list[str], list[str]]:
    """Ground-truth instances of one subset (case-insensitive), the class list in order of first
    appearance (as the official evaluator builds it), and notes about what was filtered."""
    database = _database(read_json(path, "ground-truth file"), path)
    notes: list[str] = []
    subsets = {str(v.get("subset")) for v in database.values() if v.get("subset") is not None}
    if subset is not None and subsets:
        wanted = subset.lower()
        database = {k: v for k, v in database.items() if str(v.get("subset", "")).lower() == wanted}
        if not database:
            raise UserError(f"{path}: no video in subset {subset!r} (subsets: {', '.join(sorted(subsets))})")
    elif subset is not None:
        notes.append(f"{path.name} has no 'subset' fields: every video is used")
    videos, segments, labels = [], [], []
    seen: set[tuple] = set()
    dropped = 0
    for video_id, entry in database.items():
        for i, ann in enumerate(entry.get("annotations") or []):
            try:
                seg, label = _segment(ann["segment"]), str(ann["label"])
            except (KeyError, TypeError, ValueError) as exc:
                raise UserError(
                    f"{path}: video {video_id!r} annotation {i}: malformed ({exc.__class__.__name__})"
                ) from None
            if dedup:
                key = (video_id, seg, label)
                if key in seen:
                    dropped += 1
                    continue
                seen.add(key)
            videos.append(video_id)
            segments.append(seg)
            labels.append(label)
    if dedup:
        notes.append(f"actionformer protocol: {dropped} duplicate ground-truth instance(s) dropped")
    classes = list(dict.fromkeys(labels))
    return _Table(videos, np.array(segments, dtype=float).reshape(-1, 2), labels), classes, notes


def read_predictions(path: Path) -> _Table:
    """Every prediction of a result file, in file order."""
    data = read_json(path, "prediction file")
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(results, dict):
        raise UserError(f"{path}: expected a top-level 'results' mapping video id -> list of detections")
    videos, segments, labels, scores = [], [], [], []
    for video_id, detections in results.items():
        if not isinstance(detections, list):
            raise UserError(f"{path}: video {video_id!r}: expected a list of detections")
        for i, det in enumerate(detections):
            try:
                segments.append(_segment(det["segment"]))
                scores.append(float(det["score"]))
                labels.append(str(det.get("label", "")))
            except (KeyError, TypeError, ValueError) as exc:
                raise UserError(
                    f"{path}: video {video_id!r} detection {i}: malformed ({exc.__class__.__name__}: {exc})"
                ) from None
            videos.append(video_id)
    return _Table(
        videos, np.array(segments, dtype=float).reshape(-1, 2), labels, np.array(scores, dtype=float)
    )


def read_blocked(path: Path) -> set[str]:
    data = read_json(path, "blocked list")
    if not isinstance(data, list) or not all(isinstance(v, str) for v in data):
        raise UserError(f"{path}: expected a JSON list of video ids")
    return set(data)


def _strip(video_id: str) -> str:
    return video_id[len(PREFIX) :] if video_id.startswith(PREFIX) else video_id


def reconcile_ids(gt: _Table, pred: _Table, blocked: set[str]) -> tuple[set[str], str | None]:
    """Ids are exact strings. When the files disagree only about the `v_` prefix (BSN-style files
    have it, official ones do not), match without it and say so instead of scoring zeros."""
    gt_ids, pred_ids = set(gt.videos), set(pred.videos)
    exact = len(gt_ids & pred_ids)
    stripped = len({_strip(v) for v in gt_ids} & {_strip(v) for v in pred_ids})
    if stripped <= exact:
        return blocked, None
    gt.videos = [_strip(v) for v in gt.videos]
    pred.videos = [_strip(v) for v in pred.videos]
    note = (
        f"video ids differ by the '{PREFIX}' prefix between the files ({exact} shared as written, "
        f"{stripped} without the prefix): matched without it"
    )
    return {_strip(v) for v in blocked}, note


def _keep(table: _Table, mask: np.ndarray) -> _Table:
    idx = np.flatnonzero(mask)
    return _Table(
        [table.videos[i] for i in idx],
        table.segments[idx],
        [table.labels[i] for i in idx],
        None if table.scores is None else table.scores[idx],
    )


def evaluate(
    predictions: Path,
    ground_truth: Path,
    dataset: str = "anet",
    subset: str | None = None,
    blocked: Path | None = None,
    task: str = "detection",
    tious: list[float] | None = None,
    protocol: str = "official",
) -> EvalReport:
    """Score `predictions` against `ground_truth`; see the module docstring of stages.metrics."""
    thresholds = (
        np.asarray(tious, dtype=float) if tious else (ANET_TIOUS if dataset == "anet" else THUMOS_TIOUS)
    )
    gt, classes, notes = read_ground_truth(
        ground_truth, subset or DEFAULT_SUBSET[dataset], protocol == "actionformer"
    )
    if not gt.videos:
        raise UserError(f"{ground_truth}: no ground-truth instance in the selected subset")
    pred = read_predictions(predictions)
    blocked_ids = read_blocked(blocked) if blocked else set()
    blocked_ids, note = reconcile_ids(gt, pred, blocked_ids)
    if note:
        notes.append(note)
    if blocked_ids:
        n_gt_videos = len(set(gt.videos))
        gt = _keep(gt, np.array([v not in blocked_ids for v in gt.videos], dtype=bool))
        pred = _keep(pred, np.array([v not in blocked_ids for v in pred.videos], dtype=bool))
        notes.append(f"blocked list: {n_gt_videos - len(set(gt.videos))} ground-truth video(s) left out")
    if not pred.videos:
        raise UserError(f"{predictions}: no prediction left to score")
    gt_video_set = set(gt.videos)
    outside = sum(1 for v in set(pred.videos) if v not in gt_video_set)
    if outside:
        notes.append(
            f"{outside} predicted video(s) have no ground truth here: their detections count as false"
        )
    video_code = {v: i for i, v in enumerate(dict.fromkeys(gt.videos + pred.videos))}
    gt_video = np.array([video_code[v] for v in gt.videos], dtype=np.int64)
    pred_video = np.array([video_code[v] for v in pred.videos], dtype=np.int64)
    counts = {
        "ground_truth_videos": len(gt_video_set),
        "ground_truth_instances": len(gt.videos),
        "predicted_videos": len(set(pred.videos)),
        "predictions": len(pred.videos),
    }
    if task == "proposals":
        recall, avg_recall, per_video = average_recall_vs_proposals(
            gt_video, gt.segments, pred_video, pred.segments, pred.scores, thresholds
        )
        ar_at = {an: float(avg_recall[an - 1]) for an in (1, 5, 10, 50, 100)}
        return EvalReport(
            task,
            thresholds.tolist(),
            recall[:, -1].tolist(),
            recall_auc(avg_recall, per_video),
            ar_at=ar_at,
            counts=counts,
            notes=notes,
        )

    class_code = {c: i for i, c in enumerate(classes)}
    known = np.array([label in class_code for label in pred.labels], dtype=bool)
    if not known.all():
        unknown = sorted({label for label in pred.labels if label not in class_code})
        shown = ", ".join(repr(u) for u in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        notes.append(
            f"{int((~known).sum())} prediction(s) with {len(unknown)} label(s) absent from the ground truth "
            f"were ignored: {shown}"
        )
        pred_video = pred_video[known]
        pred = _keep(pred, known)
    ap = detection_ap(
        gt_video,
        gt.segments,
        np.array([class_code[c] for c in gt.labels], dtype=np.int64),
        pred_video,
        pred.segments,
        np.array([class_code[c] for c in pred.labels], dtype=np.int64),
        pred.scores,
        len(classes),
        thresholds,
    )
    m_ap = ap.mean(axis=1)
    per_class = {c: ap[:, i].tolist() for i, c in enumerate(classes)}
    return EvalReport(
        task, thresholds.tolist(), m_ap.tolist(), float(m_ap.mean()), per_class, counts=counts, notes=notes
    )


def save_json(report: EvalReport, path: Path) -> None:
    write_json(path, report.as_dict())


def plot(report: EvalReport, path: Path, per_class: bool = False) -> None:
    """mAP (or recall) against tIoU; with `per_class`, a second panel of per-class average AP."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    show_classes = per_class and bool(report.per_class)
    n = len(report.per_class)
    fig, axes = plt.subplots(
        1,
        2 if show_classes else 1,
        figsize=(12 if show_classes else 6, max(4, 0.18 * n) if show_classes else 4),
        squeeze=False,
    )
    ax = axes[0, 0]
    ax.plot(report.tious, [100 * v for v in report.values], marker="o")
    ax.set_xlabel("tIoU threshold")
    ax.set_ylabel("mAP (%)" if report.task == "detection" else "recall @ AN=100 (%)")
    ax.set_title(
        f"{report.task}: average {100 * report.average if report.task == 'detection' else report.average:.2f}"
    )
    ax.grid(alpha=0.3)
    if show_classes:
        items = sorted(report.per_class.items(), key=lambda kv: np.mean(kv[1]))
        bars = axes[0, 1]
        bars.barh([k for k, _ in items], [100 * float(np.mean(v)) for _, v in items])
        bars.set_xlabel("average AP over tIoU (%)")
        bars.tick_params(axis="y", labelsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
