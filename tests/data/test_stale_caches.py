"""Every reader refuses a cache written with other settings, in one line naming the setting that
differs and the command that rebuilds it (exit 2, nothing trained)."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import cached_config

pytestmark = pytest.mark.slow

CASES = [  # (the command, a setting changed after caching, the name the refusal gives, the cache)
    (["train"], "data.fps=10", "data.fps (15.0 in the cache, 10.0 now)", "features"),
    (["train"], "model.encoder.crop_size=32", "model.encoder.crop_size (40 in the cache", "features"),
    (["train"], "data.frame_height=40", "data.frame_height / data.frame_width", "features"),
    (["train", "--e2e"], "data.snippet_length=2", "data.snippet_length (8 in the cache, 2 now)", "snippets"),
    (["train", "--e2e"], "cache.codec=raw", "cache.codec ('jpeg' in the cache, 'raw' now)", "snippets"),
    (["train", "--e2e"], "data.temporal_scale=16", "the snippet positions", "snippets"),
    (["train", "--encoder"], "data.fps=10", "data.fps (15.0 in the cache, 10.0 now)", "snippets"),
]


@pytest.mark.parametrize("command,change,named,kind", CASES, ids=[f"{c[0][-1]} {c[1]}" for c in CASES])
def test_a_reader_refuses_a_stale_cache_naming_the_setting(
    tmp_path, cli, synth_dir, feature_work, command, change, named, kind
):
    config = cached_config(tmp_path, synth_dir, feature_work, encoder_train={"subset": "training"})
    result = cli(*command, "-c", config, "--set", change, "--set", "train.epochs=1", "--set", "e2e.epochs=1")
    assert result.returncode == 2, result.output
    line = " ".join(result.output.split())
    assert f"stale {kind} cache, written with {named}" in line
    assert f"rerun `etad cache --what {kind}`" in line
    assert not (tmp_path / "work" / "pretrain").exists() and not (tmp_path / "work" / "e2e").exists()


def test_a_raw_cache_with_other_compression_is_stale(tmp_path, cli, synth_dir):
    from tests.helpers import demo_config

    config = demo_config(tmp_path, synth_dir, cache={"codec": "raw", "compression": "none"})
    assert cli("cache", "-c", config, "--what", "snippets", "--subset", "training").returncode == 0
    result = cli("train", "-c", config, "--e2e", "--set", "cache.compression=gzip", "--set", "e2e.epochs=1")
    assert result.returncode == 2
    assert "cache.compression ('none' in the cache, 'gzip' now)" in " ".join(result.output.split())


def test_infer_refuses_a_stale_cache_and_the_current_one_still_runs(tmp_path, cli, synth_dir, feature_work):
    """Other settings than the training run's are refused by the checkpoint's record of its inputs;
    a checkpoint without that record (an earlier etad's) still meets the cache's own check."""
    config = cached_config(tmp_path, synth_dir, feature_work, train={"epochs": 1})
    assert cli("train", "-c", config).returncode == 0
    stale = cli("infer", "-c", config, "--set", "data.fps=10")
    assert stale.returncode == 2
    assert (
        "trained on features made with other settings than these: data.fps (15.0 at training, 10.0 now)"
        in " ".join(stale.output.split())
    )
    state = torch.load(tmp_path / "work" / "pretrain" / "checkpoints" / "last.pt", weights_only=True)
    del state["inputs"]
    torch.save(state, tmp_path / "unrecorded.pt")
    stale = cli("infer", "-c", config, "--set", "data.fps=10", "--checkpoint", tmp_path / "unrecorded.pt")
    assert stale.returncode == 2
    assert "stale features cache, written with data.fps" in " ".join(stale.output.split())
    assert cli("infer", "-c", config).returncode == 0


def test_a_model_is_never_run_or_resumed_on_current_features_of_other_settings(
    tmp_path, cli, synth_dir, feature_work
):
    """Features cached afresh with another crop are current for the settings that name them, but
    not what the detector was trained on: `etad infer` and `train --resume` refuse them, naming the
    setting (the checkpoint records its inputs), and run again with the training settings."""
    config = cached_config(tmp_path, synth_dir, feature_work, train={"epochs": 1})
    assert cli("train", "-c", config).returncode == 0
    other = ["--set", "model.encoder.crop_size=32", "--set", f"cache.features_dir={tmp_path / 'crop32'}"]
    assert cli("cache", "-c", config, "--what", "features", *other).returncode == 0
    checkpoint = tmp_path / "work" / "pretrain" / "checkpoints" / "last.pt"
    before = checkpoint.read_bytes()

    inferred = cli("infer", "-c", config, *other)
    assert inferred.returncode == 2, inferred.output
    line = " ".join(inferred.output.split())
    assert (
        "trained on features made with other settings than these: model.encoder.crop_size (40 at "
        "training, 32 now)" in line
    )
    assert not (tmp_path / "work" / "results" / "detections.json").exists()

    resumed = cli("train", "-c", config, "--resume", "--set", "train.epochs=2", *other)
    assert resumed.returncode == 2, resumed.output
    assert (
        "the run began on inputs made with other settings: model.encoder.crop_size (40 then, 32 now)"
        in " ".join(resumed.output.split())
    )
    assert checkpoint.read_bytes() == before
    assert cli("infer", "-c", config).returncode == 0
