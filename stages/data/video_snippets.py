"""The frames a video's snippets need, each read once: from `etad extract`'s frames when they are
there (and match data.fps and the frame size), else decoded straight from the video file (decord,
or PyAV), so that `etad cache` needs no extracted frames at all and peak disk is the cache alone.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from stages.core.errors import UserError
from stages.core.workdir import frames_dir
from stages.data.annotations import safe_path
from stages.data.extracted_frames import frame_reader, intact, read_meta, source_stamp
from stages.data.protocols import protocol
from stages.data.video_facts import open_video
from stages.data.video_index import video_file

if TYPE_CHECKING:  # the settings models, for type hints only
    from stages.core.settings import DataSettings, Settings

BATCH = 256  # frames decoded (and encoded) at a time: memory stays one batch's


@dataclass
class VideoSnippets:
    """Where a video's snippets are and how to read their frames."""

    video_id: str
    frame_indices: np.ndarray  # [T, L]: frames of the video at data.fps
    num_frames: int  # frames of the video at data.fps
    source: str  # the extracted frames' folder, or the video file
    read: Callable[[np.ndarray], np.ndarray]  # frame numbers -> uint8 frames [n, H, W, 3]
    # extracted JPEG frames: frame numbers -> their JPEG bytes, and the quality they were written at
    read_jpeg: Callable[[np.ndarray], list[np.ndarray]] | None = None
    jpeg_quality: int | None = None
    facts: Callable[[], dict] | None = None  # a video file's VideoFacts record, once its frames are read

    @cached_property
    def stored(self) -> np.ndarray:
        """The frames the snippets use, sorted, each once [F]."""
        return np.unique(self.frame_indices)

    @property
    def snippet_frames(self) -> np.ndarray:
        """[T, L]: for each snippet frame, its place in `stored`."""
        return np.searchsorted(self.stored, self.frame_indices)

    def batches(self, size: int = BATCH, *, as_jpeg: int | None = None) -> Iterator[np.ndarray | list]:
        """The stored frames, in order, `size` at a time; with `as_jpeg` (a quality), their JPEG bytes
        as they are where the source holds them at that quality (no decode, no second encode)."""
        stored, read = self.stored, self.read
        if as_jpeg is not None and self.read_jpeg is not None and self.jpeg_quality == as_jpeg:
            read = self.read_jpeg
        for start in range(0, len(stored), size):
            yield read(stored[start : start + size])

    def snippet_chunks(self, size: int) -> Iterator[np.ndarray]:
        """The snippets in order, `size` at a time, uint8 [n, L, H, W, 3]. Each chunk reads only the
        frames it needs (those it shares with the chunk before come again from the source's recent
        frames), so memory holds one chunk's frames whatever the video's length."""
        for start in range(0, len(self.frame_indices), size):
            rows = self.frame_indices[start : start + size]
            wanted, where = np.unique(rows, return_inverse=True)
            yield self.read(wanted)[where.reshape(rows.shape)]


def video_path(d: DataSettings, video_id: str) -> Path:
    """The video file of `video_id` in data.video_dir: the first of data.video_name's patterns that
    names an existing file (`{id}.*`: video_index.video_file's rule), else the first pattern's path
    (for messages)."""
    candidates = []
    for pattern in d.video_names:
        if pattern == "{id}.*":
            stem = safe_path(d.video_dir, video_id, "{id}")
            found = video_file(d.video_dir, video_id)
            candidates += [found] if found is not None else []
        else:
            candidates.append(safe_path(d.video_dir, video_id, pattern))
    return next((p for p in candidates if p.is_file()), candidates[0] if candidates else stem)


def extracted(settings: Settings, video_id: str) -> bool:
    """Whether `etad extract` wrote this video's frames at the current fps and size, from the video
    file data.video_dir names now, as that file is now (size and time; unset video_dir: the frames
    are all there is)."""
    d, folder = settings.data, frames_dir(settings)
    meta = read_meta(folder, video_id)
    current = (
        meta is not None
        and meta.get("fps") == d.fps
        and (meta.get("height"), meta.get("width")) == (d.frame_height, d.frame_width)
        and meta.get("resize") == d.resize  # absent: frames extracted by frame index, before display time
        and intact(folder, video_id, meta)
    )
    if not current or d.video_dir is None:
        return current
    video = video_path(d, video_id)
    if os.path.abspath(str(meta.get("source"))) != os.path.abspath(video):
        return False  # another video folder or name pattern
    return not video.is_file() or meta.get("source_stamp", source_stamp(video)) == source_stamp(video)


def decodable(settings: Settings, video_id: str) -> bool:
    """Whether `video_snippets` can read this video: extracted frames, or its video file."""
    d = settings.data
    file = d.video_dir is not None and video_path(d, video_id).is_file()
    return file or extracted(settings, video_id)


def video_snippets(settings: Settings, video_id: str, annotated: float | None = None) -> VideoSnippets:
    """A video's snippets at the protocol's positions: its extracted frames, else its video file
    (`annotated`: its annotated duration, for data.truncated)."""
    d, encoded = settings.data, {}
    if extracted(settings, video_id):
        read, meta = frame_reader(frames_dir(settings), video_id)
        num_frames, source = int(meta["num_frames"]), str(frames_dir(settings))
        if meta.get("codec") == "jpeg":
            read_jpeg, _ = frame_reader(frames_dir(settings), video_id, encoded=True)
            encoded = {"read_jpeg": read_jpeg, "jpeg_quality": meta.get("jpeg_quality")}
        encoded["facts"] = lambda: meta.get("video")
    else:
        if d.video_dir is None:
            raise UserError(
                f"{frames_dir(settings)}: video {video_id!r} is not extracted at data.fps and the frame "
                "size, and data.video_dir is not set to decode it"
            )
        path = video_path(d, video_id)
        video = open_video(
            path,
            d.fps,
            backend=d.decoder,
            size=(d.frame_height, d.frame_width),
            resize=d.resize,
            annotated=annotated,
            truncated=d.truncated,
        )
        num_frames, source, read = len(video), str(path), video.read
        encoded = {"facts": lambda: video.finish().as_record()}

    indices = protocol(d).snippet_frames(num_frames)
    return VideoSnippets(video_id, indices, num_frames, source=source, read=read, **encoded)
