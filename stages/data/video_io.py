"""Reading videos by display time, behind one small interface; writing test and synthetic videos.

One rule for every decoder and every stage (docs/method.md, "Frames and time"): the frame stored
for time t is the frame a player displays at t.

1. **Index** (PyAV, demuxing only, nothing decoded): the display times of the coded pictures are the
   timestamps of the packets that carry one, sorted. A packet without a timestamp sits one frame
   (at the stream's rate) after the one before. Empty packets (the null frames by which AVI files
   drop frames) carry no picture, so the picture before holds through them.
2. **Decode** (decord or PyAV) in one forward pass, in the decoder's output order, which is the
   display order; the i-th decoded picture takes the i-th display time. (B-frame files in AVI hand
   out pictures whose own timestamps are in decode order: their set is right, their order is not,
   so ranking pictures by their timestamps puts frames 1-2 places off.)
3. **Sample** times k / fps from the first picture, for k < floor(duration * fps): each takes the
   last picture displayed at or before it. The duration runs from the first picture to the end of
   the last, so dropped frames and variable frame rates keep their real length.

decord, the default (ETAD's reader), is only ever read forward: its random access returned
pictures from other times on a damaged file. PyAV (bundles FFmpeg) is the fallback where decord
is absent and the writer of test videos. Nothing else in the project imports decord or av.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Literal

import numpy as np

from stages.core.files import atomic_output
from stages.data.snippet_positions import output_frames, shown_at

Backend = Literal["auto", "decord", "pyav"]
Resize = Literal["stretch", "crop"]
IRREGULAR = 0.25  # a frame interval this far off the median one counts as irregular
BATCH = 32  # consecutive pictures decord decodes per call


class VideoError(Exception):
    """A video that cannot be opened or decoded; the message is one line naming the file."""


@dataclass
class VideoFacts:
    """What reading a video found: recorded in the cache files and listed in the summaries."""

    header_fps: float  # the rate the container states
    source_fps: float  # 1 / the median interval between display times
    coded_frames: int  # pictures the file holds
    duration: float  # seconds, first picture to the end of the last
    output_frames: int  # frames at the output rate
    held: float  # share of output frames that repeat the picture of the frame before
    irregular: float  # share of frame intervals off the median by more than IRREGULAR
    timestamps: str  # rising | decode order (re-ranked) | none (positions at the header rate)
    decoder: str = ""
    decoded_frames: int | None = None  # after a read to the end; fewer than coded: damaged
    notes: list[str] = field(default_factory=list)  # FFmpeg's own lines, shortfalls

    def as_record(self) -> dict:
        return asdict(self)

    def anomalies(self, fps: float) -> list[tuple[str, str]]:
        """What a user should know about this video: (kind, phrase) pairs; none for a regular one."""
        out = []
        if self.irregular > 0.01:
            out.append(("variable rate", f"variable frame rate or dropped frames ({self.irregular:.0%} of "
                                         "intervals irregular)"))  # fmt: skip
        if self.source_fps < fps * 0.99 and self.held > 0:
            out.append(("upsampled", f"{self.source_fps:.3g} fps source, {self.held:.0%} of frames repeat"))
        if abs(self.header_fps - self.source_fps) > 0.05 * self.source_fps and self.irregular <= 0.01:
            out.append(("rate mismatch", f"the file states {self.header_fps:.3g} fps, its timestamps "
                                         f"{self.source_fps:.3g} fps (timestamps followed)"))  # fmt: skip
        if self.timestamps == "decode order":
            out.append(("out-of-order timestamps", "timestamps in decode order (pictures re-ranked)"))
        if self.timestamps == "none":
            out.append(("no timestamps", f"frames placed at the stated {self.header_fps:.3g} fps"))
        if self.decoded_frames is not None and self.decoded_frames < self.coded_frames:
            out.append(("damaged", f"{self.decoded_frames} of {self.coded_frames} pictures decoded"))
        return out


def decord_available() -> bool:
    try:
        import decord  # noqa: F401
    except ImportError:
        return False
    return True


def _first_line(exc: BaseException) -> str:
    """An exception as one short line, without decord's C++ times and source locations
    ("[12:00:00] /src/video/ffmpeg/threaded_decoder.cc:218: Check failed: ...")."""
    text = " ".join(str(exc).split()) or exc.__class__.__name__
    text = re.sub(r"\[\d\d:\d\d:\d\d\]\s*|\S*\.(cc|cpp|h):\d+:\s*", "", text).strip()
    return (text or exc.__class__.__name__)[:160]


@contextmanager
def captured_stderr(lines: list[str]) -> Iterator[None]:
    """FFmpeg's own log lines (written by C code straight to file descriptor 2, decord's and
    PyAV's alike) go into `lines` instead of between the progress bars."""
    with tempfile.TemporaryFile() as sink:
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode("utf-8", "replace")
            lines.extend(line.strip()[:200] for line in text.splitlines() if line.strip())


# ---- 1. the index -----------------------------------------------------------------------------


@dataclass
class _Index:
    times: np.ndarray  # display times of the pictures, seconds from the first, rising
    interval: float  # the median interval between them (the last picture shows this long)
    header_fps: float
    timestamps: str
    size: tuple[int, int]  # the pictures' height and width
    notes: list[str]


def _index(path: Path) -> _Index:
    """Demux the video packets (no decoding) to learn the pictures' display times."""
    import av

    notes: list[str] = []
    with captured_stderr(notes), av.open(str(path)) as container:
        if not container.streams.video:
            raise VideoError(f"{path}: no video stream")
        stream = container.streams.video[0]
        context = stream.codec_context
        base = stream.time_base
        header = float(stream.average_rate or stream.guessed_rate or stream.base_rate or 0)
        stamps, durations = [], []
        try:
            for packet in container.demux(stream):
                if packet.size > 0:
                    stamps.append(packet.pts if packet.pts is not None else packet.dts)
                    durations.append(packet.duration or 0)
        except av.error.FFmpegError as exc:  # a damaged or cut file: what came before it counts
            notes.append(f"demuxing stopped after {len(stamps)} pictures: {_first_line(exc)}")
        reorders = bool(context.has_b_frames)
        size = (context.height, context.width)
    if not stamps:
        raise VideoError(f"{path}: video has no frames")
    step = 1.0 / header if header > 0 else None
    known = [s is not None for s in stamps]
    if base is None or not any(known):
        if step is None:
            raise VideoError(f"{path}: no timestamps and no frame rate: its frames have no times")
        times, kind = np.arange(len(stamps)) * step, "none"
    else:
        raw = np.array([s if s is not None else np.nan for s in stamps], dtype=np.float64) * float(base)
        if not all(known):  # fill each gap one frame after the picture before
            for i in np.flatnonzero(np.isnan(raw)):
                raw[i] = (raw[i - 1] if i else 0.0) + (step or 0.0)
        rising = bool(np.all(np.diff(raw) > 0))
        kind = "decode order" if rising and reorders and len(raw) > 2 else "rising"
        times = np.sort(raw)
    times = times - times[0]
    # the last picture shows for the usual interval (a packet's own duration may come from a
    # header rate that the timestamps contradict); a single picture, for its packet's duration
    if len(times) > 1:
        interval = float(np.median(np.diff(times)))
    else:
        interval = durations[-1] * float(base or 0) or step or 1.0
    return _Index(times=times, interval=interval, header_fps=header, timestamps=kind, size=size, notes=notes)


# ---- 2. the decoders: pictures in output order, forward only ------------------------------------


class _PyAVPictures:
    """Decoded pictures in the decoder's output order, counted from 0; packets that fail to decode
    are skipped (as players do), the rest go on."""

    def __init__(self, path: Path, size: tuple[int, int], notes: list[str]) -> None:
        import av

        self._av, self.path, self.size, self.notes = av, path, size, notes
        with captured_stderr(notes):
            self._container = av.open(str(path))
        self._stream = self._container.streams.video[0]
        self._pictures = self._decode()
        self.position = 0  # the index of the picture the next `next()` gives
        self.reordered = False  # a picture whose own timestamp is behind the one before

    def _decode(self):
        last = None
        for packet in self._container.demux(self._stream):
            try:
                pictures = packet.decode()
            except self._av.error.FFmpegError as exc:
                self.notes.append(f"a packet at picture {self.position} did not decode: {_first_line(exc)}")
                continue
            for picture in pictures:
                if picture.pts is not None and last is not None and picture.pts < last:
                    self.reordered = True
                last = picture.pts if picture.pts is not None else last
                yield picture

    def take(self, indices: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """(index, rgb uint8 [H, W, 3]) for each of the rising `indices` at or after `position`;
        stops early where the video ends."""
        height, width = self.size
        with captured_stderr(self.notes):
            for index in indices:
                picture = None
                while self.position <= index:
                    picture = next(self._pictures, None)
                    if picture is None:
                        return
                    self.position += 1
                if height > 0 and width > 0:
                    yield int(index), picture.to_ndarray(format="rgb24", width=width, height=height,
                                                         interpolation="BICUBIC")  # fmt: skip
                else:
                    yield int(index), picture.to_ndarray(format="rgb24")

    def close(self) -> None:
        self._container.close()


class _DecordPictures:
    """decord read forward in batches of consecutive pictures, from where it stands to the last one
    wanted; never a seek, and never `skip_frames` (which seeks back to the start on MPEG-4 AVI)."""

    def __init__(self, path: Path, size: tuple[int, int], notes: list[str]) -> None:
        import decord

        height, width = size
        self.notes = notes
        with captured_stderr(notes):
            self._vr = decord.VideoReader(str(path), ctx=decord.cpu(0), width=width, height=height,
                                          num_threads=1)  # fmt: skip
        self.count = len(self._vr)
        self.position = 0
        self.reordered = False

    def take(self, indices: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        indices = indices[indices < self.count]
        while len(indices):
            chunk = np.arange(self.position, min(self.position + BATCH, int(indices[-1]) + 1))
            with captured_stderr(self.notes):
                frames = self._vr.get_batch(chunk.tolist()).asnumpy()
            self.position = int(chunk[-1]) + 1
            keep = np.isin(chunk, indices)
            yield from zip(chunk[keep].tolist(), frames[keep], strict=True)
            indices = indices[indices >= self.position]

    def close(self) -> None:
        del self._vr


# ---- 3. the video at the output rate ------------------------------------------------------------


class TimedVideo:
    """A video's frames at `fps`, by display time (the module's rule), read forward.

    `height`/`width` (both or neither) give the output size: `stretch` resizes to it (ETAD's way),
    `crop` resizes to cover it keeping the aspect ratio, then cuts its centre."""

    def __init__(self, path: Path, fps: float, backend: Backend = "auto", *, height: int = -1,
                 width: int = -1, resize: Resize = "stretch") -> None:  # fmt: skip
        self.path, self.fps = Path(path), fps
        if not self.path.is_file():
            raise VideoError(f"{self.path}: no such video file")
        self.backend = ("decord" if decord_available() else "pyav") if backend == "auto" else backend
        try:
            index = _index(self.path)
        except VideoError:
            raise
        except Exception as exc:  # av raises many types for a broken or foreign file
            raise VideoError(f"{self.path}: cannot open video: {_first_line(exc)}") from None
        self.target = (height, width)
        self.decode_size = _decode_size(index.size, self.target, resize)
        self.times = index.times
        duration = float(index.times[-1] + index.interval)
        count = output_frames(duration, fps)
        self.source_of = shown_at(index.times, count, fps)  # [count] picture shown at each frame
        intervals, median = np.diff(index.times), index.interval
        self.facts = VideoFacts(
            header_fps=round(index.header_fps, 4),
            source_fps=round(1.0 / median, 4) if median > 0 else index.header_fps,
            coded_frames=len(index.times),
            duration=round(duration, 4),
            output_frames=count,
            held=round(float(np.mean(self.source_of[1:] == self.source_of[:-1])) if count > 1 else 0.0, 4),
            irregular=round(float(np.mean(np.abs(intervals - median) > IRREGULAR * median))
                            if len(intervals) else 0.0, 4),  # fmt: skip
            timestamps=index.timestamps,
            decoder=self.backend,
            notes=index.notes,
        )
        self._pictures = None
        self._recent: dict[int, np.ndarray] = {}  # the last read's pictures: overlapping reads

    def __len__(self) -> int:
        return len(self.source_of)

    def _open(self):
        if self.backend == "decord":
            try:
                return _DecordPictures(self.path, self.decode_size, self.facts.notes)
            except Exception as exc:
                raise VideoError(f"{self.path}: decord cannot open it: {_first_line(exc)}") from None
        return _PyAVPictures(self.path, self.decode_size, self.facts.notes)

    def read(self, numbers: Iterable[int] | np.ndarray) -> np.ndarray:
        """Frames at output `numbers` (any order, repeats allowed), uint8 [n, H, W, 3]. Reading in
        rising order decodes the video once; a step back before the last read starts decoding over."""
        numbers = np.asarray(numbers if isinstance(numbers, np.ndarray) else list(numbers), dtype=np.int64)
        if numbers.size and (numbers.min() < 0 or numbers.max() >= len(self)):
            raise VideoError(f"{self.path}: frame index out of range 0..{len(self) - 1}")
        wanted = np.unique(self.source_of[numbers])
        got = {i: self._recent[i] for i in wanted if i in self._recent}
        todo = np.array([i for i in wanted if i not in got], dtype=np.int64)
        if len(todo) and (self._pictures is None or todo[0] < self._pictures.position):
            self._restart()
        try:
            got.update(self._pictures.take(todo) if len(todo) else ())
        except VideoError:
            raise
        except Exception as exc:  # decord and av raise many types for a broken file
            hint = "; data.decoder: pyav skips damaged packets" if self.backend == "decord" else ""
            why = _first_line(exc)[:100]
            raise VideoError(f"{self.path}: damaged, {self.backend} cannot decode it: {why}{hint}") from None
        if len(got) < len(wanted):
            got.update(self._hold(wanted, got))
        self._recent = got
        pictures = np.stack([self._finish(got[i]) for i in self.source_of[numbers]]) if numbers.size else None
        return pictures if pictures is not None else np.zeros((0, 1, 1, 3), np.uint8)

    def _restart(self) -> None:
        if self._pictures is not None:
            self._pictures.close()
        self._pictures = self._open()

    def _hold(self, wanted: np.ndarray, got: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        """The pictures past the decodable end: the last decoded one holds (noted, counted)."""
        decoded = self._pictures.position
        self.facts.decoded_frames = min(decoded, self.facts.coded_frames)
        last = max((i for i in got if i < decoded), default=None)
        last_picture = self._last_picture(decoded) if last is None else got[last]
        at = self.times[min(decoded, len(self.times) - 1)]
        total = self.facts.coded_frames
        note = f"decoding ended at picture {decoded} of {total} ({at:.2f} s); the last picture holds"
        if note not in self.facts.notes:
            self.facts.notes.append(note)
        return {i: last_picture for i in wanted if i not in got}

    def _last_picture(self, decoded: int) -> np.ndarray:
        if decoded == 0:
            raise VideoError(f"{self.path}: no picture could be decoded")
        self._restart()
        return dict(self._pictures.take(np.array([decoded - 1])))[decoded - 1]

    def _finish(self, picture: np.ndarray) -> np.ndarray:
        """A decoded picture at the output size: cut to it where `crop` decoded it larger."""
        height, width = self.target
        if height <= 0 or (picture.shape[0], picture.shape[1]) == (height, width):
            return picture
        top, left = (picture.shape[0] - height) // 2, (picture.shape[1] - width) // 2
        return picture[top : top + height, left : left + width]

    def frames(self, size: int = 256) -> Iterator[np.ndarray]:
        """Every frame at the output rate, in order, `size` at a time."""
        for start in range(0, len(self), size):
            yield self.read(np.arange(start, min(start + size, len(self))))

    def finish(self) -> VideoFacts:
        """The facts, once every wanted frame was read (decoded_frames where the read reached the end)."""
        if self._pictures is not None:
            if self.facts.decoded_frames is None and self._pictures.position >= self.facts.coded_frames:
                self.facts.decoded_frames = self.facts.coded_frames
            if self._pictures.reordered and self.facts.timestamps == "rising":
                self.facts.timestamps = "decode order"
            self._pictures.close()
            self._pictures = None
        return self.facts


def _decode_size(source: tuple[int, int], target: tuple[int, int], resize: Resize) -> tuple[int, int]:
    """The size the decoder resizes to: the target (stretch), or the smallest size of the source's
    aspect ratio that covers it (crop)."""
    height, width = target
    if height <= 0 or width <= 0 or resize == "stretch" or min(source) <= 0:
        return target
    scale = max(height / source[0], width / source[1])
    return max(height, round(source[0] * scale)), max(width, round(source[1] * scale))


# ---- writing test and synthetic videos ---------------------------------------------------------


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
