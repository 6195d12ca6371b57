"""ETAD post-processing (docs/method.md), pure numpy: boundary-peak filtering, the proposal score,
class-agnostic Gaussian Soft-NMS and fusion with a video-level classifier."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from stages.annotations import read_json
from stages.errors import UserError

# UntrimmedNet (UCF101) class ids of the 20 THUMOS-14 classes, in THUMOS alphabetical order.
THUMOS_UCF101_IDS = (7, 9, 12, 21, 22, 23, 24, 26, 31, 33, 36, 40, 45, 51, 68, 79, 85, 92, 93, 97)


def boundary_mask(p: np.ndarray) -> np.ndarray:
    """Snippets that may be a boundary: above half the maximum, or a strict local peak (neighbours
    outside the video count as 0)."""
    padded = np.concatenate([[0.0], p, [0.0]])
    peak = (p > padded[:-2]) & (p > padded[2:])
    return (p > 0.5 * p.max()) | peak


def candidates(proposals: np.ndarray, iou: np.ndarray, tem: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Proposals [K, 2] (normalised) whose start and end fall on possible boundaries, with their
    score IoU-cls x IoU-reg. tem [2, T] holds the start and end probabilities."""
    t = tem.shape[1]
    start_ok, end_ok = boundary_mask(tem[0]), boundary_mask(tem[1])
    start_ok[0] = True
    end_ok[-1] = True
    s_idx = np.clip((proposals[:, 0] * t).astype(np.int64), 0, t - 1)
    e_idx = np.clip((proposals[:, 1] * t).astype(np.int64), 0, t - 1)
    keep = start_ok[s_idx] & end_ok[e_idx]
    return proposals[keep], (iou[keep, 0] * iou[keep, 1])


def soft_nms(
    segments: np.ndarray, scores: np.ndarray, sigma: float, top_k: int, min_score: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian Soft-NMS as the original: take the best, decay every remaining segment that overlaps
    it (IoU > 0) by exp(-IoU^2 / sigma), repeat until `top_k` are kept or one candidate is left (that
    last one is not kept, as in the original). Returns kept segments and their decayed scores."""
    segs, sc = segments.astype(np.float64), scores.astype(np.float64).copy()
    order = np.argsort(-sc, kind="stable")
    segs, sc = segs[order], sc[order]
    alive = np.ones(len(sc), dtype=bool)
    kept: list[int] = []
    lengths = segs[:, 1] - segs[:, 0]
    while alive.sum() > 1 and len(kept) < top_k:
        best = int(np.flatnonzero(alive)[np.argmax(sc[alive])])
        if sc[best] < min_score:
            break
        kept.append(best)
        alive[best] = False
        inter = np.minimum(segs[best, 1], segs[:, 1]) - np.maximum(segs[best, 0], segs[:, 0])
        iou = inter / (lengths[best] + lengths - inter)
        decay = alive & (iou > 0)
        sc[decay] *= np.exp(-(iou[decay] ** 2) / sigma)
    idx = np.array(kept, dtype=np.int64)
    return segs[idx], sc[idx]


def top_classes(scores: np.ndarray, names: list[str], k: int) -> list[tuple[str, float]]:
    order = np.argsort(-scores, kind="stable")[:k]
    return [(names[i], float(scores[i])) for i in order]


def fuse(segments_s: np.ndarray, scores: np.ndarray, classes: list[tuple[str, float]]) -> list[dict]:
    """One detection per (segment, class): score = proposal score x class score."""
    return [
        {"label": label, "score": float(score * cls_score), "segment": [float(seg[0]), float(seg[1])]}
        for seg, score in zip(segments_s, scores)
        for label, cls_score in classes
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


# A labeller: (video id, the built-in head's class probabilities or None) -> [(label, score)].
Labeller = Callable[[str, np.ndarray | None], list[tuple[str, float]]]


def proposals_only(infer, classes: list[str], has_head: bool) -> Labeller:
    """No classes: every proposal is an 'action' (for proposal evaluation)."""
    return lambda _vid, _probs: [("action", 1.0)]


def from_file(infer, classes: list[str], has_head: bool) -> Labeller:
    """Video-level scores from a CUHK json or an UntrimmedNet npy (infer.classifier_file)."""
    if infer.classifier_file is None:
        raise UserError("infer.classifier is 'file' but infer.classifier_file is not set")
    source = ClassifierFile(infer.classifier_file, classes)
    return lambda vid, _probs: top_classes(source.scores(vid), source.names, infer.top_k_classes)


def from_head(infer, classes: list[str], has_head: bool) -> Labeller:
    """The detector's own video classifier head (model.classifier_head)."""
    if not has_head:
        raise UserError(
            "infer.classifier is 'builtin' but the checkpoint has no classifier head "
            "(train with model.classifier_head: true, or use infer.classifier: file)"
        )
    return lambda _vid, probs: top_classes(probs, classes, infer.top_k_classes)


# The classifiers (`infer.classifier`): (infer settings, class names, has a head) -> Labeller.
CLASSIFIERS: dict[str, Callable[[object, list[str], bool], Labeller]] = {
    "builtin": from_head,
    "file": from_file,
    "none": proposals_only,
}
