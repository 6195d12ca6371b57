"""ETAD post-processing (docs/method.md §7), pure numpy: boundary-peak filtering, the proposal
score, class-agnostic Gaussian Soft-NMS and fusion with a video-level classifier.

Two published forms (POST_PROCESSING, `infer.post_processing`): the original ETAD's, and OpenTAD's
(its C++ Soft-NMS with a minimum score, score voting, non-strict boundary peaks, and on sliding
windows: label each window's detections, then one more class-agnostic Soft-NMS over the video).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stages.core.errors import UserError
from stages.data.annotations import load_annotations, read_json

# UntrimmedNet (UCF101) class ids of the 20 THUMOS-14 classes, in THUMOS alphabetical order.
THUMOS_UCF101_IDS = (7, 9, 12, 21, 22, 23, 24, 26, 31, 33, 36, 40, 45, 51, 68, 79, 85, 92, 93, 97)


def boundary_mask(p: np.ndarray) -> np.ndarray:
    """Snippets that may be a boundary: above half the maximum, or a strict local peak (neighbours
    outside the video count as 0)."""
    padded = np.concatenate([[0.0], p, [0.0]])
    peak = (p > padded[:-2]) & (p > padded[2:])
    return (p > 0.5 * p.max()) | peak


def boundary_mask_opentad(p: np.ndarray) -> np.ndarray:
    """OpenTAD's: above half the maximum, or equal to the maximum of itself and its neighbours
    (a non-strict peak; max_pool1d pads with -inf)."""
    padded = np.concatenate([[-np.inf], p, [-np.inf]])
    return (p > 0.5 * p.max()) | (p >= np.maximum(padded[:-2], padded[2:]))


def candidates(
    proposals: np.ndarray, iou: np.ndarray, tem: np.ndarray, mask: Callable = boundary_mask
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Proposals [K, 2] (normalised) whose start and end fall on possible boundaries, with their
    score IoU-cls x IoU-reg and their rows in `proposals`. tem [2, T] holds the start and end
    probabilities."""
    t = tem.shape[1]
    start_ok, end_ok = mask(tem[0]), mask(tem[1])
    start_ok[0] = True
    end_ok[-1] = True
    s_idx = np.clip((proposals[:, 0] * t).astype(np.int64), 0, t - 1)
    e_idx = np.clip((proposals[:, 1] * t).astype(np.int64), 0, t - 1)
    keep = start_ok[s_idx] & end_ok[e_idx]
    return proposals[keep], (iou[keep, 0] * iou[keep, 1]), np.flatnonzero(keep)


def soft_nms(
    segments: np.ndarray, scores: np.ndarray, sigma: float, top_k: int, *, min_score: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian Soft-NMS as the original: take the best, decay every remaining segment that overlaps
    it (IoU > 0) by exp(-IoU^2 / sigma), repeat until `top_k` are kept or one candidate is left (that
    last one is not kept, as in the original). Returns kept segments, their decayed scores and
    their rows in `segments` (for their labels)."""
    segs, sc = segments.astype(np.float64), scores.astype(np.float64)
    order = np.argsort(-sc, kind="stable")
    segs, live = segs[order], sc[order]  # the decayed scores; -inf once kept
    starts, ends = segs[:, 0].copy(), segs[:, 1].copy()
    lengths = ends - starts
    n = len(live)
    alive = np.ones(n, dtype=bool)
    # each round's arrays written in place (the same operations, so the same numbers): less time
    # than new arrays a round (docs/benchmarks.md, "Fourth round")
    inter, iou, decay = np.empty(n), np.empty(n), np.empty(n, dtype=bool)
    kept: list[int] = []
    kept_scores: list[float] = []
    while n - len(kept) > 1 and len(kept) < top_k:
        best = int(np.argmax(live))  # the first best of those left (no masked copy a round)
        if live[best] < min_score:
            break
        kept.append(best)
        kept_scores.append(live[best])
        live[best], alive[best] = -np.inf, False
        np.minimum(ends[best], ends, out=inter)
        inter -= np.maximum(starts[best], starts, out=iou)
        np.add(lengths[best], lengths, out=iou)
        iou -= inter
        with np.errstate(invalid="ignore"):  # 0 / 0 of two empty segments: NaN, not decayed
            np.divide(inter, iou, out=iou)
        np.greater(iou, 0, out=decay)
        decay &= alive
        np.square(iou, out=iou)  # from here: the decay, exp(-IoU^2 / sigma)
        np.negative(iou, out=iou)
        iou /= sigma
        np.exp(iou, out=iou)
        np.multiply(live, iou, out=live, where=decay)
    idx = np.array(kept, dtype=np.int64)
    return segs[idx], np.array(kept_scores, dtype=np.float64), order[idx]


def soft_nms_opentad(
    segments: np.ndarray,
    scores: np.ndarray,
    sigma: float,
    top_k: int,
    *,
    min_score: float,
    voting: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian Soft-NMS as OpenTAD's C++ op: take the best, decay *every* remaining segment by
    exp(-IoU^2 / sigma) (IoU from the clamped intersection, lengths + 1e-6), drop those that fall
    below `min_score`, repeat; keep at most `top_k`. With `voting` > 0 each kept segment becomes the
    score-weighted mean of the input segments that overlap it with IoU >= voting. Returns segments,
    scores and the input index of each kept one (for its label)."""
    segs, sc = segments.astype(np.float64).reshape(-1, 2), scores.astype(np.float64).copy()
    lengths = segs[:, 1] - segs[:, 0] + 1e-6
    alive = np.ones(len(sc), dtype=bool)
    kept: list[int] = []
    while alive.any() and len(kept) < top_k:  # kept scores only decrease: stopping early is exact
        best = int(np.flatnonzero(alive)[np.argmax(sc[alive])])
        kept.append(best)
        alive[best] = False
        inter = np.maximum(np.minimum(segs[best, 1], segs[:, 1]) - np.maximum(segs[best, 0], segs[:, 0]), 0.0)
        iou = inter / (lengths[best] + lengths - inter)
        sc[alive] *= np.exp(-(iou[alive] ** 2) / sigma)
        alive &= sc >= min_score
    idx = np.array(kept, dtype=np.int64)
    out = segs[idx]
    if voting > 0 and len(idx):
        out = score_voting(out, segs, scores.astype(np.float64), voting)
    return out, sc[idx], idx


def score_voting(kept: np.ndarray, segments: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Each kept segment [N, 2] -> the score-weighted mean of `segments` overlapping it with
    IoU >= threshold (it always overlaps itself)."""
    right = np.minimum(kept[:, None, 1], segments[None, :, 1])
    inter = np.clip(right - np.maximum(kept[:, None, 0], segments[None, :, 0]), 0.0, None)
    union = (kept[:, 1] - kept[:, 0])[:, None] + (segments[:, 1] - segments[:, 0])[None] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        weight = (inter / union >= threshold) * scores[None]
        return (weight @ segments) / weight.sum(axis=1, keepdims=True)


def top_classes(scores: np.ndarray, names: list[str], k: int) -> list[tuple[str, float]]:
    order = np.argsort(-scores, kind="stable")[:k]
    return [(names[i], float(scores[i])) for i in order]


# The classes of each segment: [(label, class score)] per segment (a video-level classifier gives
# every segment of the video the same list; the per-proposal head gives each its own).
SegmentClasses = list[list[tuple[str, float]]]


def fuse(segments_s: np.ndarray, scores: np.ndarray, classes: SegmentClasses) -> list[dict]:
    """One detection per (segment, class of that segment): score = proposal score x class score."""
    return [
        {"label": label, "score": float(score * cls_score), "segment": [float(seg[0]), float(seg[1])]}
        for seg, score, own in zip(segments_s, scores, classes)
        for label, cls_score in own
    ]


class ClassifierFile:
    """External video-level class scores: a CUHK-style JSON {"class": [...], "results": {id: [..]}}
    or an UntrimmedNet .npy [videos, 101] (THUMOS: row int(id[-4:]) - 1, UCF101 columns)."""

    def __init__(self, path: Path, classes: list[str]) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"{self.path}: no such classifier file")
        if self.path.suffix == ".npy":
            try:
                self.matrix = np.load(self.path, allow_pickle=False)
            except (ValueError, OSError, EOFError) as exc:
                raise UserError(f"{self.path}: not a numeric .npy file ({str(exc)[:100]})") from None
            if (
                self.matrix.ndim != 2
                or self.matrix.shape[1] < max(THUMOS_UCF101_IDS)
                or not np.issubdtype(self.matrix.dtype, np.number)
            ):
                raise UserError(f"{self.path}: expected UntrimmedNet scores [videos, 101]")
            if len(classes) != len(THUMOS_UCF101_IDS):
                raise UserError(
                    f"{self.path}: UntrimmedNet scores need the 20 THUMOS classes, got {len(classes)}"
                )
            self.names = classes
            self.json = None
        else:
            data = read_json(self.path, "classifier file")
            if (
                not isinstance(data, dict)
                or not isinstance(data.get("class"), list)
                or not isinstance(data.get("results"), dict)
            ):
                raise UserError(f"{self.path}: expected keys 'class' (a list) and 'results' (CUHK format)")
            self.names, self.json = [str(c) for c in data["class"]], data["results"]

    def scores(self, video_id: str) -> np.ndarray:
        if self.json is None:
            try:
                row = int(video_id[-4:]) - 1
            except ValueError:
                raise UserError(
                    f"{self.path}: cannot index video {video_id!r} (expects ..._NNNN ids)"
                ) from None
            if not 0 <= row < len(self.matrix):
                raise UserError(f"{self.path}: no row for video {video_id!r}")
            return self._checked(self.matrix[row, [i - 1 for i in THUMOS_UCF101_IDS]], video_id)
        for key in (video_id, "v_" + video_id, video_id.removeprefix("v_")):
            if key in self.json:
                try:
                    scores = np.asarray(self.json[key], dtype=np.float64)
                except (TypeError, ValueError):
                    raise UserError(f"{self.path}: video {video_id!r}: scores are not numbers") from None
                if scores.shape != (len(self.names),):
                    raise UserError(f"{self.path}: video {video_id!r}: expected {len(self.names)} scores")
                return self._checked(scores, video_id)
        raise UserError(f"{self.path}: no scores for video {video_id!r}")

    def _checked(self, scores: np.ndarray, video_id: str) -> np.ndarray:
        scores = scores.astype(np.float64)
        if not np.isfinite(scores).all():
            raise UserError(f"{self.path}: video {video_id!r}: class scores are not finite (NaN or inf)")
        return scores


@dataclass(frozen=True)
class Original:
    """The original ETAD: per item boundary filter and Soft-NMS; windows of a video merged by one
    more Soft-NMS before the segments get their classes.

    `item` returns the kept segments, their scores and their rows in the item's proposals; `video`
    takes each item's (segments in seconds, scores, SegmentClasses)."""

    def item(self, inf, proposals, iou, tem) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        segs, scores, rows = candidates(proposals, iou, tem)
        segs, scores, kept = soft_nms(segs, scores, inf.soft_nms_sigma, inf.top_k, min_score=inf.min_score)
        return segs, scores, rows[kept]

    def video(self, inf, parts: list[tuple[np.ndarray, np.ndarray, SegmentClasses]]) -> list[dict]:
        segs = np.concatenate([p[0] for p in parts]).reshape(-1, 2)
        scores = np.concatenate([p[1] for p in parts])
        classes = [own for p in parts for own in p[2]]
        if len(parts) > 1:  # windows: merge those of a video
            segs, scores, kept = soft_nms(
                segs, scores, inf.soft_nms_sigma, inf.top_k, min_score=inf.min_score
            )
            classes = [classes[i] for i in kept]
        return fuse(segs, scores, classes)


@dataclass(frozen=True)
class OpenTAD:
    """OpenTAD's: non-strict peaks, its Soft-NMS with voting per item; each window's segments are
    labelled, then (more than one window) one class-agnostic Soft-NMS with voting over them all;
    segments rounded to 0.01 s and scores to 4 decimals."""

    def item(self, inf, proposals, iou, tem) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        segs, scores, rows = candidates(proposals, iou, tem, boundary_mask_opentad)
        segs, scores, kept = soft_nms_opentad(
            segs, scores, inf.soft_nms_sigma, inf.top_k, min_score=inf.min_score, voting=inf.voting_iou
        )
        return segs, scores, rows[kept]

    def video(self, inf, parts: list[tuple[np.ndarray, np.ndarray, SegmentClasses]]) -> list[dict]:
        detections = [d for segs, scores, classes in parts for d in fuse(segs, scores, classes)]
        if len(parts) > 1 and detections:
            segs = np.array([d["segment"] for d in detections])
            scores = np.array([d["score"] for d in detections])
            segs, scores, idx = soft_nms_opentad(
                segs, scores, inf.soft_nms_sigma, inf.top_k, min_score=inf.min_score, voting=inf.voting_iou
            )
            detections = [
                {**detections[i], "score": float(sc), "segment": [float(seg[0]), float(seg[1])]}
                for i, sc, seg in zip(idx, scores, segs)
            ]
        return [
            {**d, "score": round(d["score"], 4), "segment": [round(x, 2) for x in d["segment"]]}
            for d in detections
        ]


# The post-processing forms (`infer.post_processing`).
POST_PROCESSING: dict[str, Original | OpenTAD] = {"original": Original(), "opentad": OpenTAD()}


# A labeller: (video id, the built-in head's class probabilities or None) -> [(label, score)]. The
# probabilities are the video's (video head) or one proposal's (proposal head).
Labeller = Callable[[str, np.ndarray | None], list[tuple[str, float]]]


def proposals_only(settings, classes: list[str], has_head: bool) -> Labeller:
    """No classes: every proposal is an 'action' (for proposal evaluation)."""
    return lambda _vid, _probs: [("action", 1.0)]


def from_file(settings, classes: list[str], has_head: bool) -> Labeller:
    """Video-level scores from a CUHK json or an UntrimmedNet npy (infer.classifier_file)."""
    infer = settings.infer
    if infer.classifier_file is None:
        raise UserError("infer.classifier is 'file' but infer.classifier_file is not set")
    source = ClassifierFile(infer.classifier_file, classes)
    return lambda vid, _probs: top_classes(source.scores(vid), source.names, infer.top_k_classes)


def from_head(settings, classes: list[str], has_head: bool) -> Labeller:
    """The detector's own classifier head (model.classifier_head): the video's classes, or with the
    per-proposal head (model.classifier: proposal) each proposal's."""
    if not has_head:
        raise UserError(
            "infer.classifier is 'builtin' but the checkpoint has no classifier head "
            "(train with model.classifier_head: true, or use infer.classifier: file)"
        )
    return lambda _vid, probs: top_classes(probs, classes, settings.infer.top_k_classes)


def from_truth(settings, classes: list[str], has_head: bool) -> Labeller:
    """The annotation file's own labels of each video (score 1): a perfect video classifier, so the
    mAP measures localisation alone. A diagnostic (it separates a detector's localisation from its
    classifier's mistakes), never a detection result: it reads the answers."""
    if settings.data.annotations is None:
        raise UserError("infer.classifier is 'truth' but data.annotations is not set")
    records = load_annotations(settings.data.annotations)
    labels = {vid: sorted({s.label for s in r.segments}) for vid, r in records.items()}
    return lambda vid, _probs: [(label, 1.0) for label in labels.get(vid, [])]


# The classifiers (`infer.classifier`): (settings, class names, has a head) -> Labeller.
CLASSIFIERS: dict[str, Callable[[object, list[str], bool], Labeller]] = {
    "builtin": from_head,
    "file": from_file,
    "truth": from_truth,
    "none": proposals_only,
}
