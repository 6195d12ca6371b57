"""DETAD's analyses of a detector's errors (Alwassel, Caba Heilbron, Escorcia, Ghanem: "Diagnosing
Error in Temporal Action Detectors", ECCV 2018), with DETAD's definitions, numpy only.

- **mAP_N**: AP with precision normalised to the average number of instances per class (`avg`):
  precision = recall * avg / (recall * avg + false positives), so classes with many and few
  instances weigh alike. Matching is the official evaluator's (`metrics.match_detections`).
- **False-positive profile** (on each class's top 10·G predictions, G its ground-truth count): every
  prediction that matched nothing at a tIoU is a double detection (tIoU >= t with a ground truth of
  its label, already matched), a wrong label (tIoU >= t, another label), a localization error
  (0.1 <= tIoU < t, its label), a confusion (0.1 <= tIoU < t, another label) or background (tIoU <
  0.1, or a video without ground truth), judged against the ground truth of highest tIoU in its
  video; shares per rank chunk k·G and over all, and the mAP_N gained by removing each type.
- **Sensitivity**: mAP_N per bucket of a ground-truth characteristic (the predictions that matched
  the bucket's instances, or nothing); **false negatives**: the share of each bucket's instances
  missed, after discarding predictions whose normalised precision is <= 0.05 (DETAD's setting).

Characteristics come from the annotation file when it carries them (DETAD's published files), else
from the ground truth as DETAD computed them: length (end - start, seconds), coverage (length /
video duration), number of instances (all instances of the video). Ground truth of zero length,
or covering more than its video, is left out first, as DETAD leaves it out.

Where this differs from DETAD's code (which needs pandas and a Python 2-era stack): a class without
predictions scores AP 0 where DETAD's sensitivity analysis raises KeyError; the predictions of a
video without ground truth are all background, where DETAD compares all but the first with the
previous video's ground truth; ties in score are ranked as the official evaluator ranks them
(DETAD's pandas sorts may order tied predictions otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stages.evaluation.metrics import interpolated_ap, match_detections, pairwise_tiou, score_ranks

ERROR_TYPES = ("true_positive", "double_detection", "wrong_label", "localization", "confusion", "background")
TRUE_POSITIVE, DOUBLE, WRONG_LABEL, LOCALIZATION, CONFUSION, BACKGROUND = range(6)
MIN_TIOU = 0.1  # below it, a false positive is background
LIMIT_FACTOR = 10  # the profile looks at each class's top 10·G predictions
FN_MIN_PRECISION = 0.05  # the false-negative analysis discards predictions below this normalised precision

_SIZES = ["XS", "S", "M", "L", "XL"]
# DETAD's buckets: (edges, names); a value v is in bucket i when edges[i] < v <= edges[i + 1] (the
# lowest edge included), as pandas.cut(include_lowest=True) bins it
BINS: dict[str, dict[str, tuple[np.ndarray, list[str]]]] = {
    "anet": {
        "context-size": (np.arange(-1, 7), ["0", "1", "2", "3", "4", "5", "6"]),
        "context-distance": (np.arange(-1, 4), ["Inf", "N", "M", "F"]),
        "agreement": (np.linspace(0, 1.0, 6), ["XW", "W", "M", "H", "XH"]),
        "coverage": (np.linspace(0, 1.0, 6), _SIZES),
        "length": (np.array([0, 30, 60, 120, 180, np.inf]), _SIZES),
        "num-instances": (np.array([-1, 1, 4, 8, np.inf]), _SIZES[:4]),
    },
    "thumos": {
        "coverage": (np.array([0, 0.02, 0.04, 0.06, 0.08, 1]), _SIZES),
        "length": (np.array([0, 3, 6, 12, 18, np.inf]), _SIZES),
        "num-instances": (np.array([-1, 1, 40, 80, np.inf]), _SIZES[:4]),
    },
}
COMPUTED = ("coverage", "length", "num-instances")  # from the ground truth when the file lacks them
TIOUS = {"anet": np.linspace(0.5, 0.95, 10), "thumos": np.array([0.5])}  # DETAD's (THUMOS: 0.5 alone)


@dataclass
class Truth:
    """The ground truth DETAD analyses: instances (video and class codes, segments) and the bucket
    of each instance for each characteristic (-1: in none)."""

    video: np.ndarray  # [G] int
    segments: np.ndarray  # [G, 2]
    label: np.ndarray  # [G] int
    n_classes: int
    buckets: dict[str, np.ndarray]  # characteristic -> [G] bucket index

    @property
    def average_instances(self) -> float:
        """DETAD's `avg`: instances kept over the classes of the file (before anything was left out)."""
        return len(self.label) / self.n_classes


@dataclass
class Predictions:
    video: np.ndarray  # [P] int (the truth's codes; videos without ground truth get codes past them)
    segments: np.ndarray  # [P, 2]
    label: np.ndarray  # [P] int
    score: np.ndarray  # [P]
    names: np.ndarray | None = None  # video code -> its id (object array): DETAD orders videos by id

    def take(self, idx: np.ndarray) -> Predictions:
        taken = (self.video[idx], self.segments[idx], self.label[idx], self.score[idx])
        return Predictions(*taken, names=self.names)


def bucket(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The bucket of each value, -1 outside the edges or NaN (pandas.cut, right-closed, lowest edge in)."""
    values = np.asarray(values, dtype=float)
    idx = np.searchsorted(edges, values, side="left") - 1
    idx = np.where(values == edges[0], 0, idx)
    return np.where(np.isnan(values) | (idx < 0) | (idx >= len(edges) - 1), -1, idx)


def computed_characteristics(segments: np.ndarray, video: np.ndarray, durations: np.ndarray) -> dict:
    """Length, coverage and number of instances of each instance, as DETAD computed them
    (`durations`: each instance's video duration)."""
    length = segments[:, 1] - segments[:, 0]
    counts = np.bincount(video)[video]
    with np.errstate(divide="ignore", invalid="ignore"):
        coverage = length / durations
    return {"length": length, "coverage": coverage, "num-instances": counts.astype(float)}


def pandas_descending(scores: np.ndarray) -> np.ndarray:
    """The order pandas' `sort_values(ascending=False)` gives, ties as it ties them: its nargsort
    argsorts the reversed scores with numpy's quicksort and reverses the result. DETAD's code ranks so
    where it sorts a DataFrame (the sensitivity and the score-range profile); elsewhere it ranks as
    the official evaluator, `argsort()[::-1]` (`_ranked`). Tied scores (four decimals, as many
    submissions write them) then give DETAD's figures exactly."""
    backwards = np.arange(len(scores))[::-1]
    return backwards[np.asarray(scores)[::-1].argsort(kind="quicksort")][::-1]


def _ranked(pred: Predictions, n_classes: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Per class the predictions best first (the official ranking), and each one's rank."""
    ranked = score_ranks(pred.label, pred.score, n_classes)
    rank = np.empty(len(pred.label), dtype=np.int64)
    for idx in ranked:
        rank[idx] = np.arange(len(idx))
    return ranked, rank


def match(truth: Truth, pred: Predictions, tious: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """(per class the predictions best first, the truth index each prediction matched [T, P] or -1)."""
    ranked, rank = _ranked(pred, truth.n_classes)
    n_videos = int(max(truth.video.max(initial=-1), pred.video.max(initial=-1))) + 1
    matched = match_detections(
        truth.label.astype(np.int64) * n_videos + truth.video,
        truth.segments,
        pred.label.astype(np.int64) * n_videos + pred.video,
        pred.segments,
        pred_rank=rank,
        tious=tious,
    )
    return ranked, matched


def _normalised_ap(tp: np.ndarray, npos: int, avg: float) -> np.ndarray:
    """AP [T] of true-positive flags [T, n] (best first), precision normalised to `avg` instances."""
    tp_cumsum = np.cumsum(tp, axis=1).astype(float)
    fp_cumsum = np.cumsum(1 - tp, axis=1).astype(float)
    recall = tp_cumsum / npos
    precision = recall * avg / (recall * avg + fp_cumsum)
    return np.array([interpolated_ap(precision[t], recall[t]) for t in range(len(tp))])


def normalised_ap(
    truth: Truth, pred: Predictions, tious: np.ndarray, *, min_precision: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """(AP_N [T, C], matched truth [T, P]); with `min_precision` > 0, predictions whose normalised
    precision is at or below it are discarded as DETAD discards them (false positives, unmatched)."""
    ranked, matched = match(truth, pred, tious)
    npos = np.bincount(truth.label, minlength=truth.n_classes)
    avg = truth.average_instances
    ap = np.zeros((len(tious), truth.n_classes))
    for c, idx in enumerate(ranked):
        if len(idx) == 0 or npos[c] == 0:
            continue
        tp = (matched[:, idx] >= 0).astype(float)
        if min_precision > 0:
            recall = np.cumsum(tp, axis=1) / npos[c]
            precision = recall * avg / (recall * avg + np.cumsum(1 - tp, axis=1))
            discard = precision <= min_precision
            tp[discard] = 0
            sub = matched[:, idx]
            sub[discard] = -1
            matched[:, idx] = sub
        ap[:, c] = _normalised_ap(tp, int(npos[c]), avg)
    return ap, matched


def top_predictions(truth: Truth, pred: Predictions, factor: int = LIMIT_FACTOR) -> np.ndarray:
    """DETAD's limit: for each class with ground truth, its top int(G * factor) predictions by score
    (ties: the earlier in the file), classes in code order, each best first."""
    npos = np.bincount(truth.label, minlength=truth.n_classes)
    keep = []
    for c in np.flatnonzero(npos):
        idx = np.flatnonzero(pred.label == c)
        order = idx[np.argsort(-pred.score[idx], kind="stable")]
        keep.append(order[: int(npos[c] * factor)])
    return np.concatenate(keep) if keep else np.zeros(0, dtype=np.int64)


def error_types(truth: Truth, pred: Predictions, matched: np.ndarray, tious: np.ndarray) -> np.ndarray:
    """The type of every prediction at every tIoU [T, P] (ERROR_TYPES' codes): true positive where it
    matched, else judged against the ground truth of its video with the highest tIoU (the first of
    equals, any label). As DETAD's code judges them: it walks the unmatched predictions sorted by
    video id (pandas, `_in_id_order`) and fetches a video's ground truth when the video changes; a
    video without ground truth gives its first prediction a background error and leaves the ground
    truth fetched before in place, so its other predictions are judged against the previous
    video's instances (`_judged_against`)."""
    has_truth = np.zeros(int(max(truth.video.max(initial=-1), pred.video.max(initial=-1))) + 1, dtype=bool)
    has_truth[truth.video] = True
    own = _best_overlap(truth, pred, np.where(has_truth[pred.video], pred.video, -1))
    out = np.empty((len(tious), len(pred.label)), dtype=np.int64)
    for t, thr in enumerate(tious):
        top_tiou, top_label = own[0].copy(), own[1].copy()
        unmatched = _in_id_order(pred, np.flatnonzero(matched[t] < 0))
        against = _judged_against(pred.video[unmatched], has_truth)
        stale = unmatched[(against >= 0) & ~has_truth[pred.video[unmatched]]]
        if len(stale):
            judged = np.full(len(pred.label), -1)
            judged[unmatched] = against
            sub = _best_overlap(truth, pred.take(stale), judged[stale])
            top_tiou[stale], top_label[stale] = sub
        same = top_label == pred.label
        near = np.where(top_tiou >= MIN_TIOU, np.where(same, LOCALIZATION, CONFUSION), BACKGROUND)
        kind = np.where(top_tiou >= thr, np.where(same, DOUBLE, WRONG_LABEL), near)
        out[t] = np.where(matched[t] >= 0, TRUE_POSITIVE, kind)
    return out


def _in_id_order(pred: Predictions, idx: np.ndarray) -> np.ndarray:
    """`idx` sorted by video id as DETAD's `sort_values(by='video-id')` sorts them (pandas without
    pyarrow: numpy's quicksort of the ids as objects, ties as it leaves them)."""
    if pred.names is None:
        return idx[np.argsort(pred.video[idx], kind="stable")]
    return idx[np.asarray(pred.names[pred.video[idx]], dtype=object).argsort(kind="quicksort")]


def _judged_against(videos: np.ndarray, has_truth: np.ndarray) -> np.ndarray:
    """For predictions in DETAD's walking order, the video whose ground truth judges each: its own;
    for a video without ground truth, -1 (a background error) for its first prediction and the last
    video with ground truth before it for the others (-1 where there is none)."""
    own = has_truth[videos]
    last = np.maximum.accumulate(np.where(own, np.arange(len(videos)), -1)) if len(videos) else videos
    first = np.r_[True, videos[1:] != videos[:-1]] if len(videos) else own
    before = np.where(last >= 0, videos[np.maximum(last, 0)], -1)
    return np.where(own, videos, np.where(first, -1, before))


def _best_overlap(truth: Truth, pred: Predictions, against: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each prediction's highest tIoU with the instances of video `against` (-1: none) and that
    instance's label (the first of equals, in file order)."""
    top_tiou = np.full(len(pred.label), -np.inf)
    top_label = np.full(len(pred.label), -1)
    order = np.argsort(truth.video, kind="stable")
    videos, starts = np.unique(truth.video[order], return_index=True)
    ends = np.append(starts[1:], len(order))
    where = np.searchsorted(videos, against)
    has = (against >= 0) & (where < len(videos)) & (videos[np.minimum(where, len(videos) - 1)] == against)
    for v in np.unique(where[has]):
        rows = np.flatnonzero(has & (where == v))
        gts = order[starts[v] : ends[v]]  # file order
        tiou = pairwise_tiou(pred.segments[rows], truth.segments[gts])
        best = tiou.argmax(axis=1)
        top_tiou[rows] = tiou[np.arange(len(rows)), best]
        top_label[rows] = truth.label[gts[best]]
    return top_tiou, top_label


def shares(types: np.ndarray) -> dict[str, float]:
    """The share of each type among predictions [T, n], averaged over the tIoUs (DETAD's 'avg')."""
    if types.shape[1] == 0:
        return dict.fromkeys(ERROR_TYPES, 0.0)
    counts = np.stack([(types == code).sum(axis=1) for code in range(len(ERROR_TYPES))])  # [6, T]
    return {name: float(counts[code].mean() / types.shape[1]) for code, name in enumerate(ERROR_TYPES)}


def profile(truth: Truth, pred: Predictions, types: np.ndarray, chunks: int = LIMIT_FACTOR) -> dict:
    """Shares of each type in each class's k-th chunk of G predictions by score (k = 1..chunks), as
    DETAD's figure shows them ('1G' .. '10G')."""
    npos = np.bincount(truth.label, minlength=truth.n_classes)
    by_chunk: list[list[np.ndarray]] = [[] for _ in range(chunks)]
    order = pandas_descending(pred.score)  # all classes at once, as DETAD sorts its frame
    for c in np.flatnonzero(npos):
        mine = order[pred.label[order] == c]
        for k in range(chunks):
            by_chunk[k].append(mine[k * npos[c] : (k + 1) * npos[c]])
    return {f"{k + 1}G": shares(types[:, np.concatenate(parts)]) for k, parts in enumerate(by_chunk)}


def gains(truth: Truth, pred: Predictions, matched: np.ndarray, *, types: np.ndarray, base: float) -> dict:
    """The average mAP_N gained by removing each error type's predictions (DETAD's `ap_gain`)."""
    ranked, _ = _ranked(pred, truth.n_classes)
    npos = np.bincount(truth.label, minlength=truth.n_classes)
    avg, out = truth.average_instances, {}
    for code in range(1, len(ERROR_TYPES)):
        ap = np.zeros((len(types), truth.n_classes))
        for c, idx in enumerate(ranked):
            for t in range(len(types)):
                keep = idx[types[t, idx] != code]
                tp = (matched[t, keep] >= 0).astype(float)[None]
                ap[t, c] = _normalised_ap(tp, int(npos[c]), avg)[0] if npos[c] else 0.0
        out[ERROR_TYPES[code]] = float(ap.mean() - base)
    return out


def sensitivity(truth: Truth, pred: Predictions, matched: np.ndarray, names: dict[str, list[str]]) -> dict:
    """Average mAP_N per bucket of each characteristic: per class, the predictions that matched an
    instance of the bucket or nothing at every tIoU; None for a bucket without instances. Each
    class's predictions ranked as DETAD's sensitivity ranks them (pandas, `pandas_descending`)."""
    ranked = []
    for c in range(truth.n_classes):
        idx = np.flatnonzero(pred.label == c)
        ranked.append(idx[pandas_descending(pred.score[idx])])
    avg, out = truth.average_instances, {}
    for characteristic, labels in names.items():
        of = truth.buckets[characteristic]
        row = {}
        for b, name in enumerate(labels):
            in_bucket = of == b
            per_class = np.full(truth.n_classes, np.nan)
            for c, idx in enumerate(ranked):
                n = int((in_bucket & (truth.label == c)).sum())
                if n == 0:
                    continue
                m = matched[:, idx]
                ok = ((m < 0) | in_bucket[np.maximum(m, 0)]).all(axis=0)
                tp = (m[:, ok] >= 0).astype(float)
                per_class[c] = _normalised_ap(tp, n, avg).mean() if len(idx) else 0.0
            row[name] = float(np.nanmean(per_class)) if np.isfinite(per_class).any() else None
        out[characteristic] = row
    return out


def false_negatives(truth: Truth, matched: np.ndarray, names: dict[str, list[str]]) -> dict:
    """The share of each bucket's instances no prediction matched, averaged over the tIoUs (buckets
    with instances only)."""
    missed = np.stack([~np.isin(np.arange(len(truth.label)), m[m >= 0]) for m in matched])  # [T, G]
    return {
        characteristic: {
            name: float(missed[:, truth.buckets[characteristic] == b].mean())
            for b, name in enumerate(labels)
            if (truth.buckets[characteristic] == b).any()
        }
        for characteristic, labels in names.items()
    }
