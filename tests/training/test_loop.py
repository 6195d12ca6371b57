"""stages/training/loop.py: a resume refuses other optimisation settings and drops metrics lines that
are not records."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from stages.api import load_settings
from stages.core.errors import UserError
from tests.helpers import run_cli


def test_resume_refuses_other_optimisation_settings_with_the_one_that_changed(trained, tmp_path):
    from stages.core.checkpoints import load_checkpoint
    from stages.training.resume import _same_settings

    root = tmp_path / "tiny"
    shutil.copytree(trained, root)
    config = root / "tiny.yaml"
    changes = {
        "train.optimizer=adam": "train.optimizer",
        "train.batch_size=2": "train.batch_size",
        "train.lr_step=2": "train.lr_step",
    }
    for change, key in changes.items():
        result = run_cli("train", "-c", config, "--resume", "--set", change, "--set", "train.epochs=2")
        assert result.returncode == 2, change
        assert f"the run began with {key}=" in result.stderr and "Traceback" not in result.stderr
    assert (
        run_cli("train", "-c", config, "--resume", "--set", "train.epochs=2").returncode == 0
    )  # more epochs: fine
    state = load_checkpoint(root / "work" / "pretrain" / "checkpoints" / "last.pt")
    for change in ("e2e.encoder_lr=0", "model.encoder.frozen_stages=1"):
        key = change.partition("=")[0]
        with pytest.raises(UserError, match=f"began with {key}="):
            _same_settings(Path("last.pt"), state, load_settings(config, [change]), "e2e")


def test_a_resume_drops_metrics_lines_that_are_not_records(tmp_path):
    from stages.training.metrics_log import MetricsLog

    path = tmp_path / "metrics.jsonl"
    lines = [
        "[1, 2]",
        '{"epoch": "one"}',
        '{"epoch": 1.5}',
        '"text"',
        '{"epoch": 1, "loss": 2}',
        '{"epoch": 2}',
    ]
    path.write_text("\n".join(lines) + "\n")
    MetricsLog(path, keep_epochs=1).close()
    assert path.read_text() == '{"epoch": 1, "loss": 2}\n'
