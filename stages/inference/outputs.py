"""What `etad infer` writes: the ActivityNet-format detections, the built-in head's class scores,
and with --shard K/N each shard's part, merged into infer.output by the last shard to finish."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from stages.core.errors import UserError
from stages.core.files import write_json
from stages.core.settings import Settings
from stages.data.annotations import read_json
from stages.data.video_selection import Shard
from stages.evaluation.detections import check_results


def classes_path(output: Path) -> Path:
    """Where `etad infer` saves the built-in head's video-level scores, in the CUHK classifier layout."""
    return output.with_suffix(".classes.json")


def write_results(path: Path, results: dict[str, list[dict]]) -> None:
    write_json(path, {"version": "ActivityNet 1.3", "results": results, "external_data": {}}, indent=None)


def write_outputs(output: Path, results: dict, class_scores: dict, classes: list[str] | None) -> None:
    """infer.output, and with the built-in head (`classes`) its video-level scores beside it
    (reusable as infer.classifier_file for another model)."""
    write_results(output, results)
    if classes is not None:
        write_json(classes_path(output), {"class": classes, "results": class_scores}, indent=None)


def shard_output(output: Path, shard: Shard) -> Path:
    """Where a shard writes its part of infer.output: <stem>.shard2of8.json beside it."""
    return output.with_name(f"{output.stem}{shard.suffix}{output.suffix}")


# the settings that leave a part's content unchanged: where it goes and how fast it is made
SPEED_ONLY = {"output", "device", "workers", "batch_size", "max_clips"}


def made_by(checkpoint: Path, settings: Settings) -> str:
    """What a shard's part was made by: the checkpoint (path, size, modification time) and the
    settings that change detections (infer's, but for speed and output; data's): parts of another
    checkpoint or other settings (top_k, classifier, ...) are never merged with this run's."""
    stat = checkpoint.stat()
    infer = {k: v for k, v in settings.infer.model_dump(mode="json").items() if k not in SPEED_ONLY}
    values = json.dumps({"infer": infer, "data": settings.data.model_dump(mode="json")}, sort_keys=True)
    digest = hashlib.sha256(values.encode()).hexdigest()[:16]
    return f"{checkpoint.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:{digest}"


def write_shard(
    output: Path,
    shard: Shard,
    checkpoint: Path,
    settings: Settings,
    *,
    results: dict,
    class_scores: dict,
    classes: list[str] | None,
) -> bool:
    """Write this shard's part; when every shard's part of this checkpoint and these settings is
    there, merge them into infer.output (post-processing is per video, so the merge equals one
    run's output). Returns whether infer.output was written. Two shards that finish at once both
    merge the same parts. A part is checked as `etad eval` checks a prediction file before merging."""
    signature = {"of": shard.count, "checkpoint": made_by(checkpoint, settings)}
    part = {"results": results, "class_scores": class_scores, "shard": signature}
    write_json(shard_output(output, shard), part)
    parts = []
    for index in range(1, shard.count + 1):
        path = shard_output(output, Shard(index, shard.count))
        if not path.is_file():
            return False
        try:
            part = read_json(path, "shard part")
        except UserError:
            return False  # being written by its shard (the rename is atomic: a kill mid-write)
        if not isinstance(part, dict):
            raise UserError(
                f"{path}: not a shard part (expected a JSON object); delete it and rerun shard "
                f"{index}/{shard.count}"
            )
        if part.get("shard") != signature:
            return False  # another checkpoint's part, other settings, or another split: wait for this run's
        parts.append(_checked_part(path, part, len(classes) if classes is not None else None))
    results = dict(sorted((k, v) for part in parts for k, v in part["results"].items()))
    write_outputs(output, results, {k: v for part in parts for k, v in part["class_scores"].items()}, classes)
    return True


def _checked_part(path: Path, part: dict, classes: int | None) -> dict:
    """A shard's part whose detections and class scores are well formed (edited by hand, or of a
    damaged disk: never merged into an output that `etad eval` would refuse, or NaN in JSON)."""
    check_results(path, part.get("results"))
    scores = part.get("class_scores")
    if not isinstance(scores, dict):
        raise UserError(f"{path}: 'class_scores' is not a mapping; delete it and rerun its shard")
    for video_id, values in scores.items():
        ok = isinstance(values, list) and all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values
        )
        if not ok or (classes is not None and len(values) != classes):
            raise UserError(
                f"{path}: video {video_id!r}: class scores are not {classes or 'the'} finite "
                "numbers; delete it and rerun its shard"
            )
    return part
