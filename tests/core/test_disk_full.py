"""A disk that fills up mid-run (simulated with a file-size limit, as `ulimit -f` sets): one line,
exit code 2, no traceback, nothing half-written left, and the rerun continues."""

from __future__ import annotations

import resource
import signal
import subprocess

import pytest

from tests.helpers import REPO, demo_config, run_cli, run_etad

pytestmark = pytest.mark.slow


def _run_limited(limit_bytes: int, *args) -> subprocess.CompletedProcess:
    def limit() -> None:  # EFBIG from write() instead of SIGXFSZ killing the process
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return run_etad(*args, cwd=REPO, preexec_fn=limit)


def _one_error(result: subprocess.CompletedProcess, text: str) -> None:
    assert result.returncode == 2, result.stderr[-1500:]
    assert "Traceback" not in result.stderr and len(result.stderr) < 2000, result.stderr[-1500:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and text in errors[0], errors


def _leftovers(folder) -> list:
    return [p.name for p in folder.rglob("*") if ".tmp" in p.name]


def test_cache_on_a_full_disk_stops_with_one_line_and_the_rerun_finishes(tmp_path, synth_dir):
    config = demo_config(tmp_path, synth_dir)  # decoded straight from the videos
    result = _run_limited(100_000, "cache", "-c", config, "--what", "snippets")  # a snippet file is ~300 KB
    _one_error(result, "the disk is full (File too large); free space and rerun")
    out = tmp_path / "work" / "cache" / "snippets"
    assert not list(out.glob("*.h5")) and not _leftovers(out)
    done = run_cli("cache", "-c", config, "--what", "snippets")
    assert done.returncode == 0, done.stderr
    assert len(list(out.glob("*.h5"))) == 6


def test_train_on_a_full_disk_keeps_its_checkpoints_and_leaves_no_temporary(
    tmp_path, synth_dir, feature_work
):
    cache = {"features_dir": str(feature_work / "work" / "cache" / "features")}
    config = demo_config(tmp_path, synth_dir, cache=cache, train={"epochs": 2})
    result = _run_limited(200_000, "train", "-c", config)  # a detector checkpoint is ~4 MB
    _one_error(result, "cannot write the checkpoint")
    checkpoints = tmp_path / "work" / "pretrain" / "checkpoints"
    assert not list(checkpoints.glob("*.pt")) and not _leftovers(checkpoints)
