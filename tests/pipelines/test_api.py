"""docs/api.md's examples, each run as written, in order, in a folder holding what they name: a
trained run (my_run/settings.yaml) and a video in no annotation file (my_videos/clip.mp4)."""

from __future__ import annotations

import re
import shutil

import pytest

from tests.helpers import REPO, cached_config

pytestmark = pytest.mark.slow


def _examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO / "docs" / "api.md").read_text(), flags=re.S)


def test_every_example_of_the_api_docs_runs(tmp_path, monkeypatch, cli, synth_dir, feature_work, capsys):
    run = tmp_path / "my_run"
    run.mkdir()
    config = cached_config(run, synth_dir, feature_work, train={"epochs": 1})
    config.rename(run / "settings.yaml")
    assert cli("train", "-c", run / "settings.yaml").returncode == 0
    (tmp_path / "my_videos").mkdir()
    shutil.copy(synth_dir / "videos" / "synth_0005.mp4", tmp_path / "my_videos" / "clip.mp4")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    examples = _examples()
    assert len(examples) >= 5
    for code in examples:
        exec(compile(code, "docs/api.md", "exec"), namespace)
    printed = capsys.readouterr().out
    found, detector = namespace["found"], namespace["detector"]
    # the API's detections of the clip are the command's (`etad infer --video`), to float rounding
    result = cli("infer", "-c", run / "settings.yaml", "--video", tmp_path / "my_videos" / "clip.mp4")
    assert result.returncode == 0, result.output
    import json

    written = json.loads((run / "work" / "results" / "clip.json").read_text())["results"]["clip"]
    assert [d["label"] for d in written] == [d["label"] for d in found.detections]
    assert [d["score"] for d in written] == pytest.approx([d["score"] for d in found.detections], abs=1e-6)
    assert found.video_id == "clip" and found.duration > 0 and detector.classes
    assert namespace["report"].average == pytest.approx(namespace["done"].report.average)
    assert (tmp_path / "my_run" / "why" / "diagnosis.json").is_file()
    assert "average mAP" in printed
