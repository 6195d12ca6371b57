"""A study's results: each point's result.json, checked before it counts, and the mean and
standard deviation over seeds."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from stages.core.errors import UserError
from stages.data.annotations import read_json

if TYPE_CHECKING:  # the settings models, for type hints only
    pass

# what a point trains: frozen features, end to end, or both (end to end from the point's own detector)

FIGURES = (
    "average_mAP",
    "truth_labels_mAP",
    "proposal_AUC",
    "peak_memory_mib",
    "seconds_per_iteration",
    "seconds",
)

RESULT_FIELDS = {
    "point": str,
    "overrides": dict,
    "seed": int,
    "average_mAP": "number",
    "truth_labels_mAP": "optional number",
    "mAP": "numbers",
    "tiou_thresholds": "numbers",
    "mAP_first_tiou": "number",
    "proposal_AUC": "number",
    "peak_memory_mib": "number",
    "memory_kind": str,
    "seconds_per_iteration": "seconds",
    "seconds": "number",
}


def finished(result_file: Path) -> dict | None:
    """A point's figures, or None when it has not finished (no result.json, or one a crash or a full
    disk left unreadable: the point runs again, its training resumed)."""
    if not result_file.is_file():
        return None
    try:
        result = read_json(result_file, "point result")
    except UserError:
        return None
    return result if result_problem(result) is None else None


def result_problem(result: object) -> str | None:
    """What is wrong with a result.json's content (edited, or of another etad), or None."""
    if not isinstance(result, dict):
        return "not a JSON object"
    for key, kind in RESULT_FIELDS.items():
        value = result.get(key)
        if kind == "number":
            ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        elif kind == "seconds":  # NaN: a point without timed steps
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        elif kind == "numbers":
            ok = (
                isinstance(value, list)
                and bool(value)
                and all(
                    isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value
                )
            )
        elif kind == "optional number":
            ok = value is None or (isinstance(value, int | float) and not isinstance(value, bool))
        else:
            ok = isinstance(value, kind)
        if not ok:
            return f"{key}: {'missing' if key not in result else f'unexpected value {str(value)[:40]!r}'}"
    return None


def read_results(out_dir: Path) -> tuple[list[dict], list[str]]:
    """Every finished point of a study folder (finished or still running) and the varied keys."""
    meta = out_dir / "study.json"
    if not meta.is_file():
        raise UserError(f"{out_dir}: not a study folder (no study.json)")
    held = read_json(meta, "study file")
    varied = held.get("varied", []) if isinstance(held, dict) else []
    results = [finished(p) for p in sorted(out_dir.glob("points/*/seed*/result.json"))]
    return [r for r in results if r is not None], varied


def unusable_results(out_dir: Path) -> list[str]:
    """The result.json files of a study folder that cannot be read or do not hold a point's
    figures (edited by hand, cut by a full disk), each with its problem: a rerun redoes them."""
    out = []
    for path in sorted(out_dir.glob("points/*/seed*/result.json")):
        try:
            problem = result_problem(read_json(path, "point result"))
        except UserError as exc:
            problem = str(exc).removeprefix(f"{path}: ")
        if problem is not None:
            out.append(f"{path}: {problem}")
    return out


def summary(results: list[dict]) -> list[dict]:
    """Mean and standard deviation over seeds, per point, in the order points first appear."""
    rows = []
    for name in dict.fromkeys(r["point"] for r in results):
        mine = [r for r in results if r["point"] == name]
        row = {"point": name, "seeds": len(mine), "overrides": mine[0]["overrides"]}
        for key in FIGURES:
            values = [r.get(key) for r in mine]
            row[key] = None if None in values else mean_std([float(v) for v in values])
        row["memory_kind"] = mine[0]["memory_kind"]
        rows.append(row)
    return rows


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value); NaN (a point without timed steps) stays
    NaN, where the statistics module would raise."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
