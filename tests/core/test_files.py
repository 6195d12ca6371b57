"""stages/core/files.py: atomic outputs with long names, the disk-full error, units that fit."""

from __future__ import annotations

import errno

import pytest

from stages.api import load_settings
from stages.core.errors import UserError
from tests.helpers import demo_config


# the weak but clean ones
def test_weak_spots_name_the_file_and_use_units_that_fit(tmp_path, synth_dir):
    from stages.core.files import atomic_output, human_bytes, temporary
    from stages.model.frozen_encoder import FeatureEncoder

    assert (
        human_bytes(4_096) == "4.10 kB" and human_bytes(12) == "12 bytes" and human_bytes(3.2e9) == "3.20 GB"
    )
    long_name = "v" * 240 + ".json"
    assert len(temporary(tmp_path / long_name).name.encode()) <= 255
    with atomic_output(tmp_path / long_name) as tmp:  # a 240-byte id's file and its temporary fit
        tmp.write_text("{}")
    target = tmp_path / "detections.json"
    with pytest.raises(OSError) as caught, atomic_output(target):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert caught.value.filename == str(target) and caught.value.errno == errno.ENOSPC
    config = demo_config(tmp_path, synth_dir)
    settings = load_settings(config, ["model.encoder.crop_size=96"])
    with pytest.raises(UserError, match="crop_size 96 is larger than the frames .data.frame_height 48"):
        FeatureEncoder(settings, "cpu")
