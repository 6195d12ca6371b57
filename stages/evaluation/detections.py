"""Checking detections read from a file (a prediction file, a shard's part of one): each is a
segment of two finite, ordered numbers, a finite score and a label, or one line naming the file,
the video and the detection."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stages.core.errors import UserError
from stages.data.annotations import read_json, unsafe_id_reason
from stages.data.segments import number_problem, segment_problem


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
    """One detection's (segment, score, label), or a UserError naming the file, video and index: the
    segment two finite numbers in order (segments.py; "15" is text, not [1, 5]), the score a finite
    number (true is no score), the label a string or an integer class id (3.7 is neither)."""
    where = f"{path}: video {video_id!r} detection {i}"
    if not isinstance(det, dict):
        raise UserError(f"{where}: malformed (a {type(det).__name__}, not a mapping)")
    segment, score, label = det.get("segment"), det.get("score"), det.get("label", "")
    if not isinstance(segment, list | tuple) or len(segment) != 2:
        raise UserError(f"{where}: malformed (segment {str(segment)[:40]!r} is not [start, end])")
    if (why := segment_problem(*segment)) is not None:
        raise UserError(f"{where}: {why}")
    if (why := number_problem(score)) is not None:
        raise UserError(f"{where}: score {why}")
    if isinstance(label, bool) or not isinstance(label, str | int):
        raise UserError(f"{where}: malformed (label {str(label)[:40]!r} is not a name or a class id)")
    return (float(segment[0]), float(segment[1])), float(score), str(label)


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
