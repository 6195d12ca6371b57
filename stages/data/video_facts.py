"""What decoding found about each video, checked against the annotation file, for the summaries of
`etad extract` and `etad cache`: the videos a user should look at (variable rate, upsampled,
timestamps out of order or absent, damaged, a decoded length far from the annotated one), one note
per kind on the console and every video's facts in `<out_dir>/videos.json`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from stages.core.files import write_json
from stages.data.video_io import TimedVideo, VideoError, VideoFacts
from stages.data.video_selection import Shard

SHOWN = 3  # video ids named per kind of note


def duration_gap(decoded: float, annotated: float | None, fps: float) -> str | None:
    """A decoded length that differs from the annotated one by more than a frame at `fps` and 2%,
    or None. Labels are seconds of the annotation file: a video whose frames end early has labels
    past its last frame, one that runs long has frames nothing labels (a 4 s clip annotated 3.8 s
    is 5% off: the 1 s floor this had hid it)."""
    if annotated is None or not math.isfinite(annotated) or annotated <= 0:
        return None
    if abs(decoded - annotated) <= max(1.0 / fps, 0.02 * annotated):
        return None
    if decoded < annotated:
        return f"truncated: decodes to {decoded:.2f} s, annotated {annotated:.2f} s"
    return f"longer than annotated: decodes to {decoded:.2f} s, annotated {annotated:.2f} s"


def open_video(
    path: Path,
    fps: float,
    *,
    backend: str,
    size: tuple[int, int],
    resize: str,
    annotated: float | None,
    truncated: str,
) -> TimedVideo:
    """A video at `fps`; with data.truncated: error, one that decodes shorter than its annotation
    fails here, before anything is written."""
    video = TimedVideo(path, fps, backend, height=size[0], width=size[1], resize=resize)
    gap = duration_gap(video.facts.duration, annotated, fps)
    if truncated == "error" and gap is not None and gap.startswith("truncated"):
        raise VideoError(f"{path}: {gap} (data.truncated: error)")
    return video


@dataclass
class VideoNotes:
    """The facts of the videos a run decoded, and what a user should know about them."""

    facts: dict[str, dict] = field(default_factory=dict)
    notes: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # id -> [(kind, phrase)]

    def add(self, video_id: str, facts: dict, annotated: float | None, fps: float) -> None:
        found = VideoFacts(**facts).anomalies(fps)
        gap = duration_gap(facts["duration"], annotated, fps)
        if gap is not None:
            found.append((gap.split(":")[0], gap))
        self.facts[video_id] = {**facts, "anomalies": [phrase for _, phrase in found]}
        if found:
            self.notes[video_id] = found

    def write(self, folder: Path, shard: Shard) -> list[str]:
        """Write every video's facts to <folder>/videos<part>.json; one note line per kind."""
        if not self.facts:
            return []
        path = folder / f"videos{shard.suffix}.json"
        write_json(path, self.facts)
        kinds: dict[str, list[tuple[str, str]]] = {}
        for video_id, found in self.notes.items():
            for kind, phrase in found:
                kinds.setdefault(kind, []).append((video_id, phrase))
        lines = []
        for kind, videos in kinds.items():
            named = "; ".join(f"{v}: {phrase}" for v, phrase in videos[:SHOWN])
            more = f" and {len(videos) - SHOWN} more" if len(videos) > SHOWN else ""
            lines.append(f"{len(videos)} video(s) {kind}: {named}{more} (all: {path})")
        return lines
