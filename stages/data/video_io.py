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
        self._av = PyAVStream(self.path, *self._size)
        self.info = self._av.info

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
            return self._av.frames(idx)
        except VideoError:
            raise
        except Exception as exc:
            raise VideoError(f"{self.path}: decoding failed: {_first_line(exc)}") from None


class PyAVStream:
    """Frames of one video through PyAV, decoded by seeking and streaming: memory holds the frames
    asked for and one group of pictures, never the whole video (what decord's index does natively).

    Opening demuxes the packets without decoding them to learn every frame's presentation time
    (8 bytes a frame: 144 KB for a 10-minute 30 fps video); a frame's index is the rank of its time.
    A read walks the wanted frames in order, decoding forward from where the decoder stands, and
    seeks back to a keyframe only for a frame behind it or more than SEEK_GAP frames ahead."""

    SEEK_GAP = 128

    def __init__(self, path: Path, height: int = -1, width: int = -1) -> None:
        import av

        self.path, self._size = path, (height, width)
        self._container = av.open(str(path))
        self._stream = self._container.streams.video[0]
        stream = self._stream
        times = [p.pts for p in self._container.demux(stream) if p.size > 0 and p.pts is not None]
        self._pts = np.unique(np.asarray(times, dtype=np.int64))
        if not len(self._pts):
            raise VideoError(f"{path}: video has no decodable frames")
        self._decoded = None  # a frame iterator, and the index of the frame it gives next
        self._next = 0
        first = self.frames(np.zeros(1, dtype=np.int64))[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        self.info = VideoInfo(len(self._pts), fps, first.shape[0], first.shape[1])

    def frames(self, idx: np.ndarray) -> np.ndarray:
        """Frames at `idx` (any order, repeats allowed), uint8 [N, H, W, 3]."""
        wanted, where = np.unique(idx, return_inverse=True)
        out = [self._frame(int(i)) for i in wanted]
        return np.stack(out)[where] if out else np.zeros((0, 1, 1, 3), np.uint8)

    def _frame(self, index: int) -> np.ndarray:
        if self._decoded is None or index < self._next or index > self._next + self.SEEK_GAP:
            self._seek(index)
        for frame in self._decoded:
            at = int(np.searchsorted(self._pts, frame.pts)) if frame.pts is not None else self._next
            self._next = at + 1
            if at == index:
                return self._rgb(frame)
            if at > index:  # a frame the stream skips over: its neighbour in time stands in
                return self._rgb(frame)
        self._decoded = None
        raise VideoError(f"{self.path}: frame {index} could not be decoded (the file ends early)")

    def _seek(self, index: int) -> None:
        """Start decoding at the keyframe at or before frame `index`."""
        self._container.seek(int(self._pts[index]), stream=self._stream, backward=True, any_frame=False)
        self._decoded = self._container.decode(self._stream)
        self._next = 0  # unknown until the first frame's time says where the keyframe is

    def _rgb(self, frame) -> np.ndarray:
        height, width = self._size
        if height > 0 and width > 0:
            frame = frame.reformat(width=width, height=height)
        return frame.to_ndarray(format="rgb24")


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
