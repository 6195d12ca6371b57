"""Turning extracted frames into snippets and features: what `etad cache` stores and what
`etad infer --video` computes on the fly, in one place so that both give the same numbers.

Every cache file carries a fingerprint of the settings that decide its content, so a rerun skips
current files, redoes stale ones, and training refuses a stale cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from stages.core.errors import UserError
from stages.core.workdir import frames_dir, snippets_dir
from stages.data.extracted_frames import load_frames
from stages.data.hdf5_cache import VideoCache, fingerprint, stored_fingerprint, video_file
from stages.data.protocols import protocol

if TYPE_CHECKING:  # the settings models, for type hints only
    from stages.core.settings import Settings


def snippet_fingerprint(settings: Settings) -> str:
    d = settings.data
    return fingerprint(
        {
            "dataset": d.protocol,  # named "dataset" so that caches written before the rename stay current
            "fps": d.fps,
            "size": [d.frame_height, d.frame_width],
            "snippet_length": d.snippet_length,
            "positions": protocol(d).positions(),
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
            # a randomly initialised encoder is drawn from the seed: another seed, other features
            "seed": settings.seed if checkpoint is None else None,
            "crop": e.crop_size,
            "dtype": settings.cache.dtype,
        }
    )


def npy_fingerprint(npy_dir: Path) -> str:
    return fingerprint({"npy": str(Path(npy_dir).resolve())})


def snippet_frame_indices(settings: Settings, num_frames: int) -> np.ndarray:
    """Frame indices [T, L] of the snippets of a video with `num_frames` frames."""
    return protocol(settings.data).snippet_frames(num_frames)


def cut_snippets(settings: Settings, video_id: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """(snippets [T, L, H, W, 3], frame indices [T, L], extraction record) of an extracted video."""
    folder = frames_dir(settings)
    frames, meta = load_frames(folder, video_id)
    d = settings.data
    if meta.get("fps") != d.fps or tuple(frames.shape[1:3]) != (d.frame_height, d.frame_width):
        raise UserError(
            f"{folder}: video {video_id!r} was extracted with other fps/size; rerun `etad extract`"
        )
    indices = snippet_frame_indices(settings, len(frames))
    return np.asarray(frames[indices.reshape(-1)]).reshape(*indices.shape, *frames.shape[1:]), indices, meta


class FeatureEncoder:
    """A frozen encoder that turns a video's snippets into features [T, D], in no-grad batches."""

    def __init__(self, settings: Settings, device: str, dtype: str = "float32", batch_size: int = 32) -> None:
        import torch

        from stages.core.runtime import use_threads
        from stages.model.encoder import build_encoder

        use_threads(settings.threads)
        self.settings, self.batch_size = settings, batch_size
        e = settings.model.encoder
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            raise UserError("device is 'cuda' but no CUDA device is available")
        self.device = torch.device(device)
        self.dtype = getattr(torch, dtype)
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

    def encode(self, snippets: np.ndarray) -> np.ndarray:
        """Features [T, D] (float32 numpy) of uint8 snippets [T, L, H, W, 3]."""
        import torch

        from stages.model.encoder import center_crop

        out = []
        autocast = self.dtype != torch.float32
        with torch.no_grad(), torch.autocast(self.device.type, dtype=self.dtype, enabled=autocast):
            for start in range(0, len(snippets), self.batch_size):
                batch = np.ascontiguousarray(snippets[start : start + self.batch_size])
                clips = center_crop(
                    torch.from_numpy(batch).to(self.device), self.settings.model.encoder.crop_size
                )
                out.append(self.encoder(clips).float().cpu())
        return torch.cat(out).numpy()
