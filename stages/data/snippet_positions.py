"""Where snippets sit in a video: pure functions from a frame count to frame indices.

ActivityNet (original ETAD, docs/method.md §1): mmaction2's test-mode `SampleFrames(clip_len=L, num_clips=T)`
in both training and test, so positions are deterministic: offset_i = round(i * max_offset / (T-1))
with max_offset = max(N - L, 0) and numpy's round-half-to-even; frames offset_i + [0..L-1] mod N.
THUMOS: snippets start every `stride` frames; frames past the end repeat the last frame.
"""

from __future__ import annotations

import numpy as np


def anet_snippet_frames(num_frames: int, num_snippets: int, snippet_length: int) -> np.ndarray:
    """Frame indices [T, L] of T snippets of L frames spread over the whole video (mmaction2 test mode)."""
    if num_frames <= 0:
        raise ValueError("a video needs at least one frame")
    max_offset = max(num_frames - snippet_length, 0)
    if num_snippets > 1:
        offsets = np.round(np.arange(num_snippets) * (max_offset / float(num_snippets - 1)))
    else:
        offsets = np.array([max_offset // 2], dtype=np.float64)
    frames = offsets.astype(np.int64)[:, None] + np.arange(snippet_length)[None, :]
    return frames % num_frames


def strided_snippet_frames(num_frames: int, stride: int, snippet_length: int) -> np.ndarray:
    """Frame indices [T, L] of snippets starting every `stride` frames (THUMOS style); clipped at the end."""
    if num_frames <= 0:
        raise ValueError("a video needs at least one frame")
    starts = np.arange(0, num_frames, stride, dtype=np.int64)
    return np.minimum(starts[:, None] + np.arange(snippet_length)[None, :], num_frames - 1)


def resample_frame_indices(source_frames: int, source_fps: float, target_fps: float) -> np.ndarray:
    """Which source frames to keep to turn a video into `target_fps`: frame k shows time k / target_fps."""
    duration = source_frames / source_fps
    count = max(1, int(np.floor(duration * target_fps + 1e-6)))
    return np.minimum(
        np.floor(np.arange(count) * (source_fps / target_fps) + 1e-6).astype(np.int64), source_frames - 1
    )
