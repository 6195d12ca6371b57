"""The PyAV fallback reader (machines without decord: ARM, macOS) on a long real mp4: the frames of
a full decode, in any order, with memory that does not grow with the video's length."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from stages.data.video_io import VideoReader, decord_available, write_video

pytestmark = pytest.mark.slow

FRAMES, HEIGHT, WIDTH = 2000, 240, 320  # 8 groups of pictures (x264 keyint 250); 460 MB decoded


def _pattern(count: int):
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    for i in range(count):
        frame = np.empty((HEIGHT, WIDTH, 3), np.uint8)
        frame[..., 0], frame[..., 1], frame[..., 2] = (x + 3 * i) % 256, (2 * y + i) % 256, (7 * i) % 256
        yield frame


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    path = tmp_path_factory.mktemp("long") / "long.mp4"
    assert write_video(path, _pattern(FRAMES), 30.0) == FRAMES
    return path


def _full_decode(path, height: int, width: int) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        return np.stack([f.reformat(width=width, height=height).to_ndarray(format="rgb24")
                         for f in container.decode(container.streams.video[0])])  # fmt: skip


def test_seeking_reader_gives_the_frames_of_a_full_decode(long_video):
    everything = _full_decode(long_video, 60, 80)
    reader = VideoReader(long_video, "pyav", 60, 80)
    assert len(reader) == FRAMES == len(everything) and reader.info.fps == pytest.approx(30.0)
    rng = np.random.default_rng(0)
    reads = [np.arange(0, 300), rng.integers(0, FRAMES, 60), np.array([FRAMES - 1, 0, 1200, 1200, 3]),
             np.arange(FRAMES - 260, FRAMES), np.array([700, 250, 249, 251])]  # fmt: skip
    for indices in reads:  # forward runs, random jumps, backward seeks, repeats, keyframe edges
        assert np.array_equal(reader.get_frames(indices), everything[indices]), indices[:4]
    if decord_available():  # at the native size both backends decode the same pixels
        native = rng.integers(0, FRAMES, 20)
        decoded = VideoReader(long_video, "decord").get_frames(native)
        assert np.array_equal(VideoReader(long_video, "pyav").get_frames(native), decoded)


MEASURE = """
import json, resource, sys
import av, numpy as np
from stages.data.video_io import VideoReader
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # opening counts: the old reader decoded there
reader = VideoReader(sys.argv[1], "pyav")
seen = 0
for start in range(0, len(reader), 64):  # as `etad extract` reads: ascending batches
    seen += len(reader.get_frames(np.arange(start, min(start + 64, len(reader)))))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"frames": seen, "grew_mib": (after - before) / 1024}))
"""


def test_peak_memory_does_not_grow_with_the_video(long_video):
    """Reading every frame of a 460 MB-decoded video raises the peak RSS by about one batch."""
    result = subprocess.run([sys.executable, "-c", MEASURE, str(long_video)], capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    measured = json.loads(result.stdout)
    decoded_mib = FRAMES * HEIGHT * WIDTH * 3 / 2**20
    assert measured["frames"] == FRAMES
    assert measured["grew_mib"] < decoded_mib / 8, (measured, decoded_mib)  # the old reader held it all
