"""The three decoders behind one small interface, and the display transform.

Each decoder hands out the pictures of one stream in its output order, read forward from the
file's start (never a seek: seeking lost a whole group of pictures on an MPEG program stream with
decord and torchcodec alike), each with its own raw timestamp where the decoder gives one:

- PyAV (bundles FFmpeg): the packets of the chosen stream; a packet that fails to decode is
  skipped (as players do) and noted.
- torchcodec (PyTorch's decoder, FFmpeg's shared libraries): its sequential next-frame call.
- decord (ETAD's reader): batches of consecutive pictures; no timestamps of their own.

Pictures are upright as a player shows them: FFmpeg's rule for the display matrix (rotations by
quarter turns and flips, as `ffmpeg` applies it), whatever the decoder did of it (decord and
torchcodec rotate by the matrix's angle but do not flip).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from math import atan2, degrees, floor, hypot
from pathlib import Path

import numpy as np

from stages.data.video_index import captured_stderr, first_line

BATCH = 32  # consecutive pictures decord decodes per call
MAX_FAILURES = 10_000  # packets in a row that do not decode before a decoder gives up
# a picture made on demand (rgb uint8 [h, w, 3]: converting only the pictures a frame shows saves
# half the conversions at 15 fps from 30), and its raw pts (or None)
Decoded = tuple[Callable[[], np.ndarray], int | None]

# ---- the display transform: the 8 ways to turn a picture by quarter turns and flips ----------

TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "none": lambda a: a,
    "clock": lambda a: np.rot90(a, -1),
    "cclock": lambda a: np.rot90(a, 1),
    "rotate 180": lambda a: a[::-1, ::-1],
    "hflip": lambda a: a[:, ::-1],
    "vflip": lambda a: a[::-1],
    "transpose": lambda a: a.swapaxes(0, 1),
    "antitranspose": lambda a: np.rot90(a, -1)[::-1],
}
TRANSPOSING = {"clock", "cclock", "transpose", "antitranspose"}


def rotation(matrix: list[int] | None) -> int:
    """The clockwise quarter-turn angle a player turns the picture by (0, 90, 180, 270), FFmpeg's
    `get_rotation`; 0 for an angle that is not a quarter turn."""
    if not matrix:
        return 0
    m = [v / 65536.0 for v in matrix]
    if hypot(m[0], m[3]) == 0 or hypot(m[1], m[4]) == 0:
        return 0
    theta = -round(-degrees(atan2(m[1] / hypot(m[1], m[4]), m[0] / hypot(m[0], m[3]))))
    theta -= 360 * floor(theta / 360 + 0.9 / 360)
    return int(theta) if theta in (0, 90, 180, 270) else 0


def display_transform(matrix: list[int] | None) -> str:
    """The transform `ffmpeg` applies for a display matrix (fftools' autorotate, flips included)."""
    if not matrix:
        return "none"
    theta = rotation(matrix)
    if theta == 90:
        return "transpose" if matrix[3] > 0 else "clock"
    if theta == 270:
        return "antitranspose" if matrix[3] < 0 else "cclock"
    if theta == 180:
        flips = (matrix[0] < 0, matrix[4] < 0)
        return {(True, True): "rotate 180", (True, False): "hflip", (False, True): "vflip"}.get(flips, "none")
    return "vflip" if matrix[4] < 0 else "none"


def rotated_by_angle(matrix: list[int] | None) -> str:
    """What decord and torchcodec do with a display matrix: turn by its angle, flips ignored."""
    return {0: "none", 90: "clock", 180: "rotate 180", 270: "cclock"}[rotation(matrix)]


def correction(done: str, wanted: str) -> str:
    """The transform that takes a picture already turned by `done` to one turned by `wanted`."""
    probe = np.arange(6).reshape(2, 3)
    target, have = TRANSFORMS[wanted](probe), TRANSFORMS[done](probe)
    for name, apply in TRANSFORMS.items():
        turned = apply(have)
        if turned.shape == target.shape and np.array_equal(turned, target):
            return name
    raise AssertionError("the eight transforms are a group")


# ---- the decoders -------------------------------------------------------------------------------


class PyAVPictures:
    """PyAV's pictures of stream `stream`, at `size` (height, width; the decoded shape where
    non-positive) before the display transform."""

    def __init__(self, path: Path, stream: int, size: tuple[int, int], notes: list[str]) -> None:
        import av

        self._av, self.size, self.notes = av, size, notes
        with captured_stderr(notes):
            self._container = av.open(str(path))
        self._stream = self._container.streams[stream]
        self.position = 0  # pictures handed out so far
        self.failed = 0  # packets that did not decode

    def __iter__(self) -> Iterator[Decoded]:
        height, width = self.size
        with captured_stderr(self.notes):
            for packet in self._container.demux(self._stream):
                try:
                    pictures = packet.decode()
                except self._av.error.FFmpegError as exc:
                    self.failed += 1
                    if self.failed <= 3:
                        self.notes.append(
                            f"a packet after picture {self.position} did not decode: {first_line(exc)}"
                        )
                    continue
                for picture in pictures:
                    self.position += 1
                    yield partial(self._array, picture), picture.pts

    def _array(self, picture) -> np.ndarray:
        height, width = self.size
        if height > 0 and width > 0:
            return picture.to_ndarray(format="rgb24", width=width, height=height, interpolation="BICUBIC")
        return picture.to_ndarray(format="rgb24")

    def close(self) -> None:
        self._container.close()


class TorchcodecPictures:
    """torchcodec's pictures of stream `stream`, resized to `size` after its own rotation."""

    def __init__(
        self, path: Path, stream: int, size: tuple[int, int], notes: list[str], *, time_base: float
    ) -> None:
        from torchcodec.decoders import VideoDecoder

        self.size, self.notes, self.time_base = size, notes, time_base
        with captured_stderr(notes):
            self._decoder = VideoDecoder(
                str(path), stream_index=stream, seek_mode="approximate", dimension_order="NHWC"
            )
        self.position = 0
        self.failed = 0

    def __iter__(self) -> Iterator[Decoded]:
        import torchcodec._core as core  # the sequential call: public ones seek

        failed_in_a_row = 0
        while failed_in_a_row < MAX_FAILURES:
            with captured_stderr(self.notes):
                try:
                    frame, pts, _ = core.get_next_frame(self._decoder._decoder)
                except IndexError:  # "no more frames left to decode"
                    return
                except RuntimeError as exc:  # a packet that does not decode: skipped, as players do
                    self.failed, failed_in_a_row = self.failed + 1, failed_in_a_row + 1
                    if self.failed <= 3:
                        self.notes.append(
                            f"a packet after picture {self.position} did not decode: {first_line(exc)}"
                        )
                    continue
            failed_in_a_row = 0
            self.position += 1
            yield partial(self._array, frame), round(float(pts) / self.time_base) if self.time_base else None

    def _array(self, frame) -> np.ndarray:
        """A decoded frame at the size asked for (torch's antialiased bicubic)."""
        import torch

        height, width = self.size
        if height > 0 and width > 0 and tuple(frame.shape[:2]) != (height, width):
            batch = frame.permute(2, 0, 1)[None].float()
            batch = torch.nn.functional.interpolate(
                batch, size=(height, width), mode="bicubic", antialias=True, align_corners=False
            )
            frame = batch[0].round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0)
        return frame.numpy()

    def close(self) -> None:
        del self._decoder


class DecordPictures:
    """decord read forward in batches of consecutive pictures, at `size` after its own rotation;
    never a seek, and never `skip_frames` (which seeks back to the start on MPEG-4 AVI)."""

    def __init__(self, path: Path, size: tuple[int, int], notes: list[str], count: int) -> None:
        import decord

        height, width = size
        self.notes = notes
        with captured_stderr(notes):
            self._vr = decord.VideoReader(
                str(path), ctx=decord.cpu(0), width=width, height=height, num_threads=1
            )
        self.count = min(len(self._vr), count)  # decord repeats its last picture past its real end
        self.position = 0
        self.failed = 0

    def __iter__(self) -> Iterator[Decoded]:
        while self.position < self.count:
            chunk = list(range(self.position, min(self.position + BATCH, self.count)))
            with captured_stderr(self.notes):
                frames = self._vr.get_batch(chunk).asnumpy()
            for frame in frames:
                self.position += 1
                yield partial(np.asarray, frame), None

    def close(self) -> None:
        del self._vr


def decord_available() -> bool:
    try:
        import decord  # noqa: F401
    except ImportError:
        return False
    return True


def torchcodec_missing() -> str | None:
    """Why torchcodec cannot decode here (one line), or None where it can."""
    try:
        import torchcodec._core as core

        core.get_next_frame  # noqa: B018 - the sequential call this reader uses
        from torchcodec.decoders import VideoDecoder  # noqa: F401
    except ImportError:
        return "torchcodec is not installed: pip install 'etad[torchcodec]'"
    except (OSError, RuntimeError, AttributeError) as exc:
        return (
            f"torchcodec cannot load FFmpeg's shared libraries ({first_line(exc)[:80]}): install "
            "FFmpeg (Debian: apt-get install ffmpeg)"
        )
    return None


def decoder_problem(decoder: str) -> str | None:
    """Why `data.decoder` cannot decode here, as one line (checked before any work), or None."""
    if decoder == "torchcodec" and (missing := torchcodec_missing()):
        return f"data.decoder torchcodec: {missing}"
    if decoder == "decord" and not decord_available():
        return "data.decoder decord: decord is not installed (x86-64 wheels only); pyav works anywhere"
    return None
