"""The same command twice gives bit-identical checkpoints on the CPU: each run is a fresh `etad`
process (its own hash seed, thread pool and loader), as when a user reruns a command."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import demo_config, run_etad

pytestmark = pytest.mark.slow

# flag -> (run folder, its settings section, the section's settings for a short run). `train` and
# `train --e2e` are compared across processes by the resume tests (tests/training/test_train.py
# test_resume_gives_identical_weights, test_interrupts.py test_e2e_kill_and_resume_is_bitwise_exact:
# the straight run in a fresh process, the other in this one)
RUNS = {
    "--encoder": ("encoder", "encoder_train", {"epochs": 2, "clips_per_epoch": 32, "subset": "training"}),
}


def _weights(path) -> dict[str, torch.Tensor]:
    state = torch.load(path, weights_only=True)
    parts = [part for part in ("model", "encoder") if part in state]
    return {f"{part}.{k}": v for part in parts for k, v in state[part].items()}


@pytest.mark.parametrize("flag", list(RUNS), ids=["train-encoder"])
def test_the_same_command_twice_gives_bit_identical_checkpoints(tmp_path, synth_dir, feature_work, flag):
    folder_name, section, values = RUNS[flag]
    cache = {
        "snippets_dir": str(feature_work / "work" / "cache" / "snippets"),
        "features_dir": str(feature_work / "work" / "cache" / "features"),
    }
    checkpoints = []
    for attempt in ("first", "second"):
        folder = tmp_path / attempt
        folder.mkdir()
        config = demo_config(folder, synth_dir, cache=cache, **{section: values})
        result = run_etad("train", "-c", config, *([flag] if flag else []))
        assert result.returncode == 0, result.stderr
        checkpoints.append(_weights(folder / "work" / folder_name / "checkpoints" / "last.pt"))
    first, second = checkpoints
    assert first.keys() == second.keys() and len(first) > 0
    different = [k for k in first if not torch.equal(first[k], second[k])]
    assert not different, different[:5]
