"""Training curves: TensorBoard event files beside metrics.jsonl when TensorBoard is installed (the
dev extra installs it), none when it is not, and `etad report`'s PNG curves either way."""

from __future__ import annotations

import importlib.abc
import json
import shutil
import sys

import pytest

from tests.helpers import run_cli


def _epoch_losses(work) -> list[float]:
    lines = (work / "pretrain" / "metrics.jsonl").read_text().splitlines()
    return [r["train_loss"] for r in map(json.loads, lines) if r.get("event") == "epoch"]


def test_event_files_hold_the_logged_losses_and_a_resume_logs_no_step_twice(trained, tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root = tmp_path / "space"
    shutil.copytree(trained, root)
    config = root / "tiny.yaml"
    every = ("--set", "train.log_every=1")
    assert run_cli("train", "-c", config, "--restart", "--set", "train.epochs=2", *every).returncode == 0
    assert run_cli("train", "-c", config, "--resume", "--set", "train.epochs=3", *every).returncode == 0
    events = EventAccumulator(str(root / "work" / "pretrain" / "tensorboard"))
    events.Reload()
    epochs = events.Scalars("epoch/train_loss")
    assert [e.value for e in epochs] == pytest.approx(_epoch_losses(root / "work"), rel=1e-6)
    steps = [e.step for e in events.Scalars("train/total")]
    assert steps == sorted(set(steps)) and len(steps) > 3  # the resumed run purged nothing it kept


def test_report_plots_curves_without_tensorboard(trained, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if it were not installed
    root = tmp_path / "space"
    shutil.copytree(trained, root)
    shutil.rmtree(root / "work" / "pretrain" / "tensorboard", ignore_errors=True)
    config = root / "tiny.yaml"
    assert run_cli("train", "-c", config, "--restart", "--set", "train.epochs=2").returncode == 0
    assert not (root / "work" / "pretrain" / "tensorboard").exists()
    assert run_cli("infer", "-c", config, "--eval").returncode == 0
    result = run_cli("report", "-c", config)
    assert result.returncode == 0, result.stderr
    png = root / "work" / "report" / "curves.png"
    assert png.read_bytes()[:4] == b"\x89PNG" and str(png) in " ".join(result.stdout.split())
    assert "tensorboard --logdir" not in result.stdout


class _BrokenTensorBoard(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch.utils.tensorboard":
            raise TypeError("protobuf version clash")
        return None


def test_a_broken_tensorboard_never_stops_a_run(tmp_path, monkeypatch):
    from stages.training.curves import TensorBoard

    monkeypatch.delitem(sys.modules, "torch.utils.tensorboard", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_BrokenTensorBoard(), *sys.meta_path])
    board, note = TensorBoard.open(tmp_path / "tensorboard", purge_step=None)
    assert board is None and "fails to import (TypeError: protobuf version clash)" in note
