"""Interruptions: Ctrl-C then the same command loses nothing, a kill during a save leaves nothing
behind after the next run, and an end-to-end run killed and resumed ends bitwise equal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import demo_config, run_cli, run_etad, snapshot, start_etad

pytestmark = pytest.mark.slow


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 240) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.05)


def _interrupt(process: subprocess.Popen, presses: int = 3) -> str:
    """Ctrl-C, pressed again after 20 s if the command is still running, as a user would: once
    in the full suite (never alone) a single SIGINT was lost and the run went on to its end."""
    for _ in range(presses):
        process.send_signal(signal.SIGINT)
        try:
            return process.communicate(timeout=20)[1]
        except subprocess.TimeoutExpired:
            continue
    return process.communicate(timeout=120)[1]


def _dead_pid() -> int:
    """The pid of a process that has ended (as a killed writer's)."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_ctrl_c_then_the_same_command_loses_nothing(trained, tmp_path):
    import shutil

    root = tmp_path / "space"
    shutil.copytree(trained, root)
    config, ckpt = root / "tiny.yaml", root / "work" / "pretrain" / "checkpoints"
    shutil.rmtree(root / "work" / "pretrain")
    process = start_etad("train", "-c", config, "--set", "train.epochs=100000")
    _wait_for(ckpt / "epoch_002.pt", process)
    err = _interrupt(process)
    assert process.returncode == 130 and "rerun with --resume to continue" in err, err[-2000:]
    kept = snapshot(root / "work" / "pretrain")
    epochs = int(torch.load(ckpt / "last.pt", weights_only=True)["epoch"])
    again = run_cli("train", "-c", config, "--set", "train.epochs=100000")  # the same command
    assert again.returncode == 2 and "pass --resume to continue it or --restart" in again.stderr
    assert snapshot(root / "work" / "pretrain") == kept
    resumed = run_cli("train", "-c", config, "--set", f"train.epochs={epochs + 1}", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    log = [json.loads(x) for x in (root / "work" / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in log if "step" in r]
    assert steps == sorted(set(steps))  # no step logged twice after the resume
    assert [r["epoch"] for r in log if r.get("event") == "epoch"] == list(range(1, epochs + 2))


def test_a_kill_during_a_checkpoint_save_leaves_nothing_after_the_next_run(trained, tmp_path):
    import shutil

    root = tmp_path / "space"
    shutil.copytree(trained, root)
    ckpt = root / "work" / "pretrain" / "checkpoints"
    pid = _dead_pid()
    leftovers = [ckpt / f".epoch_002.pt.tmp{pid}", ckpt / f".last.pt.tmp{pid}"]
    for path in leftovers:
        path.write_bytes(b"half a checkpoint")
    result = run_cli("train", "-c", root / "tiny.yaml", "--resume", "--set", "train.epochs=2")
    assert result.returncode == 0, result.stderr
    assert not any(p.exists() for p in leftovers)
    assert sorted(p.name for p in ckpt.iterdir()) == ["best.pt", "epoch_001.pt", "epoch_002.pt", "last.pt"]


def test_e2e_kill_and_resume_is_bitwise_exact(tmp_path, synth_dir, feature_work):
    """Also the same command in two processes (the straight run in a fresh `etad`, the killed one in
    another, its resume in this one): the weights are bitwise equal, augmentation included."""
    cache = {"snippets_dir": str(feature_work / "work" / "cache" / "snippets")}
    e2e = {"epochs": 3, "lr_step": 2, "snippet_ratio": 0.5, "augment": True}
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    straight.mkdir(), killed.mkdir()
    a = demo_config(straight, synth_dir, cache=cache, e2e=e2e)
    done = run_etad("train", "-c", a, "--e2e")
    assert done.returncode == 0, done.stderr
    b = demo_config(killed, synth_dir, cache=cache, e2e=e2e)
    ckpt = killed / "work" / "e2e" / "checkpoints"
    process = start_etad("train", "-c", b, "--e2e")
    _wait_for(ckpt / "epoch_001.pt", process)
    os.kill(process.pid, signal.SIGKILL)
    process.communicate()
    assert not (ckpt / "epoch_003.pt").exists()
    resumed = run_cli("train", "-c", b, "--e2e", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    wa = torch.load(straight / "work" / "e2e" / "checkpoints" / "last.pt", weights_only=True)
    wb = torch.load(ckpt / "last.pt", weights_only=True)
    for part in ("model", "encoder"):
        assert all(torch.equal(wa[part][k], wb[part][k]) for k in wa[part]), part
