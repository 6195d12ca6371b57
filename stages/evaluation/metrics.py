"""Temporal action detection metrics, numpy only, with the semantics of the official ActivityNet
evaluator (activitynet/ActivityNet Evaluation/eval_detection.py and eval_proposal.py).

The official code loops over every prediction and every threshold in Python. Here the greedy
matching is vectorised: (class, video) pairs are independent, so the k-th prediction of every pair
is matched at once, for all thresholds together. Every floating-point expression that decides a
result (tIoU, sort orders, cumulative sums, interpolated AP, means) is written the same way as in
the official code, so the numbers agree to the last bit, not just approximately.

Official quirks kept on purpose (they change numbers):
- predictions are ranked with `scores.argsort()[::-1]` (ties in that order);
- a prediction takes the unmatched ground truth of its video and class with the highest tIoU, in
  `tiou.argsort()[::-1]` order; duplicate ground-truth instances are kept;
- one departure, on purpose: where the union is empty the official code divides 0 by 0 and its
  NaN passes every threshold, so a reversed ground truth ([9, 2], which every reader now refuses)
  matched anything of its length at 100%, and a zero-length prediction any zero-length truth of its
  video. Here tIoU is never NaN: an empty union is 0, except that for detection a zero-length
  truth predicted at the very same instant is a match (1), as the official code matches it
  (ActivityNet's few zero-length instances, in the official sample submission that scores 1
  everywhere); for proposals, as the official proposal code, it never counts (its NaN reaches no
  threshold);
- a class with no predictions has AP 0; mAP averages over the classes of the ground truth.
"""

from __future__ import annotations

import numpy as np


def _tiou(p: np.ndarray, g: np.ndarray, same_instant: float = 1.0) -> np.ndarray:
    """tIoU of broadcastable [..., 2] predictions and truths, written as the official code writes it
    (the same operations in the same order, so the same bits); never NaN: an empty union is
    `same_instant` where the two are the same instant, else 0 (the module's one departure)."""
    inter = (np.minimum(p[..., 1], g[..., 1]) - np.maximum(p[..., 0], g[..., 0])).clip(0)
    union = (g[..., 1] - g[..., 0]) + (p[..., 1] - p[..., 0]) - inter
    same = (p[..., 0] == g[..., 0]) & (p[..., 1] == g[..., 1])
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter.astype(float) / union, np.where(same, same_instant, 0.0))


def pairwise_tiou(predictions: np.ndarray, truths: np.ndarray, same_instant: float = 1.0) -> np.ndarray:
    """tIoU of every prediction [N,2] with every ground truth [M,2] -> [N,M]."""
    return _tiou(predictions[:, None, :], truths[None, :, :], same_instant)


def interpolated_ap(precision: np.ndarray, recall: np.ndarray) -> float:
    """VOC-style AP: area under the precision/recall curve made monotone from the right."""
    mprec = np.hstack([[0], precision, [0]])
    mrec = np.hstack([[0], recall, [1]])
    mprec = np.maximum.accumulate(mprec[::-1])[::-1]
    idx = np.where(mrec[1:] != mrec[:-1])[0] + 1
    return float(np.sum((mrec[idx] - mrec[idx - 1]) * mprec[idx]))


def _groups(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stable grouping of integer keys: (order, unique keys, start offsets of each group in `order`)."""
    order = np.argsort(keys, kind="stable")
    uniq, starts = np.unique(keys[order], return_index=True)
    return order, uniq, starts


def score_ranks(labels: np.ndarray, scores: np.ndarray, n_classes: int) -> list[np.ndarray]:
    """Per class, prediction indices best first, ranked exactly as the official code ranks them."""
    ranked = []
    for c in range(n_classes):
        idx = np.flatnonzero(labels == c)
        ranked.append(idx[scores[idx].argsort()[::-1]])
    return ranked


def match_detections(
    gt_pair: np.ndarray,
    gt_segments: np.ndarray,
    pred_pair: np.ndarray,
    pred_segments: np.ndarray,
    *,
    pred_rank: np.ndarray,
    tious: np.ndarray,
) -> np.ndarray:
    """Greedy matching -> the ground-truth index each prediction matched [n_thresholds, n_predictions]
    (-1: none). `*_pair` is one integer per instance naming its (class, video) pair; predictions of
    a pair are matched in `pred_rank` order (lower first) against the pair's ground truth in file order."""
    n_thr, n_pred = len(tious), len(pred_pair)
    matched = np.full((n_thr, n_pred), -1, dtype=np.int64)
    if n_pred == 0 or len(gt_pair) == 0:
        return matched
    gt_order, gt_keys, gt_starts = _groups(gt_pair)
    gt_counts = np.diff(np.append(gt_starts, len(gt_order)))
    where = np.searchsorted(gt_keys, pred_pair)
    where = np.minimum(where, len(gt_keys) - 1)
    has_gt = gt_keys[where] == pred_pair
    n_gt_of = np.where(has_gt, gt_counts[where], 0)

    # Every prediction's ground-truth candidates, best tIoU first; padding sorts last as -inf.
    width = int(n_gt_of.max())
    dummy = len(gt_pair)  # a never-locked slot for padding
    cand_tiou = np.full((n_pred, max(width, 1)), -np.inf)
    cand_gt = np.full((n_pred, max(width, 1)), dummy)
    for g in np.unique(n_gt_of[n_gt_of > 0]):
        rows = np.flatnonzero(n_gt_of == g)
        gt_idx = gt_order[gt_starts[where[rows]][:, None] + np.arange(g)]  # [rows, g] in file order
        tiou = _tiou(pred_segments[rows][:, None, :], gt_segments[gt_idx])  # [rows, g]
        desc = tiou.argsort(axis=-1)[:, ::-1]
        cand_tiou[rows, :g] = np.take_along_axis(tiou, desc, axis=-1)
        cand_gt[rows, :g] = np.take_along_axis(gt_idx, desc, axis=-1)

    # Position of each prediction within its pair, by rank; step k matches every pair's k-th at once.
    with_gt = np.flatnonzero(has_gt)
    order = with_gt[np.lexsort((pred_rank[with_gt], pred_pair[with_gt]))]
    pair_sorted = pred_pair[order]
    first = np.r_[True, pair_sorted[1:] != pair_sorted[:-1]]
    start_of = np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))
    step = np.arange(len(order)) - start_of

    locked = np.zeros((n_thr, dummy + 1), dtype=bool)
    thr = tious[:, None, None]
    rows_by_step = np.split(order[np.argsort(step, kind="stable")], np.cumsum(np.bincount(step))[:-1])
    for rows in rows_by_step:
        ts, gi = cand_tiou[rows], cand_gt[rows]  # [A, W]
        below = ts[None] < thr  # NaN -> False, padding -> True
        stop = below | ~locked[:, gi]  # the official inner loop stops here
        hit_at = stop.argmax(axis=-1)  # [T, A]
        found = np.take_along_axis(stop, hit_at[..., None], axis=-1)[..., 0]
        hit = found & ~np.take_along_axis(below, hit_at[..., None], axis=-1)[..., 0]
        t_idx, a_idx = np.nonzero(hit)
        taken = gi[a_idx, hit_at[t_idx, a_idx]]
        locked[t_idx, taken] = True
        matched[t_idx, rows[a_idx]] = taken
    return matched


def detection_ap(
    gt_video: np.ndarray,
    gt_segments: np.ndarray,
    gt_label: np.ndarray,
    pred_video: np.ndarray,
    *,
    pred_segments: np.ndarray,
    pred_label: np.ndarray,
    pred_score: np.ndarray,
    n_classes: int,
    tious: np.ndarray,
) -> np.ndarray:
    """Average precision [n_thresholds, n_classes]. Videos and labels are integer codes; every
    prediction label must be < n_classes (drop unknown labels before)."""
    n_videos = int(max(gt_video.max(initial=-1), pred_video.max(initial=-1))) + 1
    ranked = score_ranks(pred_label, pred_score, n_classes)
    rank = np.empty(len(pred_label), dtype=np.int64)
    for idx in ranked:
        rank[idx] = np.arange(len(idx))
    tp = (
        match_detections(
            gt_label.astype(np.int64) * n_videos + gt_video,
            gt_segments,
            pred_label.astype(np.int64) * n_videos + pred_video,
            pred_segments,
            pred_rank=rank,
            tious=tious,
        )
        >= 0
    )
    npos = np.bincount(gt_label, minlength=n_classes)
    ap = np.zeros((len(tious), n_classes))
    for c, idx in enumerate(ranked):
        if len(idx) == 0 or npos[c] == 0:
            continue
        ap[:, c] = voc_ap(tp[:, idx], int(npos[c]))
    return ap


def voc_ap(tp: np.ndarray, npos: int) -> np.ndarray:
    """AP [T] of true-positive flags [T, n] ranked best first, against `npos` ground-truth
    instances, as the official code computes it (n > 0, npos > 0)."""
    tp_c = tp.astype(float)
    tp_cumsum = np.cumsum(tp_c, axis=1).astype(np.float64)
    fp_cumsum = np.cumsum(1.0 - tp_c, axis=1).astype(np.float64)
    recall = tp_cumsum / float(npos)
    precision = tp_cumsum / (tp_cumsum + fp_cumsum)
    return np.array([interpolated_ap(precision[t], recall[t]) for t in range(len(tp_c))])


def average_recall_vs_proposals(
    gt_video: np.ndarray,
    gt_segments: np.ndarray,
    pred_video: np.ndarray,
    pred_segments: np.ndarray,
    *,
    pred_score: np.ndarray,
    tious: np.ndarray,
    max_avg_proposals: float = 100,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Recall [n_thresholds, 100], average recall [100] and proposals per video [100], as in the
    official eval_proposal.py: each video keeps its top `ratio` share of proposals, then recall is
    read at 1%..100% of that budget."""
    videos = gt_video[np.sort(np.unique(gt_video, return_index=True)[1])]  # order of first appearance
    ratio = max_avg_proposals * float(len(videos)) / len(pred_video)
    pred_order, pred_keys, pred_starts = _groups(pred_video)
    pred_ends = np.append(pred_starts[1:], len(pred_order))
    scores: list[np.ndarray] = []  # per video: tIoU [n_gt, n_kept_proposals]
    total = 0
    for v in videos:
        gts = gt_segments[gt_video == v]
        k = np.searchsorted(pred_keys, v)
        if k == len(pred_keys) or pred_keys[k] != v:
            scores.append(np.zeros((len(gts), 1)))
            continue
        idx = pred_order[pred_starts[k] : pred_ends[k]]  # file order
        props = pred_segments[idx][pred_score[idx].argsort()[::-1]]
        n_keep = min(int(props.shape[0] * ratio), props.shape[0])
        total += n_keep
        scores.append(pairwise_tiou(props[:n_keep], gts, same_instant=0.0).T)  # as the official code
    if total == 0:
        raise ValueError("no proposal survives the per-video budget")
    pcn = np.arange(1, 101) / 100.0 * (max_avg_proposals * float(len(videos)) / total)
    positives = np.array([s.shape[0] for s in scores], dtype=float)
    matches = np.empty((len(tious), len(scores), len(pcn)))
    never = np.iinfo(np.int64).max
    for i, s in enumerate(scores):
        hit = s[None] >= tious[:, None, None]  # [T, n_gt, n_props]
        first_hit = np.where(hit.any(axis=2), hit.argmax(axis=2), never)  # [T, n_gt]
        n_props = np.minimum((s.shape[1] * pcn).astype(int), s.shape[1])  # [100]
        matches[:, i] = (first_hit[:, None, :] < n_props[None, :, None]).sum(axis=2)
    recall = matches.sum(axis=1) / positives.sum()
    return recall, recall.mean(axis=0), pcn * (float(total) / len(videos))


def recall_auc(avg_recall: np.ndarray, proposals_per_video: np.ndarray) -> float:
    """Area under the AR-AN curve in percent of the largest AN, as the official code reports it."""
    return 100.0 * float(np.trapezoid(avg_recall, proposals_per_video)) / proposals_per_video[-1]
