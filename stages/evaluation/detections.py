"""Checking detections read from a file (a prediction file, a shard's part of one): each is a
segment of two finite, ordered numbers, a finite score and a label, or one line naming the file,
the video and the detection."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stages.core.errors import UserError
from stages.data.annotations import read_json, unsafe_id_reason


def given_or_settings(given: dict, defaults: dict) -> dict:
    """The files and options `etad eval`, `diagnose` and `view` work on: those given on the command
    line (None, "" and [] mean not given), else `defaults` (the settings' values, None where unset).
    The predictions and the ground truth are required."""
    given = {k: v for k, v in given.items() if v not in (None, "", [])}
    given = {**{k: v for k, v in defaults.items() if v is not None}, **given}
    if given.get("predictions") is None or given.get("ground_truth") is None:
        raise UserError(
            "give --predictions and --ground-truth, or --config with infer.output and data.annotations"
        )
    return given


@dataclass
class Instances:
    """Ground-truth instances or predictions as flat arrays (what the metrics take)."""

    videos: list[str]
    segments: np.ndarray
    labels: list[str]
    scores: np.ndarray | None = None


def check_detection(path: Path, video_id: str, i: int, det: object) -> tuple[tuple[float, float], float, str]:
    """One detection's (segment, score, label), or a UserError naming the file, video and index."""
    where = f"{path}: video {video_id!r} detection {i}"
    try:
        start, end = det["segment"]  # type: ignore[index]
        segment, score = (float(start), float(end)), float(det["score"])  # type: ignore[index]
        label = det.get("label", "")  # type: ignore[union-attr]
        if not isinstance(label, str | int):
            raise TypeError(f"label is {type(label).__name__}")
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise UserError(f"{where}: malformed ({exc.__class__.__name__}: {str(exc)[:100]})") from None
    if not (math.isfinite(segment[0]) and math.isfinite(segment[1])):
        raise UserError(f"{where}: segment [{segment[0]}, {segment[1]}] is not finite")
    if not math.isfinite(score):
        raise UserError(f"{where}: score {score} is not finite")
    if segment[1] < segment[0]:
        raise UserError(f"{where}: segment [{segment[0]}, {segment[1]}] ends before it starts")
    return segment, score, str(label)


def check_results(path: Path, results: object) -> dict[str, list[dict]]:
    """A `results` mapping (video id -> detections) whose ids are safe file names and whose
    detections all pass `check_detection`."""
    if not isinstance(results, dict):
        raise UserError(f"{path}: expected 'results', a mapping of video id -> list of detections")
    for video_id, detections in results.items():
        if (reason := unsafe_id_reason(video_id)) is not None:
            raise UserError(f"{path}: video id {video_id[:80]!r} {reason}")
        if not isinstance(detections, list):
            raise UserError(f"{path}: video {video_id!r}: expected a list of detections")
        for i, det in enumerate(detections):
            check_detection(path, video_id, i, det)
    return results


def read_predictions(path: Path) -> Instances:
    """Every prediction of a result file, in file order."""
    data = read_json(path, "prediction file", unique_keys=True)  # a video twice: which list counts?
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(results, dict):
        raise UserError(f"{path}: expected a top-level 'results' mapping video id -> list of detections")
    videos, segments, labels, scores = [], [], [], []
    for video_id, detections in results.items():
        if not isinstance(detections, list):
            raise UserError(f"{path}: video {video_id!r}: expected a list of detections")
        for i, det in enumerate(detections):
            segment, score, label = check_detection(path, video_id, i, det)
            videos.append(video_id)
            segments.append(segment)
            scores.append(score)
            labels.append(label)
    return Instances(
        videos, np.array(segments, dtype=float).reshape(-1, 2), labels, np.array(scores, dtype=float)
    )
