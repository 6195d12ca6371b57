"""How the snippet cache stores frames: each decoded frame once, as JPEG (default) or raw uint8.

JPEG is written by Pillow and read by torchvision.io (both libjpeg-turbo on CPU): at 171x128 and
quality 90 a frame of natural-looking video takes about a ninth of its raw 65,664 bytes
(docs/cache.md has the measured figures), and decodes at thousands of frames per second per
core. `raw` keeps the pixels exact.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch

CODECS = ("jpeg", "raw")
# torchvision 0.29 marks its JPEG functions deprecated in favour of torchcodec; they still work and
# ship with torchvision (no extra package): keep users' output free of the warning
warnings.filterwarnings("ignore", "The image decoding and encoding capabilities", DeprecationWarning)


def encode_jpeg(frames: np.ndarray, quality: int) -> list[np.ndarray]:
    """uint8 frames [N, H, W, 3] -> N JPEG byte strings (uint8 arrays).

    Pillow (libjpeg-turbo) with optimised Huffman tables: 7% fewer bytes than torchvision's
    encoder at 171x128, q90 (`make bench`, data_path; Huffman coding is lossless); no torch
    operation runs here, so `etad cache` can fork its workers after measuring."""
    from PIL import Image

    out = []
    for frame in frames:
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(frame)).save(buffer, "JPEG", quality=quality, optimize=True)
        out.append(np.frombuffer(bytearray(buffer.getbuffer()), np.uint8))  # writable: torch takes it as is
    return out


def decode_jpeg(blobs: list[np.ndarray]) -> np.ndarray:
    """JPEG byte strings -> uint8 frames [N, H, W, 3]."""
    from torchvision.io import decode_jpeg as decode

    if not blobs:
        raise ValueError("no frame to decode")
    frames = decode([torch.from_numpy(np.ascontiguousarray(b)) for b in blobs])
    return np.ascontiguousarray(np.stack([f.numpy() for f in frames]).transpose(0, 2, 3, 1))
