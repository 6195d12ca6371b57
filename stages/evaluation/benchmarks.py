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


def over_budget(videos: list[str], limit: int | None) -> int:
    """How many videos have more than `limit` detections."""
    if limit is None:
        return 0
    counts: dict[str, int] = {}
    for v in videos:
        counts[v] = counts.get(v, 0) + 1
    return sum(n > limit for n in counts.values())
