"""Snippet positions and frame-rate resampling, against hand-computed indices."""

from __future__ import annotations

import numpy as np

from stages.data.snippet_positions import anet_snippet_frames, output_frames, shown_at, strided_snippet_frames


def test_anet_positions_spread_over_the_whole_video():
    frames = anet_snippet_frames(num_frames=100, num_snippets=4, snippet_length=16)
    # max_offset = 84; offsets = round([0, 28, 56, 84])
    assert frames[:, 0].tolist() == [0, 28, 56, 84]
    assert frames[-1, -1] == 99  # the last snippet ends on the last frame
    assert (np.diff(frames, axis=1) == 1).all()


def test_anet_positions_round_half_to_even_like_numpy():
    # max_offset = 5, 3 snippets -> offsets 0, 2.5, 5 -> numpy rounds 2.5 to 2
    assert anet_snippet_frames(21, 3, 16)[:, 0].tolist() == [0, 2, 5]


def test_anet_short_video_loops_frames():
    frames = anet_snippet_frames(num_frames=10, num_snippets=2, snippet_length=16)
    assert frames[0].tolist() == [*range(10), *range(6)]
    assert (frames[0] == frames[1]).all()


def test_strided_positions_repeat_the_last_frame():
    frames = strided_snippet_frames(num_frames=10, stride=4, snippet_length=4)
    assert frames.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 9, 9]]


def test_frames_at_a_rate_show_the_picture_displayed_then():
    at = np.arange(60) / 30.0  # a 30 fps source, 2 s
    assert output_frames(2.0, 15.0) == 30 and shown_at(at, 30, 15.0).tolist() == list(range(0, 60, 2))
    assert shown_at(np.arange(45) / 15.0, 45, 15.0).tolist() == list(range(45))
    assert shown_at(np.arange(10) / 25.0, output_frames(0.4, 10.0), 10.0).tolist() == [0, 2, 5, 7]
    assert shown_at(np.arange(4) / 10.0, output_frames(0.4, 15.0), 15.0).tolist() == [0, 0, 1, 2, 2, 3]
    # a gap (dropped frames) holds the picture before; times rounded to the millisecond still count
    assert shown_at(np.array([0.0, 0.1, 0.5, 0.6]), 7, 10.0).tolist() == [0, 1, 1, 1, 1, 2, 3]
    assert shown_at(np.array([0.0, 0.067, 0.133]), 3, 15.0).tolist() == [0, 1, 2]
    assert output_frames(0.01, 15.0) == 1  # never no frame
