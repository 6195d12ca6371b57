"""stages/data/fingerprints.py: a feature folder holds one origin, and a detector refuses the other."""

from __future__ import annotations

import shutil

import h5py
import pytest

from stages.api import load_settings
from stages.core.errors import UserError
from tests.helpers import run_cli


def test_a_feature_folder_holds_one_origin_and_a_detector_refuses_the_other(trained, tmp_path):
    from stages.core.checkpoints import load_checkpoint
    from stages.data.fingerprints import ExpectedFingerprint, feature_fingerprint
    from stages.data.hdf5_cache import VideoCache

    root = tmp_path / "tiny"
    shutil.copytree(trained, root)
    config = root / "tiny.yaml"
    settings = load_settings(config, [])
    features = root / "work" / "cache" / "features"
    state = load_checkpoint(root / "work" / "pretrain" / "checkpoints" / "last.pt")
    assert state["inputs"]["features"] == "imported .npy"
    files = sorted(features.glob("*.h5"))
    with h5py.File(files[-1], "r+") as f:  # one file of an encoder, current for these settings
        f.attrs.update(encoder="tiny", fingerprint=feature_fingerprint(settings), source="snippets")
    with pytest.raises(
        UserError, match="features encoder, but vid0.h5 in the same folder holds features imported"
    ):
        VideoCache(features, "features", ExpectedFingerprint.of(settings, "features")).read(files[-1].stem)
    for path in files:  # now all of an encoder: the detector trained on imports refuses them
        with h5py.File(path, "r+") as f:
            f.attrs.update(encoder="tiny", fingerprint=feature_fingerprint(settings), source="snippets")
    result = run_cli("infer", "-c", config, "--eval")
    assert result.returncode == 2
    line = " ".join(result.stderr.split())
    assert "the checkpoint was trained on other features: the features' origin" in line
    assert "'imported .npy' at training, 'encoder' now" in line
