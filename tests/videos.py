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
    times: np.ndarray  # display time of each picture on the player's clock (seconds), in picture order
    duration: float  # what a player plays: the file's start to the end of the last picture


def write(
    path: Path,
    times: list[float],
    *,
    codec: str = "libx264",
    rate: float = 30,
    b_frames: int = 2,
    time_base: Fraction | None = None,
    audio_first: bool = False,
) -> NumberedVideo:
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
    played = _players_times(Path(path))  # picture i is the i-th in display order
    step = float(np.median(np.diff(played))) if len(played) > 1 else 1 / rate
    return NumberedVideo(Path(path), played, played[-1] + step)


def _players_times(path: Path) -> np.ndarray:
    """The pictures' times as a player counts them: the file's own timestamps, sorted, from the
    file's start (a muxer may delay the first picture: AVI with B-frames by a frame)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stamps = [p.pts if p.pts is not None else p.dts for p in container.demux(stream) if p.size]
        start = container.start_time / 1e6 if container.start_time is not None else 0.0
        return np.sort(np.array(stamps, float)) * float(stream.time_base) - start


def shown(video: NumberedVideo, fps: float) -> np.ndarray:
    """The picture a player shows at each output time k / fps, k < floor(duration * fps): the last
    shown at or before it, before the first the first."""
    count = max(1, int(np.floor(video.duration * fps + 1e-6)))
    return np.maximum(np.searchsorted(video.times, np.arange(count) / fps + 1e-3, side="right") - 1, 0)


# ---- what users' own files carry (issue 46): each writer returns the truth a player shows --------


@dataclass
class Truth:
    """What a player shows: picture numbers with their times on its clock (from the file's start),
    the pictures it can decode, and how long it plays."""

    path: Path
    pictures: np.ndarray  # picture numbers a decoder can show, in display order
    times: np.ndarray  # their times (seconds from the file's start), rising
    duration: float

    def shown(self, fps: float) -> np.ndarray:
        """The picture number shown at each k / fps: the last at or before it, else the first."""
        count = max(1, int(np.floor(self.duration * fps + 1e-3)))
        at = np.searchsorted(self.times, np.arange(count) / fps + 1e-3, side="right") - 1
        return self.pictures[np.maximum(at, 0)]


def _encode(
    path: Path,
    pictures,
    times,
    *,
    rate: float,
    codec: str = "libx264",
    options: dict | None = None,
    fmt: str | None = None,
    matrix: list[int] | None = None,
    sar: Fraction | None = None,
    audio_seconds: float = 0.0,
    cover_first: bool = False,
    shape=(HEIGHT, WIDTH),
) -> None:
    """Encode `pictures` at `times` with PyAV: a display matrix, a sample aspect ratio, an audio
    stream of silence from 0, a cover picture as stream 0 (attached picture) where asked."""
    import av

    base = Fraction(1, 90000)
    with av.open(str(path), "w", format=fmt) as container:
        cover = _cover(container, av) if cover_first else None
        audio = container.add_stream("aac", rate=8000) if audio_seconds else None
        stream = container.add_stream(codec, rate=Fraction(rate).limit_denominator(1001))
        stream.height, stream.width = shape
        stream.pix_fmt = "yuv420p"
        stream.time_base = stream.codec_context.time_base = base
        stream.options = {"preset": "veryfast", "threads": "1", **(options or {})}
        if matrix is not None:
            stream.set_display_matrix(matrix)
        if sar is not None:
            stream.codec_context.sample_aspect_ratio = sar
        if cover is not None:  # muxed once every stream is added (the header is written then)
            container.mux(cover)
        for picture, t in zip(pictures, times, strict=True):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(picture), format="rgb24")
            frame.pts, frame.time_base = int(round(t / base)), base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if audio is not None:
            _silence(container, audio, audio_seconds, av)


def _silence(container, audio, seconds: float, av) -> None:
    for start in range(0, int(seconds * 8000), 1024):
        samples = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        samples.sample_rate, samples.pts = 8000, start
        for packet in audio.encode(samples):
            container.mux(packet)
    for packet in audio.encode():
        container.mux(packet)


def _cover(container, av):
    """A PNG cover picture (number 4000) as an attached-picture stream; returns its packet."""
    import io

    from PIL import Image

    data = io.BytesIO()
    Image.fromarray(numbered(4000)).save(data, format="PNG")
    cover = container.add_stream("png", rate=1)
    cover.width, cover.height = WIDTH, HEIGHT
    cover.time_base = cover.codec_context.time_base = Fraction(1, 90000)
    cover.pix_fmt = "rgb24"
    cover.disposition = av.stream.Disposition.attached_pic
    packet = av.Packet(data.getvalue())
    packet.stream = cover
    packet.pts = packet.dts = 0
    packet.time_base = Fraction(1, 90000)
    return packet


def numbered_run(path: Path, count: int, rate: float = 15, **how) -> Truth:
    """Pictures 0..count-1 at i / rate (shifted by `lead` seconds of audio before the video)."""
    lead = how.pop("lead", 0.0)
    times = np.arange(count) / rate + lead
    _encode(
        path,
        [numbered(i) for i in range(count)],
        times,
        rate=rate,
        audio_seconds=lead + count / rate if lead else 0.0,
        **how,
    )
    return Truth(Path(path), np.arange(count), times, lead + count / rate)


def zeroed_packet(path: Path, count: int = 60, lost: int = 20) -> Truth:
    """Every picture its own keyframe (a loss hurts that picture alone); packet `lost`'s payload
    zeroed in place: the decoder hands out one picture fewer than the file's packets."""
    import av

    truth = numbered_run(path, count, rate=30, options={"g": "1", "bf": "0"})
    with av.open(str(path)) as container:
        packet = list(container.demux(video=0))[lost]
        at, size = packet.pos, packet.size
    data = bytearray(Path(path).read_bytes())
    data[at : at + size] = bytes(size)
    Path(path).write_bytes(bytes(data))
    keep = truth.pictures != lost
    return Truth(Path(path), truth.pictures[keep], truth.times[keep], truth.duration)


def every_packet_zeroed(path: Path) -> Path:
    import av

    numbered_run(path, 10, rate=15)
    with av.open(str(path)) as container:
        places = [(p.pos, p.size) for p in container.demux(video=0) if p.size]
    data = bytearray(Path(path).read_bytes())
    for at, size in places:
        data[at : at + size] = bytes(size)
    Path(path).write_bytes(bytes(data))
    return Path(path)


def cut_copy(source: Path, path: Path, first_packet: int, shift: float = 0.0, fmt: str | None = None) -> list:
    """Remux `source`'s video packets from `first_packet` (decode order) on, timestamps moved by
    `shift` seconds, as `-ss ... -c copy` does; returns the copied packets' (pts seconds, key)."""
    import av

    copied = []
    with av.open(str(source)) as src, av.open(str(path), "w", format=fmt) as dst:
        stream = src.streams.video[0]
        out = dst.add_stream_from_template(stream)
        base, zero = stream.time_base, stream.start_time or 0  # a muxer's delay is no picture's time
        move = int(round(shift / base))
        for i, packet in enumerate(src.demux(stream)):
            if packet.dts is None or i < first_packet:
                continue
            copied.append((float((packet.pts - zero) * base), packet.is_keyframe))
            packet.pts, packet.dts = packet.pts + move, packet.dts + move
            packet.stream = out
            dst.mux(packet)
    return copied


def cut_truth(path: Path, copied: list, rate: float) -> Truth:
    """What a player shows of a cut: the pictures displayed at or after its first keyframe (those
    before it reference pictures the cut left out; an edit list's preroll is not displayed), timed
    by the cut file's own timestamps from its start."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        start = container.start_time / 1e6
        packets = [p for p in container.demux(stream) if p.size]
        times = np.array([p.pts * float(stream.time_base) - start for p in packets])
        shown_flags = [not p.is_discard for p in packets]
    pictures = np.array([round(t * rate) for t, _ in copied])
    first_key = min(t for t, (_, key) in zip(times, copied, strict=True) if key)
    keep = (times >= first_key - 1e-6) & np.array(shown_flags)
    order = np.argsort(times[keep])
    shown, numbers = times[keep][order], pictures[keep][order]
    return Truth(Path(path), numbers, shown, float(shown[-1] + 1 / rate))


def upright_source(display: str) -> list[int]:
    """The display matrix for a transform name (video_decoders.TRANSFORMS), FFmpeg's layout."""
    one = 65536
    return {
        "cclock": [0, -one, 0, one, 0, 0, 0, 0, 1 << 30],
        "rotate 180": [-one, 0, 0, 0, -one, 0, 0, 0, 1 << 30],
        "clock": [0, one, 0, -one, 0, 0, 0, 0, 1 << 30],
        "hflip": [-one, 0, 0, 0, one, 0, 0, 0, 1 << 30],
    }[display]


def rotated(path: Path, display: str, count: int = 30) -> Truth:
    """Pictures stored turned so that a player, applying the display matrix, shows them upright."""
    from stages.data.video_decoders import TRANSFORMS, correction

    undo = TRANSFORMS[correction(display, "none")]
    stored = [undo(numbered(i)) for i in range(count)]
    times = np.arange(count) / 15
    _encode(path, stored, times, rate=15, matrix=upright_source(display), shape=stored[0].shape[:2])
    return Truth(Path(path), np.arange(count), times, count / 15)


def concatenated_ts(path: Path, step_back: float = 150.0) -> Truth:
    """Two recordings in one .ts (`cat a.ts b.ts`): the second's clock 150 s behind the first's."""
    first, second = path.with_suffix(".a.ts"), path.with_suffix(".b.ts")
    _encode(first, [numbered(i) for i in range(45)], 200 + np.arange(45) / 15, rate=15, fmt="mpegts")
    _encode(
        second,
        [numbered(45 + i) for i in range(45)],
        200 - step_back + np.arange(45) / 15,
        rate=15,
        fmt="mpegts",
    )
    path.write_bytes(first.read_bytes() + second.read_bytes())
    first.unlink()
    second.unlink()
    return Truth(Path(path), np.arange(90), np.arange(90) / 15, 6.0)


def spliced_ts(path: Path, jump: float = 100.0) -> Truth:
    """One .ts whose clock jumps forward by `jump` seconds after 3 s (a splice)."""
    times = np.arange(90) / 15 + np.where(np.arange(90) >= 45, jump, 0.0)
    _encode(path, [numbered(i) for i in range(90)], times, rate=15, fmt="mpegts", options={"bf": "0"})
    return Truth(Path(path), np.arange(90), np.arange(90) / 15, 6.0)


def audio_only(path: Path, cover: bool = False) -> Path:
    """An audio file (m4a), with a cover picture where asked."""
    import av

    with av.open(str(path), "w", format="mp4") as container:
        cover = _cover(container, av) if cover else None
        audio = container.add_stream("aac", rate=8000)
        if cover is not None:
            container.mux(cover)
        _silence(container, audio, 1.0, av)
    return Path(path)
