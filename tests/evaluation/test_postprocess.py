"""Post-processing, computed by hand: boundary candidates, Soft-NMS, class fusion, classifier files."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from stages.core.errors import UserError
from stages.evaluation.postprocess import (
    CLASSIFIERS,
    ClassifierFile,
    boundary_mask,
    candidates,
    fuse,
    soft_nms,
    top_classes,
)


def test_boundary_mask_keeps_peaks_and_high_values():
    p = np.array([0.1, 0.3, 0.2, 0.9, 0.5, 0.05])
    # above half the max (0.45): 3, 4; strict local peaks: 1 (0.3 > 0.1, 0.2) and 3
    assert boundary_mask(p).tolist() == [False, True, False, True, True, False]


def test_candidates_need_a_start_and_an_end_boundary():
    tem = np.zeros((2, 10))
    tem[0, 2] = 0.8  # the only start peak
    tem[1, 6] = 0.9  # the only end peak
    proposals = np.array([[0.2, 0.6], [0.3, 0.6], [0.2, 0.7], [0.0, 0.95]])
    iou = np.array([[0.5, 0.4], [0.9, 0.9], [0.9, 0.9], [0.2, 0.5]])
    segs, scores, rows = candidates(proposals, iou, tem)
    # [0.3, ..] starts on no boundary, [.., 0.7] ends on none; index 0 and the last index always pass
    assert segs.tolist() == [[0.2, 0.6], [0.0, 0.95]]
    assert rows.tolist() == [0, 3]  # which proposals they are (their per-proposal classes follow them)
    assert scores == pytest.approx([0.5 * 0.4, 0.2 * 0.5])


def test_soft_nms_decays_overlaps_and_leaves_the_last_candidate_out():
    segs = np.array([[0.0, 10.0], [1.0, 11.0], [20.0, 30.0], [40.0, 50.0]])
    scores = np.array([0.9, 0.8, 0.7, 0.1])
    kept, kept_scores, rows = soft_nms(segs, scores, sigma=0.5, top_k=10)
    assert rows.tolist() == [0, 2, 1]
    decayed = 0.8 * math.exp(-((9 / 11) ** 2) / 0.5)  # IoU of [1, 11] with [0, 10] is 9 / 11
    assert kept.tolist() == [[0.0, 10.0], [20.0, 30.0], [1.0, 11.0]]  # [40, 50] is the last one left
    assert kept_scores == pytest.approx([0.9, 0.7, decayed])


def test_soft_nms_top_k_and_min_score():
    segs = np.array([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]])
    scores = np.array([0.3, 0.9, 0.6])
    assert soft_nms(segs, scores, 0.5, top_k=1)[0].tolist() == [[2.0, 3.0]]
    assert soft_nms(segs, scores, 0.5, top_k=5, min_score=0.5)[1].tolist() == [0.9, 0.6]


def test_fuse_gives_one_detection_per_segment_and_class():
    video = [("a", 0.8), ("b", 0.2)]
    out = fuse(np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([0.5, 0.25]), [video, video])
    assert [(d["label"], d["score"], d["segment"]) for d in out] == [
        ("a", 0.4, [1.0, 2.0]),
        ("b", 0.1, [1.0, 2.0]),
        ("a", 0.2, [3.0, 4.0]),
        ("b", 0.05, [3.0, 4.0]),
    ]
    assert top_classes(np.array([0.1, 0.7, 0.2]), ["x", "y", "z"], 2) == [("y", 0.7), ("z", 0.2)]


def test_classifier_files_are_checked(tmp_path):
    good = tmp_path / "cuhk.json"
    good.write_text(json.dumps({"class": ["a", "b"], "results": {"v1": [0.2, 0.8], "v2": [float("nan"), 1]}}))
    source = ClassifierFile(good, ["a", "b"])
    assert source.scores("v_v1").tolist() == [0.2, 0.8]  # the v_ prefix is tolerated
    with pytest.raises(UserError, match="not finite"):
        source.scores("v2")
    objects = tmp_path / "objects.npy"
    np.save(objects, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(UserError, match="objects.npy: not a numeric .npy file"):
        ClassifierFile(objects, ["a"] * 20)


def test_truth_labels_each_video_with_its_own_classes(tmp_path):
    def video(*labels: str) -> dict:
        spans = [{"label": x, "segment": [i, i + 1]} for i, x in enumerate(labels)]
        return {"subset": "validation", "duration": 10.0, "annotations": spans}

    annotations = tmp_path / "anet.json"
    annotations.write_text(json.dumps({"database": {"v1": video("b", "a", "b"), "v2": video()}}))
    label = CLASSIFIERS["truth"](
        SimpleNamespace(data=SimpleNamespace(annotations=annotations)), ["a", "b"], False
    )
    assert label("v1", np.array([0.1, 0.9])) == [("a", 1.0), ("b", 1.0)]  # the head's scores play no part
    assert label("v2", None) == [] and label("unknown", None) == []
    with pytest.raises(UserError, match="data.annotations is not set"):
        CLASSIFIERS["truth"](SimpleNamespace(data=SimpleNamespace(annotations=None)), ["a"], False)


def test_fuse_labels_each_segment_by_its_own_classes():
    """The per-proposal head: each segment has its own classes, and a segment may have none."""
    out = fuse(
        np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]),
        np.array([0.5, 0.25, 1.0]),
        [[("a", 0.8)], [("b", 0.4), ("a", 0.1)], []],
    )
    assert [(d["label"], d["score"], d["segment"]) for d in out] == [
        ("a", 0.4, [1.0, 2.0]),
        ("b", 0.1, [3.0, 4.0]),
        ("a", 0.025, [3.0, 4.0]),
    ]


def test_windows_merged_keep_each_segments_own_classes():
    """Merging a video's windows (one more Soft-NMS) reorders segments: their classes go with them."""
    from stages.core.settings import InferSettings
    from stages.evaluation.postprocess import POST_PROCESSING

    window_1 = (np.array([[0.0, 1.0], [3.0, 4.0]]), np.array([0.3, 0.1]), [[("low", 1.0)], [("last", 1.0)]])
    window_2 = (np.array([[5.0, 6.0], [8.0, 9.0]]), np.array([0.9, 0.6]), [[("high", 1.0)], [("mid", 1.0)]])
    for name in ("original", "opentad"):
        inf = InferSettings(post_processing=name, min_score=1e-4)
        detections = POST_PROCESSING[name].video(inf, [window_1, window_2])
        by_label = {d["label"]: (d["segment"], d["score"]) for d in detections}
        assert by_label["high"] == ([5.0, 6.0], 0.9), name
        assert by_label["mid"][0] == [8.0, 9.0], name
        assert by_label["low"][0] == [0.0, 1.0], name


def _plain_soft_nms(segs, scores, sigma, top_k, min_score):
    """Soft-NMS as the original loop reads: the best of the live ones, by a masked copy each round."""
    order = np.argsort(-scores, kind="stable")
    segs, sc = segs[order].astype(np.float64), scores[order].astype(np.float64)
    alive, kept = np.ones(len(sc), dtype=bool), []
    lengths = segs[:, 1] - segs[:, 0]
    while alive.sum() > 1 and len(kept) < top_k:
        best = int(np.flatnonzero(alive)[np.argmax(sc[alive])])
        if sc[best] < min_score:
            break
        kept.append(best)
        alive[best] = False
        inter = np.minimum(segs[best, 1], segs[:, 1]) - np.maximum(segs[best, 0], segs[:, 0])
        with np.errstate(invalid="ignore"):
            iou = inter / (lengths[best] + lengths - inter)
        decay = alive & (iou > 0)
        sc[decay] *= np.exp(-(iou[decay] ** 2) / sigma)
    idx = np.array(kept, dtype=np.int64)
    return segs[idx], sc[idx], order[idx]


def test_soft_nms_equals_the_plain_loop_bit_for_bit():
    """Tied scores, zero-length segments, a tiny sigma (decays to 0) and a minimum score."""
    rng = np.random.default_rng(0)
    for case in range(60):
        n = int(rng.integers(0, 400))
        start, length = rng.uniform(0, 1, n), rng.uniform(0, 0.4, n)
        length[: n // 4 if case % 3 == 0 else 0] = 0.0
        segs, scores = np.stack([start, start + length], 1), rng.uniform(0, 1, n).round(2)
        sigma, min_score = (0.001, 0.1) if case % 2 else (0.35, 0.0)
        with np.errstate(invalid="ignore"):
            ours = soft_nms(segs, scores, sigma, 30, min_score=min_score)
        for a, b in zip(ours, _plain_soft_nms(segs, scores, sigma, 30, min_score)):
            assert np.array_equal(a, b)
