"""`etad cache`: cut extracted frames into snippets, or encode them, and store per-video HDF5 files.

- `--what snippets`: uint8 frames of every snippet at the protocol's positions, for end-to-end training.
- `--what features`: a frozen encoder over those snippets, in no-grad batches: features [T, D].
- `--from-npy DIR`: import released per-video features (`v_<id>.npy` or `<id>.npy`, [T, D]) as they are.

Every file carries a fingerprint of the settings that decide its content: a rerun skips files with
the current fingerprint, redoes stale ones, and training refuses a stale cache. Layout: docs/cache.md.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stages.core.errors import UserError
from stages.core.files import ensure_writable_dir, write_json
from stages.core.progress import SILENT, Progress
from stages.core.settings import Settings
from stages.core.workdir import features_dir, frames_dir, snippets_dir
from stages.data.annotations import load_annotations, safe_path
from stages.data.extracted_frames import cut_snippets
from stages.data.fingerprints import feature_fingerprint, npy_fingerprint, snippet_fingerprint
from stages.data.hdf5_cache import (
    VideoCache,
    require_finite,
    stored_fingerprint,
    video_file,
    write_video_file,
)
from stages.data.per_video import run_each
from stages.model.frozen_encoder import FeatureEncoder

KINDS = ("snippets", "features")


@dataclass
class CacheSummary:
    kind: str
    out_dir: Path
    done: int = 0
    skipped: int = 0
    seconds: float = 0.0
    failures: list[dict] = field(default_factory=list)


def _snippet_job(settings: Settings, video_id: str, path: Path, stamp: str) -> None:
    snippets, indices, meta = cut_snippets(settings, video_id)
    attrs = {
        "kind": "snippets",
        "video_id": video_id,
        "fingerprint": stamp,
        "fps": meta["fps"],
        "num_frames": meta["num_frames"],
        "source": str(frames_dir(settings)),
    }
    write_video_file(
        path, {"snippets": snippets, "frame_indices": indices}, attrs, settings.cache.compression
    )


def snippets_to_encode(settings: Settings, video_id: str) -> tuple[np.ndarray, int]:
    """A video's snippets and frame count: from the snippet cache when it is current, else cut from
    the extracted frames."""
    folder, stamp = snippets_dir(settings), snippet_fingerprint(settings)
    if stored_fingerprint(video_file(folder, video_id)) == stamp:
        cache = VideoCache(folder, "snippets", stamp)
        return cache.read(video_id), int(cache.attrs(video_id)["num_frames"])
    snippets, _, meta = cut_snippets(settings, video_id)
    return snippets, int(meta["num_frames"])


def _feature_job(encoder: FeatureEncoder, settings: Settings, video_id: str, path: Path, stamp: str) -> None:
    snippets, num_frames = snippets_to_encode(settings, video_id)
    attrs = {
        "kind": "features",
        "video_id": video_id,
        "fingerprint": stamp,
        "fps": settings.data.fps,
        "num_frames": num_frames,
        "encoder": encoder.encoder.name,
        "source": "snippets",
    }
    features = encoder.encode(snippets)
    require_finite(features, f"{path.name} (encoder {encoder.encoder.name!r})")
    write_video_file(path, {"features": features}, attrs)


def _import_npy(npy_dir: Path, video_id: str, path: Path, stamp: str) -> None:
    candidates = [safe_path(npy_dir, video_id, "v_{id}.npy"), safe_path(npy_dir, video_id, "{id}.npy")]
    source = next((c for c in candidates if c.is_file()), None)
    if source is None:
        raise UserError(f"{npy_dir}: no v_{video_id}.npy or {video_id}.npy")
    try:
        features = np.load(source, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise UserError(f"{source}: not a valid .npy file ({str(exc)[:120]})") from None
    if features.ndim != 2 or features.shape[0] == 0 or features.shape[1] == 0:
        raise UserError(f"{source}: expected features of shape [T, D], got {list(features.shape)}")
    if not np.issubdtype(features.dtype, np.number) or np.issubdtype(features.dtype, np.complexfloating):
        raise UserError(f"{source}: expected real numbers, got dtype {features.dtype}")
    require_finite(features, source)
    attrs = {
        "kind": "features",
        "video_id": video_id,
        "fingerprint": stamp,
        "source": str(source),
        "encoder": "npy",
    }
    write_video_file(path, {"features": features}, attrs)


def run(
    settings: Settings,
    *,
    what: str = "snippets",
    from_npy: Path | None = None,
    workers: int | None = None,
    progress: Progress = SILENT,
) -> CacheSummary:
    """Fill the snippet or feature cache for every video of the annotation file."""
    if what not in KINDS:
        raise UserError(f"--what {what}: expected one of {', '.join(KINDS)}")
    if settings.data.annotations is None:
        raise UserError("data.annotations is not set")
    records = load_annotations(settings.data.annotations)
    kind = "snippets" if what == "snippets" and from_npy is None else "features"
    out_dir = snippets_dir(settings) if kind == "snippets" else features_dir(settings)
    try:
        ensure_writable_dir(out_dir)
    except OSError as exc:
        raise UserError(f"{out_dir}: cannot write the cache folder: {exc.strerror or exc}") from None
    if from_npy is not None:
        if not Path(from_npy).is_dir():
            raise UserError(f"{from_npy}: no such folder of .npy features")
        stamp = npy_fingerprint(from_npy)
    else:
        stamp = snippet_fingerprint(settings) if kind == "snippets" else feature_fingerprint(settings)
    summary = CacheSummary(kind, out_dir)
    todo = []
    for video_id in records:
        path = video_file(out_dir, video_id)
        if stored_fingerprint(path) == stamp:
            summary.skipped += 1
        else:
            todo.append((video_id, path))
    progress.start(len(todo))
    start = time.perf_counter()

    def record(video_id: str, _result: None, reason: str | None) -> None:
        if reason is None:
            summary.done += 1
        else:
            summary.failures.append({"video_id": video_id, "reason": reason})
        progress.advance()

    if from_npy is not None:
        run_each([(vid, _import_npy, (Path(from_npy), vid, path, stamp)) for vid, path in todo], 1, record)
    elif kind == "snippets":
        jobs = [(vid, _snippet_job, (settings, vid, path, stamp)) for vid, path in todo]
        run_each(jobs, workers or settings.cache.workers, record)
    elif todo:
        c = settings.cache  # the encoder runs in this process: torch already uses every core
        encoder = FeatureEncoder(settings, c.device, c.dtype, c.batch_size)
        run_each(
            [(vid, _feature_job, (encoder, settings, vid, path, stamp)) for vid, path in todo], 1, record
        )
    summary.seconds = time.perf_counter() - start
    write_json(out_dir / "failures.json", summary.failures)
    return summary
