"""Benchmarks of scoring: `etad eval` and `etad diagnose`, whole processes."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import REPO


def bench_eval() -> list[tuple[str, str]]:
    """`etad eval` on the full ActivityNet-1.3 validation set (../shared/data), best of 3 runs."""
    from stages.evaluate import evaluate

    data = REPO.parent / "shared" / "data" / "anet"
    pred, gt = data / "sample_detection_prediction.json", data / "anet1.3_val_gt_reconstructed.json"
    if not pred.is_file():
        return [("skipped", f"{data} is absent")]
    rows = []
    for task in ("detection", "proposals"):
        times = []
        for _ in range(3):
            began = time.perf_counter()
            evaluate(pred, gt, "anet", task=task)
            times.append(time.perf_counter() - began)
        rows.append((f"{task}: 4,926 videos, 7,654 predictions, 10 tIoU (s)", f"{min(times):.2f}"))
    return rows


def bench_diagnose() -> list[tuple[str, str]]:
    """Whole processes on ActivityNet validation (the official sample submission perturbed, seeded:
    42,666 detections): `etad diagnose` beside `etad eval` of the same files, best of 3 each."""
    import subprocess

    from tests.helpers import write_anet_diagnosis_case

    shared = REPO.parent / "shared" / "data"
    if not (shared / "anet" / "sample_detection_prediction.json").is_file():
        return [("skipped", f"{shared} is absent")]
    with tempfile.TemporaryDirectory() as tmp:
        gt, pred = write_anet_diagnosis_case(shared, Path(tmp) / "case")
        files = ["--dataset", "anet", "-g", gt, "-p", pred]
        commands = {
            "etad diagnose": ["diagnose", *files, "--out", Path(tmp) / "out"],
            "etad eval": ["eval", *files],
        }
        best = {}
        for name, args in commands.items():
            times = []
            for _ in range(3):
                began = time.perf_counter()
                command = [sys.executable, "-m", "etad_cli", *map(str, args)]
                subprocess.run(command, check=True, capture_output=True)
                times.append(time.perf_counter() - began)
            best[name] = min(times)
    return [(f"{name}, whole process (s)", f"{t:.2f}") for name, t in best.items()] + [
        ("diagnose / eval", f"{best['etad diagnose'] / best['etad eval']:.1f}x")
    ]
