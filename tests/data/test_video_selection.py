"""stages/data/video_selection.py: which videos a run takes (subsets, --shard K/N, the Slurm array)."""

from __future__ import annotations

import pytest

from stages.core.errors import UserError


def test_subset_lists_and_shards_mean_what_they_say():
    from stages.data.video_selection import Shard, parse_shard, parse_subsets

    settings = None  # parse_subsets reads settings only when --subset is absent
    assert parse_subsets("all,training", settings) is None  # `all` in a list means all
    assert parse_subsets("training, validation", settings) == ["training", "validation"]
    for bad in ("²/2", "1/²", "１/2"):  # str.isdigit() takes superscripts and full-width digits
        with pytest.raises(UserError, match="expected K/N"):
            parse_shard(bad, env={})
    # --array=0-6:2 runs tasks 0, 2, 4, 6: four shards, task 4 is the third
    stepped = {
        "SLURM_ARRAY_TASK_ID": "4",
        "SLURM_ARRAY_TASK_COUNT": "4",
        "SLURM_ARRAY_TASK_MIN": "0",
        "SLURM_ARRAY_TASK_STEP": "2",
    }
    assert parse_shard(None, env=stepped) == Shard(3, 4)
    with pytest.raises(UserError, match="not min 0 \\+ a multiple of step 2"):
        parse_shard(None, env={**stepped, "SLURM_ARRAY_TASK_ID": "3"})
