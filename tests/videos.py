"""Test videos that carry what real files carry (B-frames, decode-order timestamps, variable frame
rate, dropped frames, a header rate that disagrees with the timestamps, a cut file, a 10 fps source,
audio as stream 0), written with PyAV. Every picture shows its own number as a 3x4 grid of black
and white cells (12 bits), which survives resizing and JPEG, so a test reads back which source
picture was stored for each time."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

ROWS, COLS = 3, 4
HEIGHT, WIDTH = 96, 128


def numbered(n: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """A picture showing the number n (< 4096): cell b is white where bit b is set."""
    image = np.zeros((height, width, 3), np.uint8)
    ch, cw = height // ROWS, width // COLS
    for bit in range(ROWS * COLS):
        if (n >> bit) & 1:
            r, c = divmod(bit, COLS)
            image[r * ch : (r + 1) * ch, c * cw : (c + 1) * cw] = 255
    return image


def number_of(image: np.ndarray) -> int:
    """The number a (resized, compressed) picture shows: the mean of each cell's centre."""
    height, width = image.shape[:2]
    ch, cw = height / ROWS, width / COLS
    n = 0
    for bit in range(ROWS * COLS):
        r, c = divmod(bit, COLS)
        y, x = int((r + 0.5) * ch), int((c + 0.5) * cw)
        if image[y - 1 : y + 2, x - 1 : x + 2].mean() > 127:
            n |= 1 << bit
    return n


@dataclass
class NumberedVideo:
    path: Path
    times: np.ndarray  # display time of each picture as written (seconds), in picture order
    duration: float  # what a player plays: first picture to the end of the last


def write(path: Path, times: list[float], *, codec: str = "libx264", rate: float = 30, b_frames: int = 2,
          time_base: Fraction | None = None, audio_first: bool = False) -> NumberedVideo:
    """Pictures 0..len(times)-1 at `times` (seconds, rising), in `path`'s container."""
    import av

    base = time_base or Fraction(1, int(round(rate)))
    with av.open(str(path), "w") as container:
        if audio_first:
            audio = container.add_stream("aac", rate=8000)
        stream = container.add_stream(codec, rate=Fraction(rate).limit_denominator(1001))
        stream.width, stream.height = WIDTH, HEIGHT
        stream.pix_fmt = "rgb24" if codec == "cinepak" else "yuv420p"  # Cinepak codes RGB
        stream.time_base = stream.codec_context.time_base = base
        if codec == "libx264":
            stream.options = {"bf": str(b_frames), "preset": "veryfast", "threads": "1"}
        else:
            stream.codec_context.max_b_frames = b_frames
            stream.bit_rate = 800_000
        for i, t in enumerate(times):
            frame = av.VideoFrame.from_ndarray(numbered(i), format="rgb24")
            frame.pts, frame.time_base = int(round(t / base)), base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if audio_first:
            silence = np.zeros((1, 1024), np.float32)
            samples = av.AudioFrame.from_ndarray(silence, format="fltp", layout="mono")
            samples.sample_rate, samples.pts = 8000, 0
            for packet in audio.encode(samples):
                container.mux(packet)
            for packet in audio.encode():
                container.mux(packet)
    step = float(np.median(np.diff(times))) if len(times) > 1 else 1 / rate
    return NumberedVideo(Path(path), np.asarray(times, float), times[-1] - times[0] + step)


def shown(video: NumberedVideo, fps: float) -> np.ndarray:
    """The picture a player shows at each output time k / fps, k < floor(duration * fps)."""
    count = max(1, int(np.floor(video.duration * fps + 1e-6)))
    rel = video.times - video.times[0]
    return np.maximum(np.searchsorted(rel, np.arange(count) / fps + 1e-6, side="right") - 1, 0)
