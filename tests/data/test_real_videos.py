"""Frames by time on real files (../shared/data/real_videos: H.264 with and without B-frames and
audio, a 29.97 fps test sequence, an MPEG-2 program stream), for every decoder: the frame stored
for each time is the picture a player shows then, found by content. The reference decodes each
file forward with PyAV at its native size and places every picture at its own timestamp from the
file's start; each stored frame is matched to the nearest of the pictures around the expected one.
Skipped where ../shared is absent."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from stages.data.video_io import TimedVideo
from tests.data.test_video_io import DECODERS
from tests.helpers import SHARED_DATA

pytestmark = pytest.mark.slow
REAL = SHARED_DATA / "real_videos"
FILES = sorted(p for p in REAL.glob("*") if p.suffix in {".mp4", ".mpg"}) if REAL.is_dir() else []
FPS, SIZE = 15.0, (128, 171)


def _signature(picture: np.ndarray) -> np.ndarray:
    """Grey 32x24, mean and contrast taken out: the decoders' colour conversions and scalers differ
    a little, pictures a frame apart differ more."""
    grey = Image.fromarray(np.ascontiguousarray(picture)).convert("L").resize((32, 24), Image.BOX)
    values = np.asarray(grey, np.float32)
    return (values - values.mean()) / (values.std() + 1e-3)


def _reference(path) -> tuple[np.ndarray, list[np.ndarray]]:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        start = (container.start_time or 0) / 1e6
        pictures = [
            (f.pts * float(stream.time_base) - start, _signature(f.to_ndarray(format="rgb24")))
            for f in container.decode(stream)
        ]
    return np.array([t for t, _ in pictures]), [s for _, s in pictures]


@pytest.fixture(scope="module")
def references():
    return {path.name: _reference(path) for path in FILES}


@pytest.mark.skipif(not FILES, reason=f"{REAL} is absent (the shared real videos)")
@pytest.mark.parametrize("decoder", DECODERS)
def test_real_files_store_the_picture_a_player_shows(references, decoder):
    for path in FILES:
        times, signatures = references[path.name]
        video = TimedVideo(path, FPS, decoder, height=SIZE[0], width=SIZE[1])
        stored = np.concatenate(list(video.frames(64)))
        facts = video.finish()
        played = times[-1] + np.median(np.diff(times))
        assert abs(len(stored) / FPS - played) < 1 / FPS, (path.name, len(stored), played)  # the whole video
        expected = np.maximum(
            np.searchsorted(times, np.arange(len(stored)) / FPS + 1e-3, side="right") - 1, 0
        )
        offsets = []
        for frame, want in zip(stored, expected, strict=True):
            mine = _signature(frame)
            near = range(max(0, want - 3), min(len(signatures), want + 4))
            distance = {j: float(np.abs(mine - signatures[j]).mean()) for j in near}
            best = min(distance, key=distance.get)
            offsets.append(0 if distance[want] <= distance[best] + 0.01 else best - want)
        offsets = np.abs(np.array(offsets))
        assert np.mean(offsets == 0) >= 0.98 and np.mean(offsets >= 2) < 0.01, (
            path.name,
            np.flatnonzero(offsets),
        )
        assert facts.anomalies(FPS) == [], (path.name, facts.anomalies(FPS))  # none of them is irregular
