"""The temporal protocols: window maths and ground truth, computed by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stages.core.settings_file import load_settings
from stages.data.protocols import PROTOCOLS, Item, Timeline, protocol, window_ground_truth, window_starts


def test_window_starts_cover_the_video_and_end_on_its_last_snippet():
    assert window_starts(300, 128, 0.5) == [0, 64, 128, 172]
    assert window_starts(256, 128, 0.5) == [0, 64, 128]
    assert window_starts(100, 128, 0.5) == [0]  # shorter than one window: one padded window
    assert window_starts(130, 128, 0.0) == [0, 2]


def test_timeline_converts_both_ways():
    timeline = Timeline(fps=30.0, stride=4, length=16)
    assert timeline.to_snippets(8 / 30) == 0.0  # snippet 0 is centred on frame 8
    assert timeline.to_seconds(10.0) == pytest.approx((10 * 4 + 8) / 30)
    assert timeline.to_snippets(timeline.to_seconds(37.5)) == pytest.approx(37.5)


def test_window_ground_truth_keeps_complete_enough_instances():
    timeline = Timeline(fps=1.0, stride=1, length=0)  # snippet i at second i
    item = Item(
        "v", 300.0, [(10.0, 20.0, "a"), (120.0, 140.0, "b"), (500.0, 510.0, "c")], window=0, valid=128
    )
    every, labels = window_ground_truth(item, timeline, 128, None)
    expected = torch.tensor([[10, 20], [120, 140], [500, 510]]) / 128  # no threshold: every instance
    torch.testing.assert_close(every, expected)
    assert labels == ["a", "b", "c"]
    # "b" has (127 - 120) / 20 = 35% inside the window: dropped at IoA 0.9, kept without a threshold
    boxes, labels = window_ground_truth(item, timeline, 128, 0.9)
    torch.testing.assert_close(boxes, torch.tensor([[10 / 128, 20 / 128]]))
    assert labels == ["a"]  # the labels of the instances kept, in their order
    # training boxes are cut to the window's first..last snippet: "d" is 95% inside, ends at 127
    cut = Item("v", 300.0, [(-0.5, 9.5, "d"), (125.0, 127.2, "e")], window=0, valid=128)
    torch.testing.assert_close(
        window_ground_truth(cut, timeline, 128, 0.9)[0], torch.tensor([[0.0, 9.5], [125.0, 127.0]]) / 128
    )


def test_whole_video_protocol_normalises_and_clips():
    s = load_settings(None, ["data.temporal_scale=8"])
    anet = protocol(s.data)
    assert isinstance(anet, PROTOCOLS["anet"])
    item = anet.items("v", 50.0, [(5.0, 60.0, "a")], 8)[0]
    assert item.window is None
    boxes, labels = anet.ground_truth(item, training=True)
    torch.testing.assert_close(boxes, torch.tensor([[0.1, 1.0]]))
    assert labels == ["a"]
    assert anet.to_seconds(item)(np.array([0.5, 1.2])).tolist() == [25.0, 50.0]
    assert anet.feature_input(np.ones((20, 4), dtype=np.float32)).shape == (4, 8)


def test_sliding_windows_pad_features_with_zeros_and_encoded_snippets_with_the_last():
    s = load_settings(None, ["data.protocol=thumos", "data.temporal_scale=4", "data.window_overlap=0.5"])
    thumos = protocol(s.data)
    assert isinstance(thumos, PROTOCOLS["thumos"])
    items = thumos.items("v", 10.0, [], 6)
    assert [(i.window, i.valid) for i in items] == [(0, 4), (2, 4)]
    rows = np.arange(6, dtype=np.float32).reshape(3, 2)  # 3 snippets of 2 channels
    assert thumos.feature_input(rows).tolist() == [[0, 2, 4, 0], [1, 3, 5, 0]]
    padded = thumos.encoded_input(torch.from_numpy(rows).T)
    assert padded.tolist() == [[0, 2, 4, 4], [1, 3, 5, 5]]


def test_the_old_setting_name_data_dataset_still_loads():
    """data.dataset was renamed data.protocol; configs written with the old name keep working."""
    assert load_settings(None, ["data.dataset=thumos"]).data.protocol == "thumos"
    assert load_settings(None, ["data.protocol=thumos"]).data.protocol == "thumos"
