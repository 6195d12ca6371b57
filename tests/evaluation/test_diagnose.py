"""`etad diagnose`: DETAD's definitions on cases worked by hand, its characteristics against DETAD's
published THUMOS-14 file, the whole ActivityNet validation set, and bad input."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from stages.evaluation import detad
from tests.helpers import one_instance_truth, run_cli, shared_file, write_anet_diagnosis_case

A, B = 0, 1


def _truth(segments, labels, videos, n_classes=2) -> detad.Truth:
    points = np.array(segments, dtype=float)
    return detad.Truth(np.array(videos), points, np.array(labels), n_classes=n_classes, buckets={})


def _pred(segments, labels, videos, scores) -> detad.Predictions:
    return detad.Predictions(
        np.array(videos), np.array(segments, dtype=float), np.array(labels), np.array(scores, dtype=float)
    )


def test_every_error_type_on_a_case_worked_by_hand():
    # video 0: an A instance [10, 20] and a B instance [40, 50]; video 1 has no ground truth
    truth = _truth([[10, 20], [40, 50]], [A, B], [0, 0])
    pred = _pred(
        [
            [10, 20],  # A over the A instance, tIoU 1: true positive
            [11, 20],  # A again over it (tIoU 0.9), taken already: double detection
            [40, 49],  # A over the B instance (tIoU 0.9): wrong label
            [10, 14],  # A, tIoU 0.4 with the A instance: localization error
            [44, 48],  # A, tIoU 0.4 with the B instance: confusion
            [60, 70],  # A, touching nothing: background
            [10, 20],  # A in a video without ground truth: background
            [40, 50],
        ],  # B over the B instance: true positive
        [A, A, A, A, A, A, A, B],
        [0, 0, 0, 0, 0, 0, 1, 0],
        [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.95],
    )
    tious = np.array([0.5])
    ap, matched = detad.normalised_ap(truth, pred, tious)
    types = detad.error_types(truth, pred, matched, tious)[0]
    names = [detad.ERROR_TYPES[t] for t in types]
    assert names == [
        "true_positive",
        "double_detection",
        "wrong_label",
        "localization",
        "confusion",
        "background",
        "background",
        "true_positive",
    ]
    # at tIoU 0.95 the second A prediction (0.9) is a localization error, not a double detection
    strict = np.array([0.95])
    _, matched_strict = detad.normalised_ap(truth, pred, strict)
    assert detad.ERROR_TYPES[detad.error_types(truth, pred, matched_strict, strict)[0][1]] == "localization"
    # mAP_N: avg = 2 instances / 2 classes = 1; class A: TP first, then 6 false positives -> AP 1
    assert ap[0].tolist() == [1.0, 1.0]
    # removing double detections changes nothing here; a false positive ranked first would
    top_fp = _pred([[60, 70], [10, 20]], [A, A], [0, 0], [0.9, 0.8])
    ap2, m2 = detad.normalised_ap(truth, top_fp, tious)
    t2 = detad.error_types(truth, top_fp, m2, tious)
    assert ap2[0, A] == pytest.approx(0.5)  # precision 1 * 1 / (1 * 1 + 1) at recall 1
    gain = detad.gains(truth, top_fp, m2, types=t2, base=float(ap2.mean()))
    assert gain["background"] == pytest.approx(0.25) and gain["localization"] == 0.0  # (1 - 0.5) / 2 classes


def test_buckets_are_right_closed_with_the_lowest_edge_in_as_pandas_cut():
    edges = np.linspace(0, 1.0, 6)
    values = [0.0, 0.2, 0.2000001, 0.5, 1.0, 1.01, -0.1, float("nan")]
    assert detad.bucket(values, edges).tolist() == [0, 0, 1, 2, 4, -1, -1, -1]


def test_sensitivity_and_false_negatives_per_bucket_by_hand():
    # two A instances: a short one (length 2, bucket XS of THUMOS) found, a long one (20 s, XL) missed
    truth = _truth([[0, 2], [10, 30]], [A, A], [0, 0], n_classes=1)
    edges, names = detad.BINS["thumos"]["length"]
    truth.buckets = {"length": detad.bucket(truth.segments[:, 1] - truth.segments[:, 0], edges)}
    pred = _pred([[0, 2], [50, 60]], [A, A], [0, 0], [0.9, 0.8])
    tious = np.array([0.5])
    _, matched = detad.normalised_ap(truth, pred, tious)
    names = {"length": names}
    sens = detad.sensitivity(truth, pred, matched, names)["length"]
    assert sens["XS"] == 1.0 and sens["XL"] == 0.0 and sens["M"] is None  # no M instance
    assert detad.false_negatives(truth, matched, names)["length"] == {"XS": 0.0, "XL": 1.0}


def test_the_thumos_characteristics_equal_detads_published_file():
    """DETAD's data/thumos14_test_extra_characteristics.json (HumamAlwassel/DETAD), pointed at by
    ETAD_DETAD_DATA: etad's length and instance counts from the THUMOS-14 annotations equal it; its
    coverage used the original videos' durations (3 decimals), thumos14.json's carry 2: within their
    rounding (0.005 s over the duration)."""
    folder = os.environ.get("ETAD_DETAD_DATA")
    if not folder or not (Path(folder) / "thumos14_test_extra_characteristics.json").is_file():
        pytest.skip("DETAD's characteristics file is absent: set ETAD_DETAD_DATA to DETAD's data/ folder")
    published = json.loads((Path(folder) / "thumos14_test_extra_characteristics.json").read_text())
    published = published["database"]
    ours = json.loads(shared_file("thumos", "thumos14.json").read_text())["database"]
    for video_id, entry in published.items():
        mine = ours[video_id]
        anns = sorted(mine["annotations"], key=lambda a: (a["segment"], a["label"]))
        theirs = sorted(entry["annotations"], key=lambda a: (a["segment"], a["label"]))
        assert [(a["segment"], a["label"]) for a in anns] == [(a["segment"], a["label"]) for a in theirs]
        segments = np.array([a["segment"] for a in anns], dtype=float)
        values = detad.computed_characteristics(
            segments, np.zeros(len(anns), dtype=int), np.full(len(anns), mine["duration"])
        )
        assert values["length"].tolist() == [a["length"] for a in theirs]
        assert values["num-instances"].tolist() == [a["num-instances"] for a in theirs]
        rounding = 0.0051 / mine["duration"]  # 0.005 s at most (measured), and float rounding
        assert values["coverage"] == pytest.approx([a["coverage"] for a in theirs], rel=rounding)


@pytest.mark.slow
def test_the_activitynet_validation_set_is_diagnosed_in_seconds(tmp_path):
    shared = shared_file("anet", "anet1.3_val_gt_reconstructed.json").parents[1]
    gt, predictions = write_anet_diagnosis_case(shared, tmp_path / "case")
    began = time.perf_counter()  # in this process: the whole process is timed by `make bench`
    done = run_cli("diagnose", "--dataset", "anet", "-g", gt, "-p", predictions, "--out", tmp_path / "out")
    seconds = time.perf_counter() - began
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "out" / "diagnosis.json").read_text())
    assert result["counts"] == {
        "ground_truth": 7651,
        "classes": 200,
        "predictions": 42666,
        "top_predictions": result["counts"]["top_predictions"],
    }
    assert 0.3 < result["average_mAP_N"] < 0.6
    assert sum(result["false_positive"]["over_all"].values()) == pytest.approx(1)
    assert set(result["sensitivity"]) == {"coverage", "length", "num-instances"}
    for name in ("false_positive_analysis", "sensitivity_analysis", "false_negative_analysis"):
        assert (tmp_path / "out" / f"{name}.png").stat().st_size > 10_000
    assert "of your top predictions are" in done.stdout and seconds < 30  # DETAD's code: 7 min here


def test_bad_input_is_one_line(tmp_path, trained):
    gt = trained / "tiny_anet.json"
    predictions = json.loads((trained / "tiny_predictions.json").read_text())
    video = next(v for v, d in predictions["results"].items() if d)

    def check(edit, message, subset="validation"):
        data = json.loads(json.dumps(predictions))
        edit(data)
        path = tmp_path / "p.json"
        path.write_text(json.dumps(data))
        result = run_cli("diagnose", "-g", gt, "-p", path, "--subset", subset, "--out", tmp_path / "out")
        assert result.returncode == 2, (message, result.stdout)
        assert message in " ".join(result.stderr.split()) and result.stderr.count("error:") == 1

    check(lambda d: d["results"][video][0].update(label="Applying sunscreen"), "the ground truth never names")
    check(lambda d: d["results"][video][0].update(score=float("nan")), "score nan is not finite")
    check(lambda d: d["results"].update({"../escape": d["results"][video]}), "contains the path separator")
    check(lambda d: None, "no video in subset 'testing'", subset="testing")
    check(lambda d: d.update(results={"other": d["results"][video]}), "no prediction is for a video of")
    assert not (tmp_path / "out").exists()


def test_diagnose_refuses_what_eval_refuses_and_never_writes_over_an_input(tmp_path):
    truth = one_instance_truth("a", 20.0, [0, 10], "x")
    (tmp_path / "gt.json").write_text(json.dumps(truth))
    (tmp_path / "p.json").write_text(json.dumps({"results": {}}))
    base = ("diagnose", "--dataset", "anet", "-g", tmp_path / "gt.json", "-p", tmp_path / "p.json")
    done = run_cli(*base, "--out", tmp_path / "d")
    assert done.returncode == 2 and "no prediction left to score" in done.stderr
    truth["database"]["a"]["duration"] = -20.0  # a negative coverage, before
    (tmp_path / "gt.json").write_text(json.dumps(truth))
    one = {"results": {"a": [{"segment": [0, 8], "label": "x", "score": 1}]}}
    (tmp_path / "p.json").write_text(json.dumps(one))
    done = run_cli(*base, "--out", tmp_path / "d")
    assert done.returncode == 2 and "duration -20.0 is not positive" in done.stderr
    truth["database"]["a"]["duration"] = 20.0
    (tmp_path / "gt.json").write_text(json.dumps(truth))
    (tmp_path / "diagnosis.json").write_text(json.dumps(one))  # predictions named like an output
    before = (tmp_path / "diagnosis.json").read_bytes()
    done = run_cli(
        "diagnose",
        "--dataset",
        "anet",
        "-g",
        tmp_path / "gt.json",
        "-p",
        tmp_path / "diagnosis.json",
        "--out",
        tmp_path,
    )
    assert done.returncode == 2 and "an output never overwrites an input" in done.stderr
    assert (tmp_path / "diagnosis.json").read_bytes() == before
