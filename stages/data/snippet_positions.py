"""Where snippets sit in a video: pure functions from a frame count to frame indices.

ActivityNet (original ETAD, docs/method.md §1): mmaction2's test-mode `SampleFrames(clip_len=L, num_clips=T)`
in both training and test, so positions are deterministic: offset_i = round(i * max_offset / (T-1))
with max_offset = max(N - L, 0) and numpy's round-half-to-even; frames offset_i + [0..L-1] mod N.
THUMOS: snippets start every `stride` frames; frames past the end repeat the last frame.
Frames at data.fps: output frame k shows the picture displayed at time k / fps (video_io.py).
"""

from __future__ import annotations

import numpy as np

TIME_TOLERANCE = 1e-3  # seconds: a picture this close after an output time is the one shown then
# (Matroska and WebM round timestamps to the millisecond)


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


def output_frames(duration: float, fps: float) -> int:
    """How many frames a video of `duration` seconds has at `fps`: floor(duration * fps), at least 1."""
    return max(1, int(np.floor((duration + TIME_TOLERANCE) * fps)))


def shown_at(times: np.ndarray, count: int, fps: float) -> np.ndarray:
    """For each output time k / fps (k < count): the picture shown then, the last whose display
    time is at or before it (`times` rising, from 0)."""
    wanted = np.arange(count) / fps
    return np.maximum(np.searchsorted(times, wanted + TIME_TOLERANCE, side="right") - 1, 0)
