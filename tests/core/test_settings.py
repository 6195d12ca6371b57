"""Settings: validation errors are one clean line each with exit code 2; overrides; path resolution."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from stages.core.errors import UserError
from stages.core.settings import Settings
from stages.core.settings_file import load_settings
from stages.model.encoder import ENCODERS
from tests.helpers import REPO, assert_clean_failure, run_cli


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("train:\n  bogus: 1\n", ["train.bogus: unknown key"]),
        ("train:\n  lr: abc\n", ["train.lr: got 'abc'", "valid number"]),
        ("model:\n  proposal_ratio: 1.5\n", ["model.proposal_ratio: got 1.5", "less than or equal to 1"]),
        ("e2e:\n  snippet_ratio: -0.1\n", ["e2e.snippet_ratio: got -0.1", "greater than or equal to 0"]),
        ("data:\n  dataset: kinetics\n", ["data.dataset: got 'kinetics'", "expected one of anet, thumos"]),
        ("data:\n  protocol: kinetics\n", ["data.protocol: got 'kinetics'", "expected one of anet, thumos"]),
        ("train:\n  lr: [1\n  x: 2\n", ["invalid YAML: line 3"]),
    ],
)
def test_each_bad_setting_is_one_line_naming_file_key_value(tmp_path, text, expected):
    path = write(tmp_path, text)
    lines = assert_clean_failure(run_cli("config", "validate", path), str(path), *expected)
    assert len(lines) == 1


def test_several_problems_give_one_line_each(tmp_path):
    path = write(tmp_path, "train:\n  lr: abc\n  bogus: 1\nmodel:\n  proposal_ratio: 2\n")
    lines = assert_clean_failure(
        run_cli("config", "validate", path), "train.lr", "train.bogus", "proposal_ratio"
    )
    assert len(lines) == 3
    assert all(str(path) in line for line in lines)


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    assert_clean_failure(run_cli("config", "validate", missing), f"{missing}: no such file")


def test_top_level_must_be_a_mapping(tmp_path):
    path = write(tmp_path, "- a\n- b\n")
    assert_clean_failure(run_cli("config", "show", path), "expected a mapping")


def test_overrides_apply_and_are_validated(tmp_path, cli):
    path = write(tmp_path, "train:\n  lr: 0.001\n")
    shown = cli(
        "config", "show", path, "--set", "train.lr=1e-4", "--set", "model.stage_iou_thresholds=[0.5, 0.6]"
    )
    assert shown.returncode == 0, shown.output
    data = yaml.safe_load(shown.stdout)
    assert data["train"]["lr"] == pytest.approx(1e-4)
    assert data["model"]["stage_iou_thresholds"] == [0.5, 0.6]
    bad = run_cli("config", "validate", path, "--set", "train.lr=-1")
    assert_clean_failure(bad, "--set train.lr=-1: train.lr: got -1")
    assert_clean_failure(run_cli("config", "validate", path, "--set", "nosuch.key=1"), "nosuch: unknown key")
    assert_clean_failure(run_cli("config", "validate", path, "--set", "train.lr"), "expected KEY=VALUE")


def test_relative_paths_resolve_against_the_yaml_folder(tmp_path):
    sub = tmp_path / "configs"
    sub.mkdir()
    path = write(sub, "work_dir: ../out\ndata:\n  annotations: ann.json\n  video_dir: /abs/videos\n")
    settings = load_settings(path)
    assert settings.work_dir == (tmp_path / "out").resolve()
    assert settings.data.annotations == (sub / "ann.json").resolve()
    assert settings.data.video_dir == Path("/abs/videos")


def test_defaults_follow_the_original_etad_anet_recipe():
    s = Settings()
    assert (s.data.fps, s.data.temporal_scale, s.data.snippet_length) == (15.0, 128, 16)
    assert (s.model.in_channels, s.model.roi_size, s.model.proposal_ratio) == (None, 24, 0.06)
    assert ENCODERS[s.model.encoder.name].out_dim == 512  # in_channels follows the encoder
    assert s.model.stage_iou_thresholds == [0.7, 0.8, 0.9]
    assert (s.train.lr, s.train.batch_size, s.train.epochs, s.train.lr_step) == (1e-3, 16, 6, 5)
    assert (s.e2e.lr, s.e2e.encoder_lr, s.e2e.snippet_ratio, s.e2e.chunk_size) == (5e-4, 5e-7, 0.3, 4)
    assert (s.infer.soft_nms_sigma, s.infer.top_k) == (0.35, 100)


def test_video_name_must_hold_the_id():
    with pytest.raises(UserError, match="data.video_name"):
        load_settings(None, ["data.video_name=video.mp4"])
    with pytest.raises(UserError, match="data.video_name"):
        load_settings(None, ["data.video_name=../{id}.mp4"])


@pytest.mark.parametrize("example", sorted((REPO / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_validates(example, cli):
    result = cli("config", "validate", example)
    assert result.returncode == 0, result.output
    assert "valid" in result.stdout


def test_settings_reference_page_matches_the_models(cli):
    """docs/settings.md is generated (`make docs`): it must be current and list every key."""
    from pydantic import BaseModel

    from stages.api import registries
    from stages.core.settings_reference import settings_reference

    page = (REPO / "docs" / "settings.md").read_text()
    assert page == settings_reference(registries()), "docs/settings.md is stale: run `make docs`"
    assert cli("config", "reference").output == page
    for section, field in Settings.model_fields.items():
        model = field.annotation
        nested = isinstance(model, type) and issubclass(model, BaseModel)
        for key in [f"{section}.{name}" for name in model.model_fields] if nested else [section]:
            assert f"`{key}`" in page, key
