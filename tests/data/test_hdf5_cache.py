"""stages/data/hdf5_cache.py: a cache file damaged after it was written is named, with how to rebuild it."""

from __future__ import annotations

import shutil

import h5py
import pytest

from stages.core.errors import UserError


def test_a_damaged_snippet_cache_file_is_named_with_how_to_rebuild_it(tmp_path, feature_work):
    from stages.data.hdf5_cache import VideoCache

    source = feature_work / "work" / "cache" / "snippets"
    video_id = sorted(p.stem for p in source.glob("*.h5"))[0]
    for damage in ("jpeg", "index"):
        folder = tmp_path / damage
        folder.mkdir()
        shutil.copy(source / f"{video_id}.h5", folder)
        with h5py.File(folder / f"{video_id}.h5", "r+") as f:
            if damage == "jpeg":
                f["jpeg"][...] = 7
            else:
                f["snippet_frames"][0, 0] = 10**6
        with pytest.raises(UserError) as caught:
            VideoCache(folder, "snippets").read(video_id)
        assert str(caught.value).startswith(f"{folder / video_id}.h5: damaged cache file")
        assert "rerun `etad cache --what snippets`" in str(caught.value)
    assert "points at frame 1000000" in str(caught.value)
