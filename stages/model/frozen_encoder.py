"""A frozen encoder over whole videos: what `etad cache --what features` stores and what
`etad infer --video` computes on the fly, in one place so that both give the same numbers."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from stages.core.runtime import pick_device, use_threads
from stages.model.encoder import build_encoder, center_crop, require_crop_fits

if TYPE_CHECKING:  # the settings models, for type hints only
    from stages.core.settings import Settings


class FeatureEncoder:
    """A frozen encoder that turns a video's snippets into features [T, D], in no-grad batches."""

    def __init__(self, settings: Settings, device: str, dtype: str = "float32", batch_size: int = 32) -> None:
        use_threads(settings.threads)
        self.settings, self.batch_size = settings, batch_size
        e, d = settings.model.encoder, settings.data
        require_crop_fits(e.crop_size, d.frame_height, d.frame_width)
        self.device = pick_device(device)
        self.dtype = getattr(torch, dtype)
        torch.manual_seed(settings.seed)  # a randomly initialised encoder is the same on every run
        self.encoder = (
            build_encoder(e.name, e.checkpoint, e.frozen_stages, e.norm_eval).to(self.device).eval()
        )

    def encode(self, snippets: np.ndarray) -> np.ndarray:
        """Features [T, D] (float32 numpy) of uint8 snippets [T, L, H, W, 3]."""
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
