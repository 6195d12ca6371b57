"""`etad cache`: cut extracted frames into snippets, or encode them, and store per-video HDF5 files.

- `--what snippets`: uint8 frames of every snippet at ETAD's positions (stages/snippets.py), for
  end-to-end training.
- `--what features`: a frozen encoder over those snippets, in no-grad batches: features [T, D].
- `--from-npy DIR`: import released per-video features (`v_<id>.npy` or `<id>.npy`, [T, D]) as they are.

Every file carries a fingerprint of the settings that decide its content: a rerun skips files with
the current fingerprint, redoes stale ones, and training refuses a stale cache. Layout: docs/cache.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from stages.annotations import load_annotations, safe_path
from stages.errors import UserError
from stages.extract import frames_dir, load_frames
from stages.files import ensure_writable_dir, write_json
from stages.pervideo import run_each
from stages.snippets import anet_snippet_frames, strided_snippet_frames
from stages.store import VideoCache, fingerprint, stored_fingerprint, video_file, write_video_file

if TYPE_CHECKING:
    from etad_cli.settings import Settings


@dataclass
class CacheSummary:
    kind: str
    out_dir: Path
    done: int = 0
    skipped: int = 0
    seconds: float = 0.0
    failures: list[dict] = field(default_factory=list)


def snippets_dir(settings: Settings) -> Path:
    return settings.work_dir / settings.cache.snippets_dir


def features_dir(settings: Settings) -> Path:
    return settings.work_dir / settings.cache.features_dir


def snippet_fingerprint(settings: Settings) -> str:
    d = settings.data
    return fingerprint(
        {
            "dataset": d.dataset,
            "fps": d.fps,
            "size": [d.frame_height, d.frame_width],
            "snippet_length": d.snippet_length,
            "positions": d.temporal_scale if d.dataset == "anet" else f"stride {d.snippet_stride}",
        }
    )


def feature_fingerprint(settings: Settings) -> str:
    e = settings.model.encoder
    checkpoint = str(e.checkpoint) if e.checkpoint else None
    stamp = e.checkpoint.stat().st_mtime_ns if e.checkpoint and e.checkpoint.is_file() else None
    return fingerprint(
        {
            "snippets": snippet_fingerprint(settings),
            "encoder": e.name,
            "checkpoint": [checkpoint, stamp],
            "crop": e.crop_size,
            "dtype": settings.cache.dtype,
        }
    )


def npy_fingerprint(npy_dir: Path) -> str:
    return fingerprint({"npy": str(Path(npy_dir).resolve())})


def snippet_frame_indices(settings: Settings, num_frames: int) -> np.ndarray:
    """Frame indices [T, L] of the snippets of a video with `num_frames` frames (anet or thumos rule)."""
    d = settings.data
    if d.dataset == "anet":
        return anet_snippet_frames(num_frames, d.temporal_scale, d.snippet_length)
    return strided_snippet_frames(num_frames, d.snippet_stride, d.snippet_length)


def cut_snippets(settings: Settings, video_id: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """(snippets [T, L, H, W, 3], frame indices [T, L], extraction record) of an extracted video."""
    folder = frames_dir(settings.work_dir)
    frames, meta = load_frames(folder, video_id)
    if meta["fps"] != settings.data.fps or tuple(frames.shape[1:3]) != (
        settings.data.frame_height,
        settings.data.frame_width,
    ):
        raise UserError(
            f"{folder}: video {video_id!r} was extracted with other fps/size; rerun `etad extract`"
        )
    indices = snippet_frame_indices(settings, len(frames))
    return np.asarray(frames[indices.reshape(-1)]).reshape(*indices.shape, *frames.shape[1:]), indices, meta


def _snippet_job(settings: Settings, video_id: str, path: Path, stamp: str) -> None:
    snippets, indices, meta = cut_snippets(settings, video_id)
    attrs = {
        "kind": "snippets",
        "video_id": video_id,
        "fingerprint": stamp,
        "fps": meta["fps"],
        "num_frames": meta["num_frames"],
        "source": str(frames_dir(settings.work_dir)),
    }
    write_video_file(
        path, {"snippets": snippets, "frame_indices": indices}, attrs, settings.cache.compression
    )


def run(
    settings: Settings,
    what: str = "snippets",
    from_npy: Path | None = None,
    workers: int = 1,
    on_start: Callable[[int], None] | None = None,
    on_video: Callable[[str, str | None], None] | None = None,
) -> CacheSummary:
    """Fill the snippet or feature cache for every video of the annotation file."""
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
        stamp = npy_fingerprint(from_npy)
        if not Path(from_npy).is_dir():
            raise UserError(f"{from_npy}: no such folder of .npy features")
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
    if on_start is not None:
        on_start(len(todo))
    start = time.perf_counter()

    def record(video_id: str, _result: None, reason: str | None) -> None:
        if reason is None:
            summary.done += 1
        else:
            summary.failures.append({"video_id": video_id, "reason": reason})
        if on_video is not None:
            on_video(video_id, reason)

    if from_npy is not None:
        run_each([(vid, _import_npy, (Path(from_npy), vid, path, stamp)) for vid, path in todo], 1, record)
    elif kind == "snippets":
        run_each([(vid, _snippet_job, (settings, vid, path, stamp)) for vid, path in todo], workers, record)
    elif todo:
        encode = FeatureEncoder(settings)  # in this process: torch already uses every core
        run_each([(vid, encode.write, (vid, path, stamp)) for vid, path in todo], 1, record)
    summary.seconds = time.perf_counter() - start
    write_json(out_dir / "failures.json", summary.failures)
    return summary


def _import_npy(npy_dir: Path, video_id: str, path: Path, stamp: str) -> None:
    candidates = [safe_path(npy_dir, video_id, "v_{id}.npy"), safe_path(npy_dir, video_id, "{id}.npy")]
    source = next((c for c in candidates if c.is_file()), None)
    if source is None:
        raise UserError(f"{npy_dir}: no v_{video_id}.npy or {video_id}.npy")
    try:
        features = np.load(source, allow_pickle=False)
    except ValueError as exc:
        raise UserError(f"{source}: not a valid .npy file ({exc})") from None
    if features.ndim != 2 or features.shape[0] == 0:
        raise UserError(f"{source}: expected features of shape [T, D], got {list(features.shape)}")
    attrs = {
        "kind": "features",
        "video_id": video_id,
        "fingerprint": stamp,
        "source": str(source),
        "encoder": "npy",
    }
    write_video_file(path, {"features": features}, attrs)


class FeatureEncoder:
    """A frozen encoder that turns a video's snippets into features [T, D], in no-grad batches."""

    def __init__(self, settings: Settings) -> None:
        import torch

        from stages.model.encoder import build_encoder

        self.settings = settings
        e = settings.model.encoder
        device = settings.cache.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            raise UserError("cache.device is 'cuda' but no CUDA device is available")
        self.device = torch.device(device)
        self.dtype = getattr(torch, settings.cache.dtype)
        torch.manual_seed(settings.seed)  # a randomly initialised encoder is the same on every run
        self.encoder = (
            build_encoder(e.name, e.checkpoint, e.frozen_stages, e.norm_eval).to(self.device).eval()
        )
        self.snippet_cache = snippets_dir(settings)
        self.snippet_stamp = snippet_fingerprint(settings)

    def snippets(self, video_id: str) -> tuple[np.ndarray, int]:
        """Snippets from the snippet cache when it is current, else cut from the extracted frames."""
        path = video_file(self.snippet_cache, video_id)
        if stored_fingerprint(path) == self.snippet_stamp:
            cache = VideoCache(self.snippet_cache, "snippets", self.snippet_stamp)
            return cache.read(video_id), int(cache.attrs(video_id)["num_frames"])
        snippets, _, meta = cut_snippets(self.settings, video_id)
        return snippets, int(meta["num_frames"])

    def encode(self, snippets: np.ndarray):
        """Features [T, D] (float32 numpy) of uint8 snippets [T, L, H, W, 3]."""
        import torch

        from stages.model.encoder import center_crop

        out = []
        batch = self.settings.cache.batch_size
        autocast = self.dtype != torch.float32
        with torch.no_grad(), torch.autocast(self.device.type, dtype=self.dtype, enabled=autocast):
            for start in range(0, len(snippets), batch):
                clips = torch.from_numpy(np.ascontiguousarray(snippets[start : start + batch])).to(
                    self.device
                )
                clips = center_crop(clips, self.settings.model.encoder.crop_size)
                out.append(self.encoder(clips).float().cpu())
        return torch.cat(out).numpy()

    def write(self, video_id: str, path: Path, stamp: str) -> None:
        snippets, num_frames = self.snippets(video_id)
        attrs = {
            "kind": "features",
            "video_id": video_id,
            "fingerprint": stamp,
            "fps": self.settings.data.fps,
            "num_frames": num_frames,
            "encoder": self.encoder.name,
            "source": "snippets",
        }
        write_video_file(path, {"features": self.encode(snippets)}, attrs)
