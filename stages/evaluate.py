"""`etad eval`: score a detection (or proposal) file against ground truth, ActivityNet style.

Reads: a prediction file {"results": {video_id: [{label, score, segment}]}} and a ground-truth file
(anything stages.data.annotations reads: ActivityNet, THUMOS/ActionFormer, BSN/mmaction2). Writes
nothing itself: it returns an `EvalReport` the CLI prints, and optionally saves as JSON or draws.
The numbers come from `stages.evaluation.metrics`. Non-finite numbers and reversed predicted segments are
bad input: they would otherwise match or rank in ways that make the score meaningless.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from stages.core.errors import UserError
from stages.core.files import aliased_output, atomic_output, ensure_writable_dir, write_json
from stages.core.plots import pyplot
from stages.core.workdir import output_path
from stages.data.annotations import load_annotations, read_blocked, refuse_unusable_truth
from stages.evaluation.benchmarks import BENCHMARKS, over_budget, recall_at_multiples
from stages.evaluation.detections import Instances, given_or_settings, read_predictions
from stages.evaluation.metrics import average_recall_vs_proposals, detection_ap, recall_auc

if TYPE_CHECKING:  # the settings models, for type hints only
    from stages.core.settings import Settings

PREFIX = "v_"
TASKS = ("detection", "proposals")
EVAL_PROTOCOLS = ("official", "actionformer")


@dataclass
class EvalRequest:
    """What to score and how. `from_settings` fills what the command line left out."""

    predictions: Path
    ground_truth: Path
    dataset: str = "anet"
    subset: str | None = None  # default: the protocol's (validation for anet, test for thumos)
    blocked: Path | None = None
    task: str = "detection"
    tious: list[float] | None = None  # default: the protocol's
    protocol: str = "official"

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("--dataset", self.dataset, tuple(BENCHMARKS)),
            ("--task", self.task, TASKS),
            ("--protocol", self.protocol, EVAL_PROTOCOLS),
        ):
            if value not in allowed:
                raise UserError(f"{name} {value}: expected one of {', '.join(allowed)}")
        for tiou in self.tious or []:
            if not (math.isfinite(tiou) and 0.0 < tiou <= 1.0):
                raise UserError(f"--tiou {tiou}: a tIoU threshold must be in (0, 1]")
        if self.tious is not None and not self.tious:
            raise UserError("--tiou: give at least one threshold")

    @classmethod
    def from_settings(cls, settings: Settings | None, **given) -> EvalRequest:
        """Values given (not None) win; then the settings (infer.output, data.*, eval.*)."""
        defaults = {}
        if settings is not None:
            d, e = settings.data, settings.eval
            defaults = dict(
                predictions=output_path(settings),
                ground_truth=d.annotations,
                dataset=e.benchmark or d.protocol,
                subset=d.eval_subset,
                blocked=d.blocked,
                task=e.task,
                tious=e.tiou_thresholds,
                protocol=e.protocol,
            )
        return cls(**given_or_settings(given, defaults))


@dataclass
class EvalReport:
    task: str  # detection | proposals
    tious: list[float]
    values: list[float]  # mAP (detection) or recall at AN=100 (proposals) per tIoU
    average: float  # average mAP, or AUC of AR-AN (percent) for proposals
    per_class: dict[str, list[float]] = field(default_factory=dict)  # label -> AP per tIoU
    ar_at: dict[int, float] = field(default_factory=dict)  # proposals: AN -> average recall
    recall_at: dict[str, float] = field(default_factory=dict)  # Ego4D MQ: "R@1x tIoU 0.5" -> recall
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
            **({"recall_at": self.recall_at} if self.recall_at else {}),
            "counts": self.counts,
            "notes": self.notes,
        }


def read_ground_truth(path: Path, subset: str | None, dedup: bool) -> tuple[Instances, list[str], list[str]]:
    """Ground-truth instances of one subset (case-insensitive), the class list in order of first
    appearance (as the official evaluator builds it), and notes about what was filtered."""
    records = load_annotations(path, require_duration=False)
    refuse_unusable_truth(path, records)
    notes: list[str] = []
    subsets = {r.subset for r in records.values() if r.subset is not None}
    if subset is not None and subsets:
        wanted = subset.lower()
        records = {k: r for k, r in records.items() if (r.subset or "").lower() == wanted}
        if not records:
            raise UserError(f"{path}: no video in subset {subset!r} (subsets: {', '.join(sorted(subsets))})")
    elif subset is not None:
        notes.append(f"{path.name} has no 'subset' fields: every video is used")
    videos, segments, labels = [], [], []
    seen: set[tuple] = set()
    dropped = 0
    for video_id, record in records.items():
        for seg in record.segments:
            if dedup:
                key = (video_id, seg.start, seg.end, seg.label)
                if key in seen:
                    dropped += 1
                    continue
                seen.add(key)
            videos.append(video_id)
            segments.append((seg.start, seg.end))
            labels.append(seg.label)
    if dedup:
        notes.append(f"actionformer protocol: {dropped} duplicate ground-truth instance(s) dropped")
    classes = list(dict.fromkeys(labels))
    return Instances(videos, np.array(segments, dtype=float).reshape(-1, 2), labels), classes, notes


def _strip(video_id: str) -> str:
    return video_id[len(PREFIX) :] if video_id.startswith(PREFIX) else video_id


def reconcile_ids(gt: Instances, pred: Instances, blocked: set[str]) -> tuple[set[str], str | None]:
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


def _keep(table: Instances, mask: np.ndarray) -> Instances:
    idx = np.flatnonzero(mask)
    return Instances(
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
    *,
    blocked: Path | None = None,
    task: str = "detection",
    tious: list[float] | None = None,
    protocol: str = "official",
) -> EvalReport:
    """Score `predictions` against `ground_truth` (the arguments of EvalRequest)."""
    return run(
        EvalRequest(
            Path(predictions),
            Path(ground_truth),
            dataset,
            subset,
            blocked=blocked,
            task=task,
            tious=tious,
            protocol=protocol,
        )
    )


def run(request: EvalRequest) -> EvalReport:
    """Score a request; see the module docstring of stages.evaluation.metrics for the semantics."""
    r = request
    bench = BENCHMARKS[r.dataset]
    thresholds = np.asarray(r.tious if r.tious else bench.tious, dtype=float)
    gt, pred, classes, notes = _read_both(r, bench.subset)
    over = over_budget(pred.videos, bench.max_per_video)
    if over:  # scored as given, as the official evaluators score them
        notes.append(
            f"{over} video(s) have more than the {bench.max_per_video} detections {r.dataset} "
            "submissions keep per video (infer.top_k); all are scored"
        )
    gt_video_set = set(gt.videos)
    unpredicted = len(gt_video_set - set(pred.videos))
    if unpredicted:  # missing videos (data.missing: skip) count as misses, as in the official code
        notes.append(f"{unpredicted} of {len(gt_video_set)} ground-truth video(s) have no predictions")
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
        "ground_truth_videos_without_predictions": unpredicted,
        "predictions": len(pred.videos),
    }
    if r.task == "proposals":
        recall, avg_recall, per_video = average_recall_vs_proposals(
            gt_video, gt.segments, pred_video, pred.segments, pred_score=pred.scores, tious=thresholds
        )
        ar_at = {an: float(avg_recall[an - 1]) for an in (1, 5, 10, 50, 100)}
        auc = recall_auc(avg_recall, per_video)
        return EvalReport(
            r.task, thresholds.tolist(), recall[:, -1].tolist(), auc, ar_at=ar_at, counts=counts, notes=notes
        )
    report = _detection_report(
        r.task, thresholds, gt, pred, classes=classes, counts=counts, notes=notes, video_code=video_code
    )
    if bench.recall_at:  # Ego4D MQ: recall at 1x and 5x each (clip, class)'s ground-truth count
        report.recall_at = recall_at_multiples(gt, pred, tious=bench.recall_at[0], ranks=bench.recall_at[1])
    return report


def _read_both(r: EvalRequest, default_subset: str) -> tuple[Instances, Instances, list[str], list[str]]:
    """Ground truth and predictions of a request, without the blocked videos; the classes and notes."""
    gt, classes, notes = read_ground_truth(
        r.ground_truth, r.subset or default_subset, r.protocol == "actionformer"
    )
    if not gt.videos:
        raise UserError(f"{r.ground_truth}: no ground-truth instance in the selected subset")
    pred = read_predictions(r.predictions)
    blocked_ids = read_blocked(r.blocked) if r.blocked else set()
    blocked_ids, note = reconcile_ids(gt, pred, blocked_ids)
    if note:
        notes.append(note)
    if blocked_ids:
        n_gt_videos = len(set(gt.videos))
        gt = _keep(gt, np.array([v not in blocked_ids for v in gt.videos], dtype=bool))
        pred = _keep(pred, np.array([v not in blocked_ids for v in pred.videos], dtype=bool))
        notes.append(f"blocked list: {n_gt_videos - len(set(gt.videos))} ground-truth video(s) left out")
        if not gt.videos:  # the same emptiness as a subset without instances
            raise UserError(
                f"{r.ground_truth}: no ground-truth instance in the selected subset once "
                f"{r.blocked}'s videos are left out"
            )
    if not pred.videos:
        raise UserError(f"{r.predictions}: no prediction left to score")
    return gt, pred, classes, notes


def _detection_report(
    task: str,
    thresholds: np.ndarray,
    gt: Instances,
    pred: Instances,
    *,
    classes: list[str],
    counts: dict,
    notes: list[str],
    video_code: dict[str, int],
) -> EvalReport:
    """mAP per tIoU and AP per class; predictions of labels absent from the ground truth are dropped."""
    class_code = {c: i for i, c in enumerate(classes)}
    known = np.array([label in class_code for label in pred.labels], dtype=bool)
    if not known.all():
        unknown = sorted({label for label in pred.labels if label not in class_code})
        shown = ", ".join(repr(u) for u in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        notes.append(
            f"{int((~known).sum())} prediction(s) with {len(unknown)} label(s) absent from the ground truth "
            f"were ignored: {shown}"
        )
        pred = _keep(pred, known)
    ap = detection_ap(
        np.array([video_code[v] for v in gt.videos], dtype=np.int64),
        gt.segments,
        np.array([class_code[c] for c in gt.labels], dtype=np.int64),
        np.array([video_code[v] for v in pred.videos], dtype=np.int64),
        pred_segments=pred.segments,
        pred_label=np.array([class_code[c] for c in pred.labels], dtype=np.int64),
        pred_score=pred.scores,
        n_classes=len(classes),
        tious=thresholds,
    )
    m_ap = ap.mean(axis=1)
    per_class = {c: ap[:, i].tolist() for i, c in enumerate(classes)}
    return EvalReport(
        task,
        thresholds.tolist(),
        m_ap.tolist(),
        float(m_ap.mean()),
        per_class=per_class,
        counts=counts,
        notes=notes,
    )


def check_outputs(request: EvalRequest, *, json_out: Path | None, plot: Path | None) -> None:
    """Before anything is read: no output names an input (or the other output), and each output's
    folder can be written, so that neither is left half done by the other's failure."""
    inputs = {
        "--predictions": request.predictions,
        "--ground-truth": request.ground_truth,
        "--blocked": request.blocked,
    }
    if why := aliased_output({"--json": json_out, "--plot": plot}, inputs):
        raise UserError(why)
    for path in (json_out, plot):
        if path is not None:
            try:
                ensure_writable_dir(Path(path).parent)
            except OSError as exc:
                raise UserError(f"{path}: cannot write: {exc.strerror or exc.__class__.__name__}") from None


def save_json(report: EvalReport, path: Path) -> None:
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_json(path, report.as_dict())
    except OSError as exc:
        raise UserError(f"{path}: cannot write: {exc.strerror or exc.__class__.__name__}") from None


def plot(report: EvalReport, path: Path, per_class: bool = False) -> None:
    """mAP (or recall) against tIoU; with `per_class`, a second panel of per-class average AP."""
    plt = pyplot()

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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(path) as tmp:
            fig.savefig(tmp, dpi=120, format="png")
    except OSError as exc:
        raise UserError(f"{path}: cannot write: {exc.strerror or exc.__class__.__name__}") from None
    finally:
        plt.close(fig)
