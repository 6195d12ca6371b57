"""stages/data/per_video.py: one job per video; a worker killed from outside fails only its videos."""

from __future__ import annotations

import os
import signal


def _dies_on_b(video_id: str) -> str:
    if video_id == "b":
        os.kill(os.getpid(), signal.SIGKILL)
    return video_id


def test_a_killed_worker_fails_the_videos_it_took_and_the_run_ends_cleanly():
    from stages.data.per_video import LOST, run_each

    ended: dict[str, str | None] = {}
    tasks = [(v, _dies_on_b, (v,)) for v in "abcdef"]
    run_each(tasks, 2, lambda video_id, result, reason: ended.__setitem__(video_id, reason))
    assert sorted(ended) == list("abcdef")  # every video accounted for: done, or failed with the reason
    assert ended["b"] == LOST and "rerun" in LOST
    assert all(reason in (None, LOST) for reason in ended.values())
