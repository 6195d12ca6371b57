"""How the snippet cache stores frames: each decoded frame once, as JPEG (default) or raw uint8.

JPEG goes through torchvision.io (libjpeg-turbo on CPU): at 171x128 and quality 90 a frame of
natural-looking video takes about a tenth of its raw 65,664 bytes (docs/cache.md has the measured
figures), and decodes at thousands of frames per second per core. `raw` keeps the pixels exact.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

CODECS = ("jpeg", "raw")
# torchvision 0.29 marks its JPEG functions deprecated in favour of torchcodec; they still work and
# ship with torchvision (no extra package): keep users' output free of the warning
warnings.filterwarnings("ignore", "The image decoding and encoding capabilities", DeprecationWarning)


def encode_jpeg(frames: np.ndarray, quality: int) -> list[np.ndarray]:
    """uint8 frames [N, H, W, 3] -> N JPEG byte strings (uint8 arrays)."""
    from torchvision.io import encode_jpeg as encode

    if len(frames) == 0:
        return []
    # the transposes stay in numpy: no torch operation (and so no torch thread pool) runs here, so
    # that `etad cache` can fork its workers after measuring a few frames
    chw = np.ascontiguousarray(frames.transpose(0, 3, 1, 2))
    return [blob.numpy() for blob in encode([torch.from_numpy(f) for f in chw], quality=quality)]


def decode_jpeg(blobs: list[np.ndarray]) -> np.ndarray:
    """JPEG byte strings -> uint8 frames [N, H, W, 3]."""
    from torchvision.io import decode_jpeg as decode

    if not blobs:
        raise ValueError("no frame to decode")
    frames = decode([torch.from_numpy(np.ascontiguousarray(b)) for b in blobs])
    return np.ascontiguousarray(np.stack([f.numpy() for f in frames]).transpose(0, 2, 3, 1))
