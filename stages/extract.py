"""`etad extract`: decode every video of the annotation file at a fixed fps and frame size.

Output, per video, in <work_dir>/frames/ (docs/extract.md):
  <id>.h5     every RGB frame at data.fps, once, in the snippet cache's frame layout: JPEG by default
              (`cache.codec`, `cache.jpeg_quality`: about a ninth of raw uint8), or raw uint8
  <id>.json   written last: {video_id, num_frames, fps, height, width, codec, jpeg_quality, source,
              source_frames, source_fps}.
              Its presence (with matching fps and size) is what marks the video as done.
  failures.json   [{video_id, reason}] of the last run.
A rerun skips finished videos and redoes half-written ones. A video that is missing or cannot be
decoded is listed in failures.json and does not stop the run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from stages.core.errors import UserError
from stages.core.files import ensure_writable_dir, write_json
from stages.core.progress import SILENT, Progress
from stages.core.settings import Settings
from stages.core.workdir import frames_dir
from stages.data.annotations import load_annotations
from stages.data.extracted_frames import frames_file, record_file, source_stamp
from stages.data.hdf5_cache import new_hdf5, store_frames
from stages.data.per_video import run_each
from stages.data.video_decoders import decoder_problem
from stages.data.video_facts import VideoNotes, open_video
from stages.data.video_selection import WHOLE, Shard, drop_missing, select, write_lists
from stages.data.video_snippets import extracted, video_path

BATCH = 256  # frames decoded, encoded and written at a time


@dataclass
class ExtractJob:
    video_id: str
    video_path: Path
    out_dir: Path
    fps: float
    height: int
    width: int
    backend: str
    annotated: float | None = None  # the annotation file's duration, seconds
    resize: str = "stretch"
    truncated: str = "note"
    codec: str = "jpeg"
    quality: int = 90
    compression: str = "none"


@dataclass
class ExtractSummary:
    out_dir: Path
    done: int = 0
    skipped: int = 0
    frames: int = 0
    seconds: float = 0.0
    failures: list[dict] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # data.missing: skip
    notes: list[str] = field(default_factory=list)
    videos: VideoNotes = field(default_factory=VideoNotes)  # what decoding found, per video
    shard: Shard = WHOLE


def extract_one(job: ExtractJob) -> tuple[int, dict]:
    """Decode one video into <id>.h5 and then <id>.json; returns the number of frames written and
    what decoding found (VideoFacts). Frames are decoded, encoded and written BATCH at a time:
    memory does not grow with the video."""
    stamp = source_stamp(job.video_path)  # before decoding: a file replaced meanwhile is redone
    video = open_video(
        job.video_path,
        job.fps,
        backend=job.backend,
        size=(job.height, job.width),
        resize=job.resize,
        annotated=job.annotated,
        truncated=job.truncated,
    )
    with new_hdf5(frames_file(job.out_dir, job.video_id)) as f:
        store_frames(
            f,
            video.frames(BATCH),
            len(video),
            codec=job.codec,
            quality=job.quality,
            compression=job.compression,
        )
    facts = video.finish().as_record()
    meta = {
        "video_id": job.video_id,
        "num_frames": len(video),
        "fps": job.fps,
        "height": job.height,
        "width": job.width,
        "resize": job.resize,
        "codec": job.codec,
        "jpeg_quality": job.quality if job.codec == "jpeg" else None,
        "source": str(job.video_path),
        "source_stamp": stamp,
        "source_frames": facts["coded_frames"],
        "source_fps": facts["source_fps"],
        "video": facts,
    }
    write_json(record_file(job.out_dir, job.video_id), meta)
    return len(video), facts


def _job(settings: Settings, video_id: str, out_dir: Path, annotated: float | None) -> ExtractJob:
    """What one video's extraction needs, from the data and cache settings."""
    d, c = settings.data, settings.cache
    sizes = dict(height=d.frame_height, width=d.frame_width, resize=d.resize, truncated=d.truncated)
    storage = dict(codec=c.codec, quality=c.jpeg_quality, compression=c.compression)
    path = video_path(d, video_id)
    return ExtractJob(
        video_id, path, out_dir, d.fps, backend=d.decoder, annotated=annotated, **sizes, **storage
    )


def run(
    settings: Settings,
    *,
    workers: int = 1,
    subsets: list[str] | None = None,
    shard: Shard = WHOLE,
    progress: Progress = SILENT,
) -> ExtractSummary:
    """Extract the videos of `subsets` (None: every video) in this shard; returns what was done,
    skipped, missing and failed."""
    d = settings.data
    if d.annotations is None or d.video_dir is None:
        raise UserError("data.annotations and data.video_dir must be set to extract")
    if problem := decoder_problem(d.decoder):
        raise UserError(problem)
    records = load_annotations(d.annotations)
    out_dir = frames_dir(settings)
    try:
        ensure_writable_dir(out_dir)
    except OSError as exc:
        raise UserError(f"{out_dir}: cannot write the output folder: {exc.strerror or exc}") from None
    chosen_ids = select(records, subsets, shard, where=str(d.annotations))
    jobs = {vid: _job(settings, vid, out_dir, records[vid].duration) for vid in chosen_ids}
    done = {vid for vid in jobs if extracted(settings, vid)}  # at the current fps and size
    named = " or ".join(d.video_names)
    chosen = drop_missing(
        list(jobs),
        lambda v: v in done or jobs[v].video_path.is_file(),
        d.missing,
        what=f"video file in {d.video_dir} (named {named})",
    )
    summary = ExtractSummary(out_dir, missing=chosen.missing, notes=chosen.notes, shard=shard)
    todo = [jobs[v] for v in chosen.videos if v not in done]
    summary.skipped = len(done)
    progress.start(len(todo))
    start = time.perf_counter()

    def record(video_id: str, result: tuple[int, dict] | None, reason: str | None) -> None:
        if reason is None:
            summary.done += 1
            summary.frames += result[0]
            summary.videos.add(video_id, result[1], records[video_id].duration, d.fps)
        else:
            summary.failures.append({"video_id": video_id, "reason": reason})
        speed = summary.frames / max(time.perf_counter() - start, 1e-9)
        progress.advance(info=f"{speed:,.0f} frames/s")

    run_each([(job.video_id, extract_one, (job,)) for job in todo], workers, record)
    summary.seconds = time.perf_counter() - start
    write_lists(out_dir, shard, failures=summary.failures, missing=summary.missing)
    summary.notes += summary.videos.write(out_dir, shard)
    return summary
