"""Reading and writing videos behind one small interface.

decord is the default reader (fast random access; what ETAD uses). It is unmaintained and ships
x86-64 wheels only, so PyAV (which bundles FFmpeg) is the fallback reader and the writer of test and
synthetic videos. Nothing else in the project imports decord or av directly.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

import numpy as np

from stages.core.files import atomic_output

Backend = Literal["auto", "decord", "pyav"]


class VideoError(Exception):
    """A video that cannot be opened or decoded; the message says why."""


@dataclass
class VideoInfo:
    num_frames: int
    fps: float
    height: int
    width: int


def decord_available() -> bool:
    try:
        import decord  # noqa: F401
    except ImportError:
        return False
    return True


class VideoReader:
    """Random access to the frames of one video, as uint8 RGB arrays [N, H, W, 3].

    `height`/`width` (both or neither) resize while decoding, as decord does natively.
    """

    def __init__(self, path: Path, backend: Backend = "auto", height: int = -1, width: int = -1) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise VideoError(f"{self.path}: no such video file")
        if backend == "auto":
            backend = "decord" if decord_available() else "pyav"
        self.backend = backend
        self._size = (height, width)
        try:
            if backend == "decord":
                self._open_decord()
            else:
                self._open_pyav()
        except VideoError:
            raise
        except Exception as exc:  # decord and av raise many types for a broken file
            raise VideoError(f"{self.path}: cannot open video ({backend}): {_first_line(exc)}") from None
        if self.info.num_frames <= 0:
            raise VideoError(f"{self.path}: video has no frames")

    def _open_decord(self) -> None:
        import decord

        height, width = self._size
        self._vr = decord.VideoReader(
            str(self.path), ctx=decord.cpu(0), width=width, height=height, num_threads=1
        )
        first = self._vr[0].shape
        self.info = VideoInfo(len(self._vr), float(self._vr.get_avg_fps()), int(first[0]), int(first[1]))

    def _open_pyav(self) -> None:
        import av

        height, width = self._size
        frames = []
        with av.open(str(self.path)) as container:
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 0)
            for frame in container.decode(stream):
                if height > 0 and width > 0:
                    frame = frame.reformat(width=width, height=height)
                frames.append(frame.to_ndarray(format="rgb24"))
        if not frames:
            raise VideoError(f"{self.path}: video has no decodable frames")
        self._frames = np.stack(frames)
        self.info = VideoInfo(len(frames), fps, frames[0].shape[0], frames[0].shape[1])

    def __len__(self) -> int:
        return self.info.num_frames

    def get_frames(self, indices: Iterable[int] | np.ndarray) -> np.ndarray:
        """Frames at the given indices (any order, repeats allowed), uint8 [N, H, W, 3]."""
        idx = np.asarray(list(indices) if not isinstance(indices, np.ndarray) else indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.info.num_frames):
            raise VideoError(f"{self.path}: frame index out of range 0..{self.info.num_frames - 1}")
        try:
            if self.backend == "decord":
                return self._vr.get_batch(idx.tolist()).asnumpy()
            return self._frames[idx]
        except VideoError:
            raise
        except Exception as exc:
            raise VideoError(f"{self.path}: decoding failed: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else exc.__class__.__name__


def write_video(path: Path, frames: Iterable[np.ndarray], fps: float, crf: int = 18) -> int:
    """Write uint8 RGB frames [H, W, 3] to an H.264 mp4 with PyAV; atomically (temp name, then rename).

    Returns the number of frames written. H and W must be even (yuv420p).
    """
    import av

    count = 0
    with atomic_output(Path(path)) as tmp, av.open(str(tmp), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.pix_fmt = "yuv420p"
        # one thread and no macroblock tree: x264's mbtree code gave different bytes for the same
        # frames depending on what the process had imported before (docs/synthetic_dataset.md)
        stream.options = {"crf": str(crf), "preset": "veryfast", "threads": "1", "x264-params": "mbtree=0"}
        for frame in frames:
            if count == 0:
                stream.height, stream.width = frame.shape[0], frame.shape[1]
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            for packet in stream.encode(video_frame):
                container.mux(packet)
            count += 1
        for packet in stream.encode():
            container.mux(packet)
    return count
