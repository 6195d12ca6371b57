"""Reading videos by display time, behind one small interface.

One rule for every decoder and every stage (docs/method.md, "Frames and time"): the frame stored
for time t is the picture a player shows at t, upright as it shows it.

1. **Index** (video_index.py, demuxing only): the stream, each picture's time on the player's
   clock (seconds from the file's start, restarts joined), the display transform and pixel shape.
2. **Decode** (video_decoders.py: PyAV, torchcodec or decord) in one forward pass. PyAV and
   torchcodec pictures carry their own timestamps: each is placed at its own time, so a picture
   the decoder drops (a lost packet, leading pictures, preroll) leaves its time to the picture
   before and moves no other. Where the decoded order shows timestamps in decode order (AVI with
   B-frames: their set is right, their order is not), pictures are ranked instead: the i-th takes
   the i-th display time. decord's pictures have no timestamps: they are ranked, and decord is
   used only where its first picture is the first picture PyAV decodes (else PyAV reads the video,
   noted); a decord failure part-way goes on with PyAV.
3. **Sample** times k / fps, k < floor(duration * fps): each takes the last picture shown at or
   before it; before the first picture, the first picture. The duration runs from the file's start
   to the end of the last picture.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from itertools import chain, islice
from pathlib import Path
from typing import Literal

import numpy as np

from stages.data.snippet_positions import TIME_TOLERANCE, output_frames, shown_at
from stages.data.video_decoders import (
    TRANSFORMS,
    TRANSPOSING,
    DecordPictures,
    PyAVPictures,
    TorchcodecPictures,
    correction,
    decoder_problem,
    decord_available,
    display_transform,
    rotated_by_angle,
    rotation,
)
from stages.data.video_index import Index, VideoError, first_line, read_index, spans

__all__ = ["TimedVideo", "VideoError", "VideoFacts", "decord_available", "decoder_problem"]

Backend = Literal["auto", "decord", "pyav", "torchcodec"]
Resize = Literal["stretch", "crop"]
IRREGULAR = 0.25  # a frame interval this far off the median one counts as irregular
LOOKAHEAD = 32  # pictures whose own timestamps decide between own times and ranks
MATCH = (24, 32)  # the size at which decord's first picture is compared with PyAV's
# decord 0.6's decoding thread decodes ahead of the reader without bound: while a slow consumer (an
# encoder) works, it holds up to the whole video's pictures (benchmarks/laptop.py,
# decord_read_ahead). Where that could pass this many bytes, PyAV reads the video (one picture at a time).
DECORD_READ_AHEAD_BYTES = 256 * 2**20


@dataclass
class VideoFacts:
    """What reading a video found: recorded in the cache files and listed in the summaries."""

    header_fps: float  # the rate the container states
    source_fps: float  # 1 / the median interval between display times
    coded_frames: int  # pictures a decoder can hand out
    duration: float  # seconds, the file's start to the end of the last picture
    output_frames: int  # frames at the output rate
    held: float  # share of output frames that repeat the picture of the frame before
    irregular: float  # share of frame intervals off the median by more than IRREGULAR
    timestamps: str  # rising | decode order (re-ranked) | none (positions at the header rate)
    decoder: str = ""
    decoded_frames: int | None = None  # pictures decoded, after a read to the end
    notes: list[str] = field(default_factory=list)  # FFmpeg's own lines, decoder changes
    rotation: int = 0  # clockwise degrees a player turns the pictures by
    display: str = "none"  # the display transform applied (video_decoders.TRANSFORMS)
    sample_aspect: float = 1.0  # pixel width over height
    start_offset: float = 0.0  # seconds from the file's start to the first picture
    leading: int = 0  # coded pictures before the first keyframe, which no decoder can show
    discontinuities: list[float] = field(default_factory=list)  # seconds where the clock was joined
    gaps: list[list[float]] = field(default_factory=list)  # [at, length] of gaps over GAP s
    lost: int = 0  # pictures expected but not decoded (after a read to the end)
    lost_at: str = ""  # where, in seconds

    def as_record(self) -> dict:
        return asdict(self)

    def anomalies(self, fps: float) -> list[tuple[str, str]]:
        """What a user should know about this video: (kind, phrase) pairs; none for a regular one."""
        out = []
        if self.irregular > 0.01:
            out.append(
                (
                    "variable rate",
                    f"variable frame rate or dropped frames ({self.irregular:.0%} of intervals irregular)",
                )
            )
        if self.source_fps < fps * 0.99 and self.held > 0:
            out.append(("upsampled", f"{self.source_fps:.3g} fps source, {self.held:.0%} of frames repeat"))
        if abs(self.header_fps - self.source_fps) > 0.05 * self.source_fps and self.irregular <= 0.01:
            out.append(
                (
                    "rate mismatch",
                    f"the file states {self.header_fps:.3g} fps, its timestamps "
                    f"{self.source_fps:.3g} fps (timestamps followed)",
                )
            )
        if self.timestamps == "decode order":
            out.append(("out-of-order timestamps", "timestamps in decode order (pictures re-ranked)"))
        if self.timestamps == "none":
            out.append(("no timestamps", f"frames placed at the stated {self.header_fps:.3g} fps"))
        if self.discontinuities:
            at = ", ".join(f"{t:.2f} s" for t in self.discontinuities[:5])
            out.append(("timestamp discontinuity", f"timestamp discontinuity at {at} (clock joined)"))
        for at, length in self.gaps[:3]:
            out.append(("gap", f"a gap of {length:.1f} s at {at:.2f} s (the picture before holds)"))
        if self.start_offset > 1.0 / fps:
            why = f"; {self.leading} leading picture(s) before the first keyframe" if self.leading else ""
            out.append(
                ("late start", f"first picture at {self.start_offset:.2f} s of the file (held from 0){why}")
            )
        if self.lost:
            out.append(
                (
                    "damaged",
                    f"{self.lost} of {self.coded_frames} pictures not decoded (at "
                    f"{self.lost_at}); the picture before holds",
                )
            )
        return out


class _Picture:
    """A decoded picture, converted (and turned upright) the first time a frame shows it."""

    __slots__ = ("_make", "_turn", "_array")

    def __init__(self, make, turn) -> None:
        self._make, self._turn, self._array = make, turn, None

    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = self._turn(self._make())
            self._make = None
        return self._array


class TimedVideo:
    """A video's frames at `fps`, by display time (the module's rule), read forward.

    `height`/`width` (both or neither) give the output size: `stretch` resizes to it (ETAD's way),
    `crop` resizes to cover it keeping the displayed aspect ratio, then cuts its centre."""

    def __init__(
        self,
        path: Path,
        fps: float,
        backend: Backend = "auto",
        *,
        height: int = -1,
        width: int = -1,
        resize: Resize = "stretch",
    ) -> None:
        self.path, self.fps = Path(path), fps
        if not self.path.is_file():
            raise VideoError(f"{self.path}: no such video file")
        self.backend = ("decord" if decord_available() else "pyav") if backend == "auto" else backend
        if problem := decoder_problem(self.backend):
            raise VideoError(f"{self.path}: {problem}")
        try:
            self.index = read_index(self.path, pictures=self.backend == "decord")
        except VideoError as exc:
            raise VideoError(str(exc) if str(self.path) in str(exc) else f"{self.path}: {exc}") from None
        except Exception as exc:  # av raises many types for a broken or foreign file
            raise VideoError(f"{self.path}: cannot open video: {first_line(exc)}") from None
        index = self.index
        self.display = display_transform(index.matrix)
        self.target = (height, width)
        self.size = _decode_size(_displayed(index, self.display), self.target, resize)
        self.backend = _bounded(self.backend, len(index.times), self.size)  # decord's read-ahead
        duration = float(index.times[-1] + index.interval)
        count = output_frames(duration, fps)
        source_of = shown_at(index.times, count, fps)
        intervals, median = np.diff(index.times), index.interval
        self.facts = VideoFacts(
            header_fps=round(index.header_fps, 4),
            source_fps=round(1.0 / median, 4) if median > 0 else index.header_fps,
            coded_frames=len(index.times),
            duration=round(duration, 4),
            output_frames=count,
            held=round(float(np.mean(source_of[1:] == source_of[:-1])) if count > 1 else 0.0, 4),
            irregular=round(
                float(np.mean(np.abs(intervals - median) > IRREGULAR * median)) if intervals.size else 0.0, 4
            ),
            timestamps="decode order" if index.decode_order else index.timestamps,
            decoder=self.backend,
            notes=index.notes,
            rotation=rotation(index.matrix),
            display=self.display,
            sample_aspect=round(index.sample_aspect, 4),
            start_offset=round(index.start_offset, 4),
            leading=index.leading,
            discontinuities=index.discontinuities,
            gaps=[list(g) for g in index.gaps],
        )
        self._decoder = None  # the open decoder, and the walk over the output frames it feeds
        self._walk: Iterator[tuple[int, np.ndarray]] | None = None
        self._next = 0  # the output frame the walk gives next
        self._recent: dict[int, np.ndarray] = {}  # the last read's frames: overlapping reads
        self._decoded: list[float] = []  # the times of the pictures decoded, in order
        self._complete = False  # the walk reached the last output frame

    def __len__(self) -> int:
        return self.facts.output_frames

    # ---- the pictures, timed --------------------------------------------------------------------

    def _open(self) -> Iterator[tuple[float, _Picture]]:
        """(seconds, upright picture at the decode size) in display order, from the start."""
        index, notes = self.index, self.facts.notes
        if self.backend == "decord":
            try:
                self._decoder = DecordPictures(self.path, self.size, notes, len(index.times))
            except Exception as exc:
                return self._fall_back(f"decord cannot open it: {first_line(exc)}")
            turn = correction(rotated_by_angle(index.matrix), self.display)
            return self._decord_checked(self._timed(iter(self._decoder), turn, ranked=True))
        if self.backend == "torchcodec":
            self._decoder = TorchcodecPictures(
                self.path, index.stream, self.size, notes, time_base=index.time_base
            )
            turn = correction(rotated_by_angle(index.matrix), self.display)
        else:
            size = self.size[::-1] if self.display in TRANSPOSING else self.size
            self._decoder = PyAVPictures(self.path, index.stream, size, notes)
            turn = self.display
        # where PyAV's first pictures came out with timestamps in decode order, every decoder ranks
        return self._timed(iter(self._decoder), turn, ranked=True if index.decode_order else None)

    def _timed(self, pictures, turn: str, ranked: bool | None) -> Iterator[tuple[float, _Picture]]:
        """Each picture at its own time (ranked: the i-th at the i-th display time). `ranked=None`:
        decided by the first LOOKAHEAD pictures' own timestamps, in the order they come out."""
        index, apply = self.index, TRANSFORMS[turn]
        head: list = []
        if ranked is None:
            head = [(picture, index.seconds(raw)) for picture, raw in islice(pictures, LOOKAHEAD)]
            own = [t for _, t in head]
            ranked = None in own or any(b <= a for a, b in zip(own, own[1:]))
            if ranked and None not in own:
                self.facts.timestamps = "decode order"
        rank, last = 0, -np.inf
        rest = ((p, None if ranked else index.seconds(raw)) for p, raw in pictures)
        for make, own_time in chain(head, rest):
            if ranked:
                if rank >= len(index.times):
                    return
                at = float(index.times[rank])
            elif own_time is None or own_time <= last:  # no time, or behind the one before: not shown
                continue
            else:
                at = own_time
            rank, last = rank + 1, at
            self._decoded.append(at)
            yield at, _Picture(make, apply)

    def _decord_checked(self, pictures) -> Iterator[tuple[float, _Picture]]:
        """decord's pictures, once its first is PyAV's first (decord has lost a group of pictures
        where PyAV has not: ranks would then be off); else PyAV's, noted."""
        first = next(pictures, None)
        if first is not None and self._same_as_pyav(first[1].array()):
            yield first
            yield from pictures
            return
        yield from self._fall_back("its first picture is not the file's first")

    def _same_as_pyav(self, picture: np.ndarray) -> bool:
        from PIL import Image

        decoded = self.index.first_pictures
        if not decoded or decoded[0][1] is None or abs(decoded[0][1] - self.index.times[0]) > TIME_TOLERANCE:
            return False

        def small(array: np.ndarray) -> np.ndarray:
            image = Image.fromarray(np.ascontiguousarray(array)).resize(MATCH[::-1], Image.BOX)
            return np.asarray(image, dtype=np.float32)

        mine = small(picture)
        apply = TRANSFORMS[self.display]
        distance = [float(np.abs(mine - small(apply(p))).mean()) for p, _ in decoded]
        return distance[0] <= min(distance) + 0.5

    def _switch_to_pyav(self, why: str) -> None:
        """PyAV reads this video from the start instead of decord (noted)."""
        self.facts.notes.append(f"decord: {why}; read with PyAV")
        if self._decoder is not None:
            self._decoder.close()
            self._decoder = None
        self.backend = self.facts.decoder = "pyav"
        self._decoded = []

    def _fall_back(self, why: str) -> Iterator[tuple[float, _Picture]]:
        self._switch_to_pyav(why)
        return self._open()

    def _frames(self) -> Iterator[tuple[int, np.ndarray]]:
        """(output frame k, the picture shown at k / fps), k rising from 0."""
        pictures = self._open()
        current, pending = None, next(pictures, None)
        for k in range(len(self)):
            at = k / self.fps + TIME_TOLERANCE
            while pending is not None and (current is None or pending[0] <= at):
                current, pending = pending, next(pictures, None)
            if current is None:
                raise VideoError(f"{self.path}: no picture could be decoded")
            yield k, current[1].array()

    # ---- reading ---------------------------------------------------------------------------------

    def read(self, numbers: Iterable[int] | np.ndarray) -> np.ndarray:
        """Frames at output `numbers` (any order, repeats allowed), uint8 [n, H, W, 3]. Reading in
        rising order decodes the video once; a step back before the last read starts decoding over."""
        numbers = np.asarray(numbers if isinstance(numbers, np.ndarray) else list(numbers), dtype=np.int64)
        if numbers.size and (numbers.min() < 0 or numbers.max() >= len(self)):
            raise VideoError(f"{self.path}: frame index out of range 0..{len(self) - 1}")
        wanted = np.unique(numbers)
        got = {int(k): self._recent[k] for k in wanted if k in self._recent}
        todo = [int(k) for k in wanted if k not in got]
        if todo and (self._walk is None or todo[0] < self._next):
            self._restart()
        try:
            got.update(self._advance(todo))
        except VideoError:
            raise
        except Exception as exc:  # decoders raise many types for a broken file
            if self.backend != "decord":
                why = first_line(exc)[:100]
                raise VideoError(f"{self.path}: damaged, {self.backend} cannot decode it: {why}") from None
            self._switch_to_pyav(f"stopped at picture {self._decoder.position}: {first_line(exc)[:80]}")
            self._walk, self._recent = None, {}
            return self.read(numbers)
        self._recent = got
        if not numbers.size:
            return np.zeros((0, 1, 1, 3), np.uint8)
        return np.stack([self._cut(got[int(k)]) for k in numbers])

    def _advance(self, todo: list[int]) -> dict[int, np.ndarray]:
        got, wanted = {}, set(todo)
        last = max(todo, default=-1)
        while self._next <= last:
            k, picture = next(self._walk)
            self._next = k + 1
            self._complete = self._next == len(self)
            if k in wanted:
                got[k] = picture
        return got

    def _restart(self) -> None:
        if self._decoder is not None:
            self._decoder.close()
            self._decoder = None
        self._decoded, self._complete, self._next = [], False, 0
        self._walk = self._frames()

    def _cut(self, picture: np.ndarray) -> np.ndarray:
        """A picture at the output size: its centre where `crop` decoded it larger; where the output
        is larger than the source, the centre of the output's aspect in source pixels, resized."""
        height, width = self.target
        if height <= 0 or (picture.shape[0], picture.shape[1]) == (height, width):
            return np.ascontiguousarray(picture)
        if picture.shape[0] < height or picture.shape[1] < width:
            from PIL import Image

            keep = min(picture.shape[0] / height, picture.shape[1] / width)
            h, w = max(1, round(height * keep)), max(1, round(width * keep))
            top, left = (picture.shape[0] - h) // 2, (picture.shape[1] - w) // 2
            box = np.ascontiguousarray(picture[top : top + h, left : left + w])
            return np.asarray(Image.fromarray(box).resize((width, height), Image.BICUBIC))
        top, left = (picture.shape[0] - height) // 2, (picture.shape[1] - width) // 2
        return np.ascontiguousarray(picture[top : top + height, left : left + width])

    def frames(self, size: int = 256) -> Iterator[np.ndarray]:
        """Every frame at the output rate, in order, `size` at a time."""
        for start in range(0, len(self), size):
            yield self.read(np.arange(start, min(start + size, len(self))))

    def finish(self) -> VideoFacts:
        """The facts, once every wanted frame was read: what was decoded and lost, where the read
        reached the end."""
        if self._decoder is not None:
            if self._complete:
                self._count_lost()
            self._decoder.close()
            self._decoder = None
            self._walk = None
        return self.facts

    def _count_lost(self) -> None:
        """Expected pictures that fell in a gap of the decoded ones: their time went to the picture
        before. A gap is wider than 1.5 decoded intervals, so a file whose packets are fields (two
        per picture) loses nothing."""
        self.facts.decoded_frames = self._decoder.position
        decoded = np.sort(np.asarray(self._decoded))
        if not len(decoded):
            return
        interval = float(np.median(np.diff(decoded))) if len(decoded) > 1 else self.index.interval
        expected = self.index.times
        # only what a read to the end reached: the pictures up to the last output frame
        expected = expected[expected <= (len(self) - 1) / self.fps + TIME_TOLERANCE]
        after = np.searchsorted(decoded, expected - TIME_TOLERANCE)
        found = (after < len(decoded)) & (
            np.abs(decoded[np.minimum(after, len(decoded) - 1)] - expected) <= TIME_TOLERANCE
        )
        before_time = np.where(after > 0, decoded[np.maximum(after - 1, 0)], -np.inf)
        after_time = np.where(after < len(decoded), decoded[np.minimum(after, len(decoded) - 1)], np.inf)
        lost = expected[~found & (after_time - before_time > 1.5 * interval)]
        self.facts.lost = int(len(lost))
        self.facts.lost_at = spans(lost, 1.5 * self.index.interval) if len(lost) else ""


def _bounded(backend: str, pictures: int, size: tuple[int, int]) -> str:
    """PyAV where decord's read-ahead could hold more than DECORD_READ_AHEAD_BYTES of pictures."""
    held = pictures * size[0] * size[1] * 3
    return "pyav" if backend == "decord" and held > DECORD_READ_AHEAD_BYTES else backend


def _displayed(index: Index, display: str) -> tuple[int, int]:
    """The pictures' height and width as a player shows them: sample aspect, then the transform."""
    height, width = index.size
    width = int(round(width * index.sample_aspect)) if index.sample_aspect > 0 else width
    return (width, height) if display in TRANSPOSING else (height, width)


def _decode_size(shown: tuple[int, int], target: tuple[int, int], resize: Resize) -> tuple[int, int]:
    """The size pictures are decoded to (as displayed): the target (stretch), or the smallest size
    of the displayed aspect ratio that covers it (crop), never larger than the pictures themselves:
    a crop that would enlarge them is cut in the source's pixels, then resized (_cut)."""
    height, width = target
    if height <= 0 or width <= 0 or resize == "stretch" or min(shown) <= 0:
        return (height, width) if height > 0 and width > 0 else (-1, -1)
    scale = max(height / shown[0], width / shown[1])
    if scale > 1:  # frame_width 4000 on a 64x48 video decoded 3000x4000 pictures: 23 GB
        return shown
    return max(height, round(shown[0] * scale)), max(width, round(shown[1] * scale))
