"""`make demo` at a reduced size: every artefact of the pipeline exists and the final table is printed."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

from tests.helpers import cpu_share, make

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed"),
]


def test_demo_pipeline_writes_every_artefact_and_the_final_table(tmp_path):
    demo = tmp_path / "demo"
    small = (
        "--set train.epochs=2 --set train.lr_step=2 --set e2e.epochs=1 --set encoder_train.epochs=1 "
        "--set encoder_train.clips_per_epoch=64 --set model.classifier_refit_steps=50 "
        f"--set threads={cpu_share()}"
    )
    done = make("demo", DEMO_DIR=demo, DEMO_VIDEOS=8, DEMO_PRETRAIN_VIDEOS=3, SET=small)
    database = json.loads((demo / "data" / "anet.json").read_text())["database"]
    assert len(database) == 11 and len(list((demo / "data" / "videos").glob("*.mp4"))) == 11
    assert sum(r["subset"] == "pretraining" for r in database.values()) == 3
    for vid in database:
        assert (demo / "frames" / f"{vid}.h5").is_file() and (demo / "frames" / f"{vid}.json").is_file()
        assert (demo / "cache" / "snippets" / f"{vid}.h5").is_file()
        assert (demo / "cache" / "features" / f"{vid}.h5").is_file()
    assert (demo / "encoder" / "encoder_tsp.pth").is_file()  # TSP pretraining, read by the next stages
    for run in ("encoder", "pretrain", "e2e", "control/e2e"):
        assert (demo / run / "checkpoints" / "last.pt").is_file()
        assert (demo / run / "metrics.jsonl").is_file()
    validation = sorted(v for v, r in database.items() if r["subset"] == "validation")
    for name in ("frozen", "e2e", "control"):
        results = json.loads((demo / "results" / f"{name}.json").read_text())["results"]
        assert sorted(results) == validation
        metrics = json.loads((demo / "results" / f"{name}.metrics.json").read_text())
        assert len(metrics["mAP"]) == 10 and 0.0 <= metrics["average_mAP"] <= 1.0
    assert len(list((demo / "results" / "frozen" / "plots").glob("*.png"))) == 2
    e2e = demo / "results" / "e2e"  # the model's own folder: its diagnosis and view
    diagnosis = json.loads((e2e / "diagnosis" / "diagnosis.json").read_text())  # etad diagnose
    assert 0.0 <= diagnosis["average_mAP_N"] <= 1.0
    assert set(diagnosis["sensitivity"]) >= {"coverage", "length"}
    page = (e2e / "view" / "index.html").read_text()  # etad view, with the diagnosis figures
    assert '"figures":[{"name":"false_positive_analysis"' in page and '"src":"' in page
    assert len(list((e2e / "view" / "subtitles").glob("*.srt"))) == len(validation)
    runs = [json.loads(line) for line in (demo / "logs" / "stages.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in runs] == [
        "extract",
        "cache snippets",
        "train --encoder",
        "cache features",
        "train",
        "infer",
        "infer",
        "train --e2e",
        "infer",
        "infer",
        "infer",
        "infer",
    ]
    assert all(r["seconds"] > 0 and r["peak_rss_mib"] > 0 for r in runs)
    control = [
        json.loads(line) for line in (demo / "control" / "logs" / "stages.jsonl").read_text().splitlines()
    ]
    assert [r["stage"] for r in control] == ["train --e2e"]
    state = torch.load(demo / "control" / "e2e" / "checkpoints" / "last.pt", weights_only=True)
    assert state["settings"]["e2e"]["encoder_lr"] == 0
    # the final table: one row per stage with its time and peak memory, then the models' mAP
    report = done.stdout[done.stdout.rindex("stages:") :]
    for stage in ("extract", "cache snippets", "train --encoder", "cache features", "train --e2e", "total"):
        assert re.search(rf"{re.escape(stage)}\s.*\d", report), stage
    for model, name in (("frozen features", "frozen"), ("end to end", "e2e"), ("end to end", "control")):
        average = json.loads((demo / "results" / f"{name}.metrics.json").read_text())["average_mAP"]
        assert re.search(rf"{model}\s.*{name}.json\s.*{re.escape(f'{average:.2%}')}", report), (model, report)
        auc = json.loads((demo / "results" / f"{name}_proposals.metrics.json").read_text())["auc"]
        assert re.search(rf"{model}\s.*{name}_proposals.json\s.*AUC {auc:.2f}", report), (model, report)
