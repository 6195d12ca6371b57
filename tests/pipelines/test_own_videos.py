"""docs/own_videos.md's start: `etad init` on a folder of videos and a hand-written CSV (file names
as ids, no durations), then the settings it wrote validated and the first stages run; on synthetic
videos in CI and on the shared real videos where ../shared is present."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.helpers import SHARED_DATA, run_cli

pytestmark = pytest.mark.slow


def _init_and_extract(videos, rows: str, tmp_path):
    (tmp_path / "labels.csv").write_text("video,start,end,label,subset\n" + rows)
    out = tmp_path / "run"
    done = run_cli("init", videos, tmp_path / "labels.csv", "--out", out)
    assert done.returncode == 0, done.stderr
    config = out / "settings.yaml"
    assert f"etad extract -c {config}" in " ".join(done.stdout.split())
    settings = yaml.safe_load(config.read_text())
    assert all(str(settings["data"][k]).startswith("/") for k in ("annotations", "video_dir"))
    assert run_cli("config", "validate", config).returncode == 0
    assert run_cli("extract", "-c", config).returncode == 0
    assert run_cli("cache", "-c", config, "--what", "snippets").returncode == 0
    again = run_cli("init", videos, tmp_path / "labels.csv", "--out", out)
    assert again.returncode == 2 and "exists; give another --out folder" in again.stderr  # nothing over it
    return settings, json.loads((out / "annotations.json").read_text())["database"], done


def test_init_on_synthetic_videos(synth_dir, tmp_path):
    database = json.loads((synth_dir / "anet.json").read_text())["database"]
    chosen = [v for v in sorted(database) if database[v]["annotations"]][:4]
    rows = "".join(
        f"{v}.mp4,{a['segment'][0]},{a['segment'][1]},{a['label']},{database[v]['subset']}\n"
        for v in chosen
        for a in database[v]["annotations"]
    )
    settings, converted, _ = _init_and_extract(synth_dir / "videos", rows, tmp_path)
    assert sorted(converted) == chosen  # ids without .mp4
    for v in chosen:  # durations from the files, not the last label's end
        assert converted[v]["duration"] == pytest.approx(database[v]["duration"], abs=0.07)
    assert settings["model"]["classifier"] in ("video", "proposal")


@pytest.mark.skipif(not (SHARED_DATA / "real_videos").is_dir(), reason="../shared/data/real_videos is absent")
def test_init_on_the_shared_real_videos(tmp_path):
    rows = (
        "bikes.mp4,1.0,3.5,ride,training\nbikes.mp4,4,6,stop,training\n"
        "carphone_pristine.mp4,0.5,2.9,talk,training\ncarphone_pristine.mp4,3,3.9,look,training\n"
        "cityCC0.mpg,2,7.5,walk,validation\n"
    )
    settings, converted, done = _init_and_extract(SHARED_DATA / "real_videos", rows, tmp_path)
    assert converted["cityCC0"]["duration"] == pytest.approx(7.6)
    assert converted["bikes"]["duration"] == pytest.approx(10.0)
    assert settings["data"]["train_subset"] == "training" and settings["data"]["eval_subset"] == "validation"
    assert settings["model"]["classifier"] == "proposal"  # two of three videos hold two classes
