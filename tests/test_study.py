"""`etad study`: a 2x2 study at tiny size, interrupted and resumed, then its CSV, table and plots."""

from __future__ import annotations

import csv
import shutil
import signal
import subprocess
import sys
import time

import pytest

from stages.study import parse_vary, plan
from tests.conftest import REPO, run_cli
from tests.test_interrupts import default_sigint

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
    args = ["study", "-c", root / "tiny.yaml", "--stages", "train", "--vary", "model.proposal_ratio=0.2,0.5",
            "--vary", "model.proposal_sampling=random,grid", "--set", "train.epochs=2"]  # fmt: skip
    out = root / "work" / "study"
    process = subprocess.Popen([sys.executable, "-m", "etad_cli", *map(str, args)], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=default_sigint)  # fmt: skip
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
    from tests.conftest import demo_config

    cache = {"features_dir": str(feature_work / "work" / "cache" / "features"),
             "snippets_dir": str(feature_work / "work" / "cache" / "snippets")}  # fmt: skip
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
    from tests.conftest import demo_config

    config = demo_config(tmp_path, synth_dir)
    for stage, kind in (("train", "features"), ("e2e", "snippets")):
        done = run_cli("study", "-c", config, "--stages", stage, "--vary", "model.proposal_ratio=0.2,0.5")
        assert done.returncode == 2
        line = " ".join(done.stderr.split())
        assert f"no {kind} cache here; run `etad cache --what {kind}` first" in line
        assert "Traceback" not in line
        assert not (tmp_path / "work" / "study" / "points").exists()  # no point was started
