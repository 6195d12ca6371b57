"""What a video file says about its pictures before any is decoded: the stream to read, each coded
picture's place on the player's clock, the display transform and the pixel shape.

A demuxing pass (PyAV, nothing decoded but the first picture) gives every packet's timestamps.
They become seconds on **the player's clock** (docs/method.md, "Frames and time"):

- **One stream**: FFmpeg's best video stream, never an attached picture (cover art, thumbnail).
- **Joined clock**: in formats whose timestamps may restart (MPEG-TS/PS, FLV: FFmpeg's TS_DISCONT
  flag), a decode timestamp that steps back, or forward by more than GAP seconds, is a splice or a
  restart: the clock is joined up one frame after the picture before, as FFmpeg's own tools do.
  Elsewhere timestamps are kept as they are, and a single gap over GAP seconds is noted.
- **Origin**: seconds count from the file's start (`start_time`), as a player's do: a video that
  starts after its audio shows its first picture from 0.
- **Expected pictures**: the pictures a decoder can hand out, those displayed at or after the first
  keyframe, not marked for discard (an edit list's preroll). decord's pictures carry no timestamps
  of their own and are timed by rank against this list.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

GAP = 5.0  # seconds: a jump in a restartable clock, or a gap noted anywhere
TS_DISCONT = 0x0200  # AVFMT_TS_DISCONT: the format allows timestamp discontinuities
FIRST_PICTURES = 16  # pictures decoded in the index pass: the transform, decode order, decord's check


# the endings of video files: an id never carries one (`etad annotations convert` strips them)
VIDEO_EXTENSIONS = {
    ".mp4",
    ".m4v",
    ".mov",
    ".mkv",
    ".webm",
    ".avi",
    ".mpg",
    ".mpeg",
    ".ts",
    ".mts",
    ".m2ts",
    ".flv",
    ".wmv",
    ".3gp",
    ".ogv",
}
# files beside a video that `{id}.*` does not take for it (subtitles, pictures, notes, downloads)
SIDECARS = {".srt", ".ass", ".vtt", ".sub", ".json", ".txt", ".nfo", ".jpg", ".jpeg", ".png", ".part"}


def video_file(folder: Path, video_id: str) -> Path | None:
    """The one file `<id>.*` names in `folder` (any extension but a sidecar's), None where there is
    none: the rule of every command that finds a video by its id. Two such files are an error
    naming both, never a silent choice."""
    import glob

    from stages.core.errors import UserError

    found = sorted(
        p
        for p in Path(folder).glob(glob.escape(video_id) + ".*")
        if p.is_file() and p.suffix.lower() not in SIDECARS
    )
    if len(found) > 1:
        raise UserError(
            f"video {video_id!r}: data.video_name '{{id}}.*' matches {found[0]} and {found[1]}; "
            "keep one, or name its extension in data.video_name"
        )
    return found[0] if found else None


class VideoError(Exception):
    """A video that cannot be opened or decoded; the message is one line naming the file."""


def first_line(exc: BaseException) -> str:
    """An exception as one short line, without decord's C++ times and source locations
    ("[12:00:00] /src/video/ffmpeg/threaded_decoder.cc:218: Check failed: ...", torchcodec's
    "SingleStreamDecoder.cpp:1493, Could not ...")."""
    text = " ".join(str(exc).split()) or exc.__class__.__name__
    text = re.sub(r"\[\d\d:\d\d:\d\d\]\s*|\S*\.(cc|cpp|h):\d+[:,]\s*", "", text).strip()
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


@dataclass
class Index:
    stream: int  # the index of the video stream read, among all the file's streams
    times: np.ndarray  # seconds on the player's clock of the pictures a decoder hands out, rising
    interval: float  # the median interval between them (the last picture shows this long)
    header_fps: float
    timestamps: str  # rising | none (positions at the header rate)
    size: tuple[int, int]  # coded height and width
    sample_aspect: float  # the width of a pixel over its height
    matrix: list[int] | None  # the display matrix (FFmpeg's 3x3 16.16 layout), None if absent
    start_offset: float  # seconds from the file's start to the first picture
    leading: int  # coded pictures before the first keyframe: no decoder can show them
    discontinuities: list[float] = field(default_factory=list)  # where the clock was joined (s)
    gaps: list[tuple[float, float]] = field(default_factory=list)  # (at, length) over GAP, kept
    clock: dict[int, deque] = field(default_factory=dict)  # raw pts -> its seconds, in file order
    time_base: float = 0.0
    origin: float = 0.0  # the raw seconds of the player's 0
    first_pictures: list[tuple[np.ndarray | None, float | None]] = field(default_factory=list)  # decoded
    decode_order: bool = False  # the first pictures' own timestamps come out in decode order
    notes: list[str] = field(default_factory=list)

    def seconds(self, raw_pts: int | None) -> float | None:
        """The player's seconds of a decoded picture's own timestamp (pictures come out in file
        order, so a timestamp that restarts is matched to its own segment), or None if unknown."""
        if raw_pts is None:
            return None
        queue = self.clock.get(int(raw_pts))
        if queue:
            return queue.popleft() if len(queue) > 1 else queue[0]
        return float(raw_pts) * self.time_base - self.origin


def choose_stream(container, path: Path):
    """FFmpeg's best video stream, never an attached picture; VideoError where there is none."""
    import av

    attached = av.stream.Disposition.attached_pic
    videos = [s for s in container.streams.video if not (s.disposition & attached)]
    if not videos:
        what = "only a cover picture, " if container.streams.video else ""
        raise VideoError(f"{path}: {what}no video stream")
    try:
        best = container.streams.best("video")
    except Exception:  # noqa: BLE001 - PyAV versions differ in what they raise
        best = None
    if best in videos:
        return best
    return max(videos, key=lambda s: (s.codec_context.width or 0) * (s.codec_context.height or 0))


@dataclass
class _Packet:
    pts: int | None
    dts: int | None
    key: bool
    discard: bool


def read_index(path: Path, *, pictures: bool = False) -> Index:
    """Demux the chosen stream (decoding only its first pictures) to place every picture in time;
    with `pictures`, keep those first pictures small (to check decord's against them)."""
    import av

    notes: list[str] = []
    with captured_stderr(notes), av.open(str(path)) as container:
        stream = choose_stream(container, path)
        base = stream.time_base
        header = float(stream.average_rate or stream.guessed_rate or stream.base_rate or 0)
        context = stream.codec_context
        size = (context.height, context.width)
        sar = stream.sample_aspect_ratio or context.sample_aspect_ratio
        packets, first = [], []
        try:
            for packet in container.demux(stream):
                if packet.size <= 0:  # the null frames by which AVI drops a frame: nothing shown
                    continue
                packets.append(_Packet(packet.pts, packet.dts, packet.is_keyframe, packet.is_discard))
                if len(first) < FIRST_PICTURES:
                    first.extend(_decoded(packet, av))
        except av.error.FFmpegError as exc:  # a damaged or cut file: what came before it counts
            notes.append(f"demuxing stopped after {len(packets)} pictures: {first_line(exc)}")
        discontinuous = bool(container.format.flags & TS_DISCONT)
        start = container.start_time
        stream_index = stream.index
    if not packets:
        raise VideoError(f"{path}: video has no frames")
    matrix = _display_matrix(first[0]) if first else None
    index = Index(
        stream=stream_index,
        times=np.zeros(0),
        interval=0.0,
        header_fps=header,
        timestamps="rising",
        size=size,
        sample_aspect=float(sar) if sar else 1.0,
        matrix=matrix,
        start_offset=0.0,
        leading=0,
        time_base=float(base or 0),
        notes=notes,
    )
    start = start / 1e6 if start is not None else None
    joined = _place(index, packets, discontinuous, start)
    _fill_clock(index, packets, joined)
    index.first_pictures = [
        (_small(frame) if pictures else None, index.seconds(frame.pts)) for frame in first
    ]
    own = [t for _, t in index.first_pictures]
    index.decode_order = None not in own and len(own) > 2 and any(b <= a for a, b in zip(own, own[1:]))
    _fill_clock(index, packets, joined)  # the lookups above were only to check decord: start over
    return index


def _small(frame) -> np.ndarray:
    """A decoded picture at most 128 pixels wide: enough to tell pictures apart."""
    width = min(frame.width, 128)
    height = max(2, round(frame.height * width / max(frame.width, 1)))
    return frame.to_ndarray(format="rgb24", width=width, height=height)


def _decoded(packet, av) -> list:
    try:
        return list(packet.decode())
    except av.error.FFmpegError:
        return []


def _display_matrix(frame) -> list[int] | None:
    for item in frame.side_data:  # PyAV 18.1.1 iterates the types (a mapping), 18.1.0 the data
        data = item if hasattr(item, "type") else frame.side_data[item]
        if getattr(data.type, "name", "") == "DISPLAYMATRIX":
            values = np.frombuffer(bytes(data), dtype=np.int32)
            return values.tolist() if len(values) == 9 else None
    return None


def _place(index: Index, packets: list[_Packet], discontinuous: bool, start: float | None) -> list[float]:
    """Each packet's picture on the player's clock; which of them a decoder hands out. Returns the
    packets' joined presentation timestamps (time-base units)."""
    base = index.time_base
    step = 1.0 / index.header_fps if index.header_fps > 0 else None
    if not base or all(p.pts is None and p.dts is None for p in packets):
        if step is None:
            raise VideoError("no timestamps and no frame rate: its frames have no times")
        index.timestamps = "none"
        joined = [i * step / (base or 1.0) for i in range(len(packets))]
        base = index.time_base = base or 1.0
    else:
        joined = _joined(index, packets, discontinuous, step)
    keys = [t for t, p in zip(joined, packets, strict=True) if p.key]  # a discarded one still decodes
    first_key = min(keys) if keys else min(joined)
    shown = np.sort(
        np.array([t for t, p in zip(joined, packets, strict=True) if not p.discard and t >= first_key])
    )
    index.leading = sum(1 for t, p in zip(joined, packets, strict=True) if not p.discard and t < first_key)
    raw_first = float(shown[0]) * base
    index.origin = start if start is not None and start <= raw_first + 1e-6 else raw_first
    times = shown * base - index.origin
    index.times = times
    index.start_offset = float(times[0])
    intervals = np.diff(times)
    index.interval = float(np.median(intervals)) if len(intervals) else (step or 1.0)
    index.gaps = [(round(float(times[i]), 3), round(float(d), 3)) for i, d in enumerate(intervals) if d > GAP]
    index.discontinuities = [round(t - index.origin, 3) for t in index.discontinuities]
    return joined


def _joined(index: Index, packets: list[_Packet], discontinuous: bool, step: float | None) -> list[float]:
    """Presentation timestamps (in time-base units) with the clock joined at restarts and splices
    where the format allows them; a missing one sits one frame after the picture before."""
    base = index.time_base
    frame = (step or 0.04) / base  # one frame, in time-base units, until the stream shows its own
    gap = GAP / base
    offset, previous, out = 0.0, None, []
    for packet in packets:
        decode = packet.dts if packet.dts is not None else packet.pts
        if decode is not None and discontinuous:
            at = decode + offset
            if previous is not None and (at < previous or at - previous > gap):
                offset += previous + frame - at
                index.discontinuities.append(round((previous + frame) * base, 3))
                at = decode + offset
            if previous is not None and 0 < at - previous <= gap:
                frame = at - previous
            previous = at
        pts = packet.pts if packet.pts is not None else packet.dts
        out.append(pts + offset if pts is not None else (out[-1] + frame if out else 0.0))
    return out


def _fill_clock(index: Index, packets: list[_Packet], joined: list[float]) -> None:
    """raw pts -> the player's seconds, a queue per value (a restarted clock repeats values)."""
    index.clock = {}
    for packet, at in zip(packets, joined, strict=True):
        if packet.pts is not None:
            index.clock.setdefault(int(packet.pts), deque()).append(at * index.time_base - index.origin)


@dataclass
class Probe:
    """What a video file's index says of it as a whole (no picture converted)."""

    duration: float  # seconds, the file's start to the end of its last picture (the player's clock)
    fps: float  # 1 / the median interval between its pictures
    size: tuple[int, int]  # coded height and width


def probe(path: Path) -> Probe:
    """A video file's duration, rate and size, or a one-line UserError naming it."""
    from stages.core.errors import UserError

    try:
        index = read_index(path)
    except VideoError as exc:
        raise UserError(str(exc) if str(path) in str(exc) else f"{path}: {exc}") from None
    except Exception as exc:  # av raises many types for a foreign file
        raise UserError(f"{path}: cannot read it as a video ({first_line(exc)})") from None
    fps = 1.0 / index.interval if index.interval > 0 else index.header_fps
    return Probe(duration=float(index.times[-1] + index.interval), fps=fps, size=index.size)


def spans(times: np.ndarray, gap: float) -> str:
    """Seconds as short ranges: '0.00-0.44 s, 3.20 s'."""
    spans, start = [], None
    for i, t in enumerate(times):
        start = t if start is None else start
        if i + 1 == len(times) or times[i + 1] - t > gap:
            spans.append(f"{start:.2f}-{t:.2f} s" if t > start else f"{t:.2f} s")
            start = None
    return ", ".join(spans[:4]) + (f" and {len(spans) - 4} more" if len(spans) > 4 else "")
