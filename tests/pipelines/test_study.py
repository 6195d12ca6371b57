"""`etad study`: a 2x2 study at tiny size, interrupted and resumed, then its CSV, table and plots."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from stages.api import load_settings
from stages.core.errors import UserError
from stages.studies.plan import parse_vary, plan
from stages.studies.report import table
from stages.studies.results import read_results
from tests.helpers import demo_config, run_cli, start_etad

pytestmark = pytest.mark.slow


def test_plans_are_grids_zips_and_extra_points():
    points, keys = plan(["a=1,2", "b=x,y"], ["c=z"], zip_values=False)
    assert keys == ["a", "b"] and [p.name for p in points] == [
        "a=1,b=x",
        "a=1,b=y",
        "a=2,b=x",
        "a=2,b=y",
        "c=z",
    ]
    points, _ = plan(["a=1,2", "b=x,y"], [], zip_values=True)
    assert [p.name for p in points] == ["a=1,b=x", "a=2,b=y"]
    assert parse_vary(["m.t=[0.5,0.6],[0.7]"]) == [("m.t", ["[0.5,0.6]", "[0.7]"])]


def test_a_study_runs_survives_an_interruption_and_resumes(trained, tmp_path):
    root = tmp_path / "space"
    shutil.copytree(trained, root)
    varied = ["--vary", "model.proposal_ratio=0.2,0.5", "--vary", "model.proposal_sampling=random,grid"]
    args = ["study", "-c", root / "tiny.yaml", "--stages", "train", *varied, "--set", "train.epochs=2"]
    out = root / "work" / "study"
    process = start_etad(*args)
    end = time.monotonic() + 300
    while not list(out.glob("points/*/seed0/result.json")):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < end
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    first = sorted(out.glob("points/*/seed0/result.json"))
    assert 1 <= len(first) < 4
    stamps = {p: p.stat().st_mtime_ns for p in first}
    result = run_cli(*args)  # the same command finishes the study
    assert result.returncode == 0, result.stderr
    assert all(p.stat().st_mtime_ns == stamp for p, stamp in stamps.items())  # finished points kept
    rows = list(csv.DictReader((out / "study.csv").open()))
    names = {
        f"model.proposal_ratio={r},model.proposal_sampling={s}"
        for r in ("0.2", "0.5")
        for s in ("random", "grid")
    }
    assert len(rows) == 4 and {r["point"] for r in rows} == names
    for r in rows:
        assert 0.0 <= float(r["average_mAP"]) <= 1.0 and float(r["peak_memory_mib"]) > 0
        assert float(r["seconds_per_iteration"]) > 0 and 0 <= float(r["proposal_AUC"]) <= 100
    table = (out / "study.md").read_text()
    assert table.count("\n| model.proposal_ratio=") == 4 and "± 0.00" in table
    assert "truth labels" not in table and all(r["truth_labels_mAP"] == "" for r in rows)  # not asked for
    for name in ("map_vs_model.proposal_ratio.png", "map_vs_model.proposal_sampling.png", "map_vs_cost.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    shown = run_cli("study", "--show", out)
    assert shown.returncode == 0 and "model.proposal_ratio=0.5,model.proposal_sampling=grid" in shown.stdout
    other = run_cli(
        "study", "-c", root / "tiny.yaml", "--stages", "train", "--vary", "model.proposal_ratio=0.9"
    )
    assert other.returncode == 2 and "holds another study" in other.stderr


def test_a_point_can_train_both_ways(tmp_path, synth_dir, feature_work):
    """--stages train,e2e: each point trains on frozen features, then end to end from that detector;
    --truth-labels scores it a third time with the annotation file's video labels."""
    from tests.helpers import demo_config

    cache = {
        "features_dir": str(feature_work / "work" / "cache" / "features"),
        "snippets_dir": str(feature_work / "work" / "cache" / "snippets"),
    }
    config = demo_config(tmp_path, synth_dir, cache=cache, train={"epochs": 1}, e2e={"epochs": 1})
    result = run_cli(
        "study", "-c", config, "--stages", "train,e2e", "--vary", "e2e.snippet_ratio=0.5", "--truth-labels"
    )
    assert result.returncode == 0, result.stderr
    assert "| mAP, truth labels (%) |" in result.stdout
    row = next(csv.DictReader((tmp_path / "work" / "study" / "study.csv").open()))
    assert 0.0 <= float(row["truth_labels_mAP"]) <= 1.0
    work = tmp_path / "work" / "study" / "points" / "e2e.snippet_ratio=0.5" / "seed0" / "work"
    assert (work / "pretrain" / "checkpoints" / "last.pt").is_file()
    assert (work / "e2e" / "checkpoints" / "last.pt").is_file()
    log = (work.parent / "log.txt").read_text()
    assert "--e2e --init-from" in log and str(work / "pretrain" / "checkpoints" / "last.pt") in log
    assert "infer.classifier=truth" in log and (work / "results" / "truth_labels.metrics.json").is_file()


def test_a_study_without_its_caches_stops_before_the_first_point(tmp_path, synth_dir):
    from tests.helpers import demo_config

    config = demo_config(tmp_path, synth_dir)
    for stage, kind in (("train", "features"), ("e2e", "snippets")):
        done = run_cli("study", "-c", config, "--stages", stage, "--vary", "model.proposal_ratio=0.2,0.5")
        assert done.returncode == 2
        line = " ".join(done.stderr.split())
        assert f"no {kind} cache here; run `etad cache --what {kind}` first" in line
        assert "Traceback" not in line
        assert not (tmp_path / "work" / "study").exists()  # no point was started, no study recorded


def _figures(job) -> dict:
    """What the point runner hands back (etad_cli/runner.py; real points run in the tests above):
    here the study's own bookkeeping is under test, not a point's training."""
    detections = {"average_mAP": 0.25, "mAP": [0.3, 0.2], "tiou_thresholds": [0.5, 0.75]}
    return {
        "step_seconds": [0.1, 0.1],
        "peak_gpu_mib": 0,
        "peak_rss_mib": 100.0,
        "seconds": 1.0,
        "scores": {"detections": detections, "proposals": {"auc": 50.0}},
    }


def test_a_rerun_with_other_settings_is_refused_and_an_unreadable_result_runs_again(trained, tmp_path):
    from stages import study as stage
    from stages.core.errors import UserError
    from stages.core.settings_file import load_settings

    config = tmp_path / "tiny.yaml"
    shutil.copytree(trained, tmp_path, dirs_exist_ok=True)

    def prepare(stage_name: str = "train", sets: tuple = ()) -> stage.Study:
        settings = load_settings(config, list(sets))
        vary = ["model.proposal_ratio=0.2,0.5"]
        return stage.prepare(
            settings,
            config=config,
            overrides=list(sets),
            vary=vary,
            also=[],
            stage=stage_name,
            out=tmp_path / "study",
        )

    calls = []
    stage.run(prepare(), runner=lambda job: calls.append(job) or _figures(job))
    assert len(calls) == 2
    for stage_name, sets, named in (("e2e", (), "--stages"), ("train", ("train.lr=0.5",), "settings values")):
        with pytest.raises(UserError, match=f"holds another study \\(other {named}"):
            prepare(stage_name, sets)
    results = sorted((tmp_path / "study").glob("points/*/seed*/result.json"))
    results[0].write_text("")  # as a full disk or a crash might leave it
    stage.run(prepare(), runner=lambda job: calls.append(job) or _figures(job))
    assert len(calls) == 3 and calls[-1].log.parent == results[0].parent  # only that point again
    assert read_results(tmp_path / "study")[0][0]["average_mAP"] == 0.25


def test_points_never_share_a_folder():
    long = "x" * 200
    names = [p.name for p in plan([f"a={long}1,{long}2", "b=x/y,x_y"], [], zip_values=True)[0]]
    assert len(set(names)) == 2 and all(len(n) <= 180 for n in names)
    assert plan(["a=1"], [], zip_values=False)[0][0].name == "a=1"  # plain names stay readable
    with pytest.raises(Exception, match="is given twice"):
        plan(["a=1,2"], ["a=1"], zip_values=False)


def test_a_killed_study_leaves_no_trainer_and_its_rerun_finishes(trained, tmp_path):
    """SIGKILL on `etad study` (no cleanup runs): its point's trainer stops by itself, and the same
    command then resumes the point (no epoch logged twice)."""
    root = tmp_path / "space"
    shutil.copytree(trained, root)
    varied = ["--vary", "model.proposal_ratio=0.2"]
    args = ["study", "-c", root / "tiny.yaml", "--stages", "train", *varied, "--set", "train.epochs=40"]
    work = root / "work" / "study" / "points" / "model.proposal_ratio=0.2" / "seed0" / "work"
    lock, metrics = work / "logs" / "pretrain.lock", work / "pretrain" / "metrics.jsonl"
    study = start_etad(*args, quiet=True)
    end = time.monotonic() + 240
    while not (metrics.is_file() and metrics.read_text().count('"event": "epoch"') >= 3):
        assert study.poll() is None and time.monotonic() < end
        time.sleep(0.2)
    trainer = int(lock.read_text())
    study.kill()
    study.wait()
    end = time.monotonic() + 60
    while _alive(trainer):
        assert time.monotonic() < end, "the point's trainer outlived its study"
        time.sleep(0.2)
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    epochs = [
        json.loads(line)["epoch"] for line in metrics.read_text().splitlines() if '"event": "epoch"' in line
    ]
    assert epochs == list(range(1, 41))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (ended, not yet reaped by its orphaned parent's reaper) counts as ended
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def test_study_refuses_empty_and_owned_keys_and_checks_every_point_first(tmp_path, synth_dir):
    from stages import study

    config = demo_config(tmp_path, synth_dir)
    settings = load_settings(config, [])
    for vary, message in (
        ("train.lr=,,", "expected KEY=V1,V2"),
        ("seed=1,2", "use --seeds"),
        ("work_dir=/tmp/other", "each point has its own folder"),
    ):
        with pytest.raises(UserError, match=message):
            study.prepare(settings, config=config, overrides=[], vary=[vary], also=[], out=tmp_path / "s")
    checked = []

    def check(sets):
        checked.append(sets)
        return load_settings(config, sets)

    with pytest.raises(UserError, match=r"point train.lr=2: .*train.lr: got 2"):
        study.prepare(
            settings,
            config=config,
            overrides=[],
            vary=["train.lr=0.1,2"],
            also=[],
            out=tmp_path / "s",
            check=check,
        )
    assert len(checked) == 2 and not (tmp_path / "s").exists()  # both points checked, nothing written


def test_a_malformed_result_is_left_out_of_the_table_and_redone(tmp_path):
    from stages import study

    out = tmp_path / "study"
    good = {
        "point": "a",
        "overrides": {"train.lr": "0.1"},
        "seed": 0,
        "average_mAP": 0.5,
        "truth_labels_mAP": None,
        "mAP": [0.6, 0.4],
        "tiou_thresholds": [0.5, 0.75],
        "mAP_first_tiou": 0.6,
        "proposal_AUC": 40.0,
        "peak_memory_mib": 100.0,
        "memory_kind": "peak RSS",
        "seconds_per_iteration": float("nan"),
        "seconds": 3.0,
    }
    (out / "points/a/seed0").mkdir(parents=True)
    (out / "points/b/seed0").mkdir(parents=True)
    (out / "study.json").write_text(json.dumps({"varied": ["train.lr"]}))
    (out / "points/a/seed0/result.json").write_text(json.dumps(good))
    bad = {**good, "point": "b", "average_mAP": "abc"}
    bad.pop("memory_kind")
    (out / "points/b/seed0/result.json").write_text(json.dumps(bad))
    text = table(out)
    assert "| a | 1 | 50.00 ± 0.00 |" in text and "| b |" not in text
    assert (
        "1 result file(s) left out" in text
        and "b/seed0/result.json: average_mAP: unexpected value 'abc'" in text
    )
    assert study.finished(out / "points/b/seed0/result.json") is None  # a rerun redoes the point
