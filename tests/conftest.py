"""Fixtures every level shares: the synthetic dataset, its caches and the tiny trained workspace,
each built once per test process (an xdist worker) and copied by the tests that change them; and
one CPU share per xdist worker. Helpers (ways to run `etad`, config writers) are in tests/helpers.py."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from stages import synth
from tests.helpers import FILES, demo_config, run_cli, write_config, write_features

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def pytest_configure(config) -> None:
    """Under xdist each worker takes its own share of the cores (CPU affinity, which the processes it
    starts inherit) and as many torch / BLAS threads: two workers on two cores never run four
    threads (docs/architecture.md, "Tests", has the measured difference; ETAD_TEST_PIN=0 turns it off
    to measure it again)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    pin = os.environ.get("ETAD_TEST_PIN", "1") != "0"
    if worker is None or workers < 2 or not pin or not hasattr(os, "sched_setaffinity"):
        return
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < workers:
        return
    share = cpus[int(worker.removeprefix("gw")) % workers :: workers]
    os.sched_setaffinity(0, share)
    os.environ.update({name: str(len(share)) for name in THREAD_VARIABLES})
    import torch

    torch.set_num_threads(len(share))


LONGEST_FIRST = ("pipelines", "training")  # the levels whose tests run longest


def pytest_collection_modifyitems(config, items) -> None:
    """The slow tests first, the pipelines' and training's first of all, so that xdist's workers
    finish together instead of one waiting on the last long test; tests marked `cuda` are skipped,
    with the reason, where torch sees no CUDA device."""
    import torch

    def rank(item) -> int:
        level = item.path.parent.name
        slow = "slow" in item.keywords
        return 0 if slow and level in LONGEST_FIRST else 1 if slow else 2

    items.sort(key=rank)  # stable: the file order within each rank
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
    """`etad ARGS...` in this process: tests/helpers.run_cli, for the tests that take it as a fixture."""
    return run_cli


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


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Path:
    """The tiny workspace after `cache --from-npy` and one epoch of `train` (copied by each test)."""
    root = tmp_path_factory.mktemp("tiny")
    for name in ("tiny.yaml", "tiny_anet.json", "tiny_predictions.json"):
        shutil.copy(FILES / name, root / name)
    config = yaml.safe_load((root / "tiny.yaml").read_text())
    config["work_dir"] = "work"
    write_config(root / "tiny.yaml", config)
    write_features(root / "npy", root / "tiny_anet.json")
    assert run_cli("cache", "-c", root / "tiny.yaml", "--from-npy", root / "npy").returncode == 0
    result = run_cli("train", "-c", root / "tiny.yaml")
    assert result.returncode == 0, result.stderr
    return root
