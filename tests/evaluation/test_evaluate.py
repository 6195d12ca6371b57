"""`etad eval` on real public files (../shared/data) and on files the tests write."""

import json

import numpy as np
import pytest

from stages.evaluate import evaluate
from tests.helpers import assert_clean_failure, run_cli, shared_file


def _write(path, data):
    path.write_text(json.dumps(data))
    return path


def test_official_sample_submission_scores_one_everywhere():
    pred = shared_file("anet", "sample_detection_prediction.json")
    gt = shared_file("anet", "anet1.3_val_gt_reconstructed.json")
    blocked = shared_file("anet", "etad_blocked.json")
    report = evaluate(pred, gt, "anet", blocked=blocked)
    assert report.values == [1.0] * 10 and report.average == 1.0
    assert report.counts["ground_truth_videos"] == 4926 - 31  # 31 blocked videos are in validation
    full = evaluate(pred, gt, "anet")
    assert full.values == [1.0] * 10 and full.counts["ground_truth_instances"] == 7654


def test_mmaction2_pair_matches_hand_computation():
    # Hand computation (tIoU 0.5), Wakeboarding: 3 ground truths; the predictions ranked 3, 6 and 7 match
    # (tIoU .78, .62, .74), the others do not -> precision 1/3, 2/6, 3/7 at recall 1/3, 2/3, 1 ->
    # interpolated AP = 3/7. Cleaning shoes: the top prediction has tIoU .976 -> AP 1 up to 0.95.
    report = evaluate(
        shared_file("anet", "mmaction2_eval_localization_result.json"),
        shared_file("anet", "mmaction2_eval_localization_gt.json"),
        "anet",
    )
    assert any("'v_' prefix" in note for note in report.notes)  # gt has v_ ids, results do not
    assert report.per_class["Wakeboarding"][0] == pytest.approx(3 / 7)
    assert report.per_class["Cleaning shoes"] == [1.0] * 10
    assert report.values[0] == pytest.approx((3 / 7 + 1) / 2)


def test_thumos_annotation_file_scores_itself_perfectly(tmp_path):
    gt = shared_file("thumos", "thumos14.json")
    database = json.loads(gt.read_text())["database"]
    results = {
        vid: [{"label": a["label"], "score": 1.0, "segment": a["segment"]} for a in v["annotations"]]
        for vid, v in database.items()
        if v["subset"] == "Test"
    }
    pred = _write(tmp_path / "pred.json", {"results": results})
    report = evaluate(pred, gt, "thumos")
    assert report.tious == pytest.approx([0.3, 0.4, 0.5, 0.6, 0.7])
    assert report.average == 1.0
    assert report.counts["ground_truth_videos"] == 212


def test_actionformer_protocol_drops_duplicates(tmp_path):
    gt = _write(
        tmp_path / "gt.json",
        {
            "database": {
                "a": {"subset": "validation", "annotations": [{"segment": [0, 10], "label": "x"}] * 2}
            }
        },
    )
    pred = _write(tmp_path / "p.json", {"results": {"a": [{"segment": [0, 10], "label": "x", "score": 1}]}})
    assert evaluate(pred, gt).average == pytest.approx(0.5)  # official: the duplicate is a missed instance
    assert evaluate(pred, gt, protocol="actionformer").average == 1.0


def test_unknown_label_is_reported_not_fatal(tmp_path):
    gt = _write(
        tmp_path / "gt.json",
        {"database": {"a": {"subset": "validation", "annotations": [{"segment": [0, 10], "label": "x"}]}}},
    )
    pred = _write(
        tmp_path / "p.json",
        {
            "results": {
                "a": [
                    {"segment": [0, 10], "label": "x", "score": 1},
                    {"segment": [0, 5], "label": "zzz", "score": 2},
                ]
            }
        },
    )
    report = evaluate(pred, gt)
    assert report.average == 1.0
    assert any("'zzz'" in note for note in report.notes)


def test_proposals_task_on_sample_submission():
    report = evaluate(
        shared_file("anet", "sample_detection_prediction.json"),
        shared_file("anet", "anet1.3_val_gt_reconstructed.json"),
        task="proposals",
    )
    # every instance is proposed exactly, except the 3 zero-length ones (never recalled, as officially)
    assert report.ar_at[100] == pytest.approx(1 - 3 / 7654)


def test_cli_json_plot_and_errors(tmp_path):
    gt = _write(
        tmp_path / "gt.json",
        {"database": {"a": {"subset": "validation", "annotations": [{"segment": [0, 10], "label": "x"}]}}},
    )
    pred = _write(tmp_path / "p.json", {"results": {"a": [{"segment": [0, 8], "label": "x", "score": 1}]}})
    out = run_cli(
        "eval",
        "-p",
        pred,
        "-g",
        gt,
        "--json",
        tmp_path / "m.json",
        "--plot",
        tmp_path / "m.png",
        "--per-class",
    )
    assert out.returncode == 0, out.stderr
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert np.allclose(metrics["mAP"], [1, 1, 1, 1, 1, 1, 1, 0, 0, 0])  # tIoU .8 -> above .8 it misses
    assert (tmp_path / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    out = run_cli("eval", "-p", bad, "-g", gt)
    assert_clean_failure(out, "bad.json")
    out = run_cli("eval", "-p", pred, "-g", gt, "--subset", "training")
    assert out.returncode == 2 and "no video in subset" in out.stderr


def test_eval_benchmark_in_the_settings_picks_the_protocol(tmp_path):
    """`eval.benchmark` is `--dataset` for `etad eval --config` and `infer --eval`: its tIoUs."""
    gt = tmp_path / "gt.json"
    instance = {"segment": [1.0, 4.0], "label": "x"}
    _write(gt, {"database": {"a": {"subset": "testing", "duration": 10.0, "annotations": [instance]}}})
    pred = _write(tmp_path / "p.json", {"results": {"a": [{**instance, "score": 0.5}]}})
    config = tmp_path / "c.yaml"
    settings = f"data:\n  annotations: {gt}\n  eval_subset: testing\n"
    config.write_text(settings + "eval:\n  benchmark: multithumos\n")
    out = tmp_path / "r.json"
    done = run_cli("eval", "--config", config, "--predictions", pred, "--json", out)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["tiou_thresholds"] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    config.write_text(f"data:\n  annotations: {gt}\neval:\n  benchmark: epic\n")
    done = run_cli("eval", "--config", config, "--predictions", pred)
    assert done.returncode == 2 and "eval.benchmark" in done.stderr and "epic100" in done.stderr


def _pair(tmp_path, label="x"):
    gt = _write(
        tmp_path / "gt.json",
        {
            "database": {
                "a": {"subset": "validation", "annotations": [{"segment": [0, 10], "label": label}]},
                "b": {"subset": "validation", "annotations": [{"segment": [5, 9], "label": label}]},
            }
        },
    )
    pred = _write(tmp_path / "p.json", {"results": {"a": [{"segment": [0, 8], "label": label, "score": 1}]}})
    return gt, pred


def test_an_output_named_as_an_input_is_refused_before_anything_is_read(tmp_path):
    """--json or --plot naming -p, -g or --blocked (as written, or the same file through a link):
    one line, exit 2, the input as it was."""
    gt, pred = _pair(tmp_path)
    (tmp_path / "link.json").symlink_to(pred)
    blocked = _write(tmp_path / "blocked.json", ["zzz"])
    before = {p: p.read_bytes() for p in (gt, pred, blocked)}
    base = ("eval", "-p", pred, "-g", gt, "--blocked", blocked)
    for option, target in (
        ("--json", pred),
        ("--plot", gt),
        ("--json", tmp_path / "link.json"),
        ("--plot", blocked),
    ):
        done = run_cli(*base, option, target)
        assert done.returncode == 2 and "an output never overwrites an input" in done.stderr, (option, target)
    done = run_cli(*base, "--json", tmp_path / "m.json", "--plot", tmp_path / "m.json")
    assert done.returncode == 2 and "--plot" in done.stderr and "is --json" in done.stderr
    assert {p: p.read_bytes() for p in (gt, pred, blocked)} == before


def test_blocking_every_video_is_the_same_error_as_no_ground_truth(tmp_path):
    gt, pred = _pair(tmp_path)
    blocked = _write(tmp_path / "blocked.json", ["a", "b"])
    done = run_cli("eval", "-p", pred, "-g", gt, "--blocked", blocked)
    assert done.returncode == 2 and "no ground-truth instance in the selected subset" in done.stderr


def test_labels_are_drawn_as_text_in_the_per_class_plot(tmp_path):
    """A `$` pair in a class name is no mathtext formula."""
    gt, pred = _pair(tmp_path, label="tip a$_$b")  # matplotlib raised ValueError on it
    done = run_cli("eval", "-p", pred, "-g", gt, "--per-class", "--plot", tmp_path / "map.png")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "map.png").read_bytes()[:4] == b"\x89PNG"
