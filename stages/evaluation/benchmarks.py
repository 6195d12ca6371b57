"""The benchmarks `etad eval --dataset` scores, each with its own protocol: tIoU thresholds, the
default subset, and the detections a submission keeps per video (what infer.top_k should be;
`etad eval` scores every detection given, as the official evaluators do, and notes videos over
it). docs/annotations.md has the table."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Benchmark:
    tious: tuple[float, ...]
    subset: str
    max_per_video: int | None = None
    recall_at: tuple[tuple[float, ...], tuple[int, ...]] | None = None  # (tIoUs, multiples): Ego4D's


def _range(low: float, high: float, step: float) -> tuple[float, ...]:
    return tuple(float(x) for x in np.round(np.arange(low, high + step / 2, step), 4))


BENCHMARKS: dict[str, Benchmark] = {
    "anet": Benchmark(tuple(np.linspace(0.5, 0.95, 10)), "validation"),
    "thumos": Benchmark(tuple(np.linspace(0.3, 0.7, 5)), "test"),
    "hacs": Benchmark(tuple(np.linspace(0.5, 0.95, 10)), "validation", 100),
    "fineaction": Benchmark(tuple(np.linspace(0.5, 0.95, 10)), "validation", 100),
    "epic100": Benchmark(_range(0.1, 0.5, 0.1), "validation", 2000),
    "ego4d_mq": Benchmark(_range(0.1, 0.5, 0.1), "val", 2000, ((0.3, 0.5, 0.7), (1, 5))),
    "multithumos": Benchmark(_range(0.1, 0.9, 0.1), "testing", 8000),
    "charades": Benchmark(_range(0.1, 0.9, 0.1), "testing", 1000),
}


def over_budget(videos: list[str], limit: int | None) -> int:
    """How many videos have more than `limit` detections."""
    if limit is None:
        return 0
    counts: dict[str, int] = {}
    for v in videos:
        counts[v] = counts.get(v, 0) + 1
    return sum(n > limit for n in counts.values())


def recall_at_multiples(gt, pred, *, tious: tuple[float, ...], ranks: tuple[int, ...]) -> dict[str, float]:
    """Ego4D Moment Queries' recall (its get_retrieval_performance.py): for each (clip, class), the
    top r·n detections of that class by score (n: the clip's instances of it) retrieve an instance
    when one has tIoU strictly above t with it; the share of instances retrieved, per (r, t).
    `gt`, `pred`: evaluate's Instances."""
    truth: dict[tuple[str, str], list] = {}
    for v, seg, label in zip(gt.videos, gt.segments.tolist(), gt.labels, strict=True):
        truth.setdefault((v, label), []).append(seg)
    guesses: dict[tuple[str, str], list] = {}
    for i, (v, label) in enumerate(zip(pred.videos, pred.labels, strict=True)):
        guesses.setdefault((v, label), []).append(i)
    hits = np.zeros((len(ranks), len(tious)))
    total = 0
    for key, segments in truth.items():
        g = np.array(segments, dtype=float)
        total += len(g)
        rows = np.array(guesses.get(key, []), dtype=np.int64)
        if len(rows) == 0:
            continue
        rows = rows[np.argsort(-pred.scores[rows], kind="stable")]
        p = pred.segments[rows]
        starts, ends = (p[:, None, 0], g[None, :, 0]), (p[:, None, 1], g[None, :, 1])
        inter = np.maximum(0.0, np.minimum(*ends) - np.maximum(*starts))
        hull = np.maximum(0.0, np.maximum(*ends) - np.minimum(*starts))
        with np.errstate(divide="ignore", invalid="ignore"):
            overlap = inter / hull  # Ego4D's: intersection over the hull (the union where they meet)
        for a, r in enumerate(ranks):
            top = overlap[: r * len(g)]
            for b, t in enumerate(tious):
                hits[a, b] += (top > t).any(axis=0).sum()
    return {
        f"R@{r}x tIoU {t:g}": float(hits[a, b] / max(total, 1))
        for a, r in enumerate(ranks)
        for b, t in enumerate(tious)
    }
