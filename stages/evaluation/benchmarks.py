"""The benchmarks `etad eval --dataset` scores, each with its own protocol: tIoU thresholds, the
default subset, and the detections kept per video (the best by score; None keeps all, as the
official ActivityNet and THUMOS-14 code does). Read from each benchmark's usual evaluation
(docs/benchmarks_protocols.md says where)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Benchmark:
    tious: tuple[float, ...]
    subset: str
    max_per_video: int | None = None


def _range(low: float, high: float, step: float) -> tuple[float, ...]:
    return tuple(float(x) for x in np.round(np.arange(low, high + step / 2, step), 4))


BENCHMARKS: dict[str, Benchmark] = {
    "anet": Benchmark(tuple(np.linspace(0.5, 0.95, 10)), "validation"),
    "thumos": Benchmark(tuple(np.linspace(0.3, 0.7, 5)), "test"),
    "hacs": Benchmark(tuple(np.linspace(0.5, 0.95, 10)), "validation", 100),
    "fineaction": Benchmark(tuple(np.linspace(0.5, 0.95, 10)), "validation", 100),
    "epic100": Benchmark(_range(0.1, 0.5, 0.1), "validation", 2000),
    "ego4d_mq": Benchmark(_range(0.1, 0.5, 0.1), "val", 2000),
    "multithumos": Benchmark(_range(0.1, 0.9, 0.1), "testing", 8000),
    "charades": Benchmark(_range(0.1, 0.9, 0.1), "testing", 1000),
}


def keep_best_per_video(videos: list[str], scores: np.ndarray, limit: int | None) -> np.ndarray:
    """A mask of each video's `limit` best detections by score (ties: the earlier in the file)."""
    keep = np.ones(len(videos), dtype=bool)
    if limit is None:
        return keep
    by_video: dict[str, list[int]] = {}
    for i, v in enumerate(videos):
        by_video.setdefault(v, []).append(i)
    for rows in by_video.values():
        if len(rows) > limit:
            idx = np.array(rows)
            keep[idx[np.argsort(-scores[idx], kind="stable")[limit:]]] = False
    return keep
