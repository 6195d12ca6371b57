"""Shared fixtures: the synthetic dataset (written once per session), a CLI runner, and ../shared data."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from etad_cli.app import app
from stages import synth

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
DATA = REPO / "tests" / "data"  # small fixture files written by hand


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked `cuda` are skipped, with the reason, where torch sees no CUDA device."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False here)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """A small synthetic dataset: 6 videos (4 training, 2 validation), 4 classes, 64x48 frames."""
    out = tmp_path_factory.mktemp("synth")
    synth.run(out, videos=6, classes=4, seed=7, width=64, height=48)
    return out


@pytest.fixture(scope="session")
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


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """Run `etad ARGS...` in this process (fast: torch is imported once) with run_etad's result.
    An exception that escapes a command is raised here: a user would have seen its traceback."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return subprocess.CompletedProcess(list(args), result.exit_code, result.stdout, result.stderr)


def shared_file(*parts: str) -> Path:
    """A file under ../shared/data, or skip the test when that folder is absent (a user's clone)."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"reference data {path} is absent (it lives in ../shared beside the checkout)")
    return path


def demo_config(folder: Path, synth: Path, **sections) -> Path:
    """A copy of examples/demo.yaml pointing at `synth` and writing under `folder`; `sections` update
    top-level sections, e.g. train={"epochs": 2}."""
    config = yaml.safe_load((REPO / "examples" / "demo.yaml").read_text())
    config["work_dir"] = str(folder / "work")
    config["data"].update(annotations=str(synth / "anet.json"), video_dir=str(synth / "videos"))
    config["model"]["encoder"]["checkpoint"] = None  # a random tiny encoder unless a test gives one
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="session")
def feature_work(tmp_path_factory, synth_dir) -> Path:
    """The synthetic dataset extracted and cached (snippets and tiny-encoder features); returns the
    folder holding config.yaml and work/. Tests copy what they change."""
    from stages import cache, extract
    from stages.core.settings_file import load_settings

    folder = tmp_path_factory.mktemp("features")
    config = demo_config(folder, synth_dir)
    s = load_settings(config, [])
    extract.run(s)
    cache.run(s, what="snippets")
    cache.run(s, what="features")
    return folder


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under a folder and a hash of its content."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "logs" not in p.parts
    }


def write_features(folder: Path, annotations: Path, width: int = 8) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for video_id in json.loads(annotations.read_text())["database"]:
        np.save(folder / f"{video_id}.npy", rng.standard_normal((20, width)).astype(np.float32))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """The tiny workspace after `cache --from-npy` and one epoch of `train` (copied by each test)."""
    root = tmp_path_factory.mktemp("tiny")
    for name in ("tiny.yaml", "tiny_anet.json", "tiny_predictions.json"):
        shutil.copy(DATA / name, root / name)
    config = yaml.safe_load((root / "tiny.yaml").read_text())
    config["work_dir"] = "work"
    (root / "tiny.yaml").write_text(yaml.safe_dump(config))
    write_features(root / "npy", root / "tiny_anet.json")
    assert run_cli("cache", "-c", root / "tiny.yaml", "--from-npy", root / "npy").returncode == 0
    result = run_cli("train", "-c", root / "tiny.yaml")
    assert result.returncode == 0, result.stderr
    return root
