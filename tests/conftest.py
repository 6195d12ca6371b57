"""Shared fixtures: the synthetic dataset (written once per session), a CLI runner, and ../shared data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from etad_cli.app import app
from stages import synth

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """A small synthetic dataset: 6 videos (4 training, 2 validation), 4 classes, 64x48 frames."""
    out = tmp_path_factory.mktemp("synth")
    synth.run(out, videos=6, classes=4, seed=7, width=64, height=48)
    return out


@pytest.fixture
def cli():
    """Run `etad ARGS...` in-process; returns the click Result (exit_code, stdout, stderr)."""
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, [str(a) for a in args])

    return invoke


def run_etad(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the real `etad` entry point in a subprocess (to see exit codes and tracebacks as a user does)."""
    return subprocess.run(
        [sys.executable, "-m", "etad_cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def shared_file(*parts: str) -> Path:
    """A file under ../shared/data, or skip the test when that folder is absent (a user's clone)."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"reference data {path} is absent (it lives in ../shared beside the checkout)")
    return path
