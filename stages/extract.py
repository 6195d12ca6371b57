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
from stages.data.annotations import load_annotations, safe_path
from stages.data.extracted_frames import frames_file, record_file, source_stamp
from stages.data.hdf5_cache import new_hdf5, store_frames
from stages.data.per_video import run_each
from stages.data.snippet_positions import resample_frame_indices
from stages.data.video_io import VideoReader
from stages.data.video_selection import WHOLE, Shard, drop_missing, select, write_lists
from stages.data.video_snippets import extracted

BATCH = 256  # frames decoded per decord call


@dataclass
class ExtractJob:
    video_id: str
    video_path: Path
    out_dir: Path
    fps: float
    height: int
    width: int
    backend: str
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
    shard: Shard = WHOLE


def extract_one(job: ExtractJob) -> int:
    """Decode one video into <id>.h5 and then <id>.json; returns the number of frames written.
    Frames are decoded, encoded and written BATCH at a time: memory does not grow with the video."""
    stamp = source_stamp(job.video_path)  # before decoding: a file replaced meanwhile is redone
    reader = VideoReader(job.video_path, job.backend, job.height, job.width)
    keep = resample_frame_indices(len(reader), reader.info.fps or job.fps, job.fps)
    batches = (reader.get_frames(keep[start : start + BATCH]) for start in range(0, len(keep), BATCH))
    with new_hdf5(frames_file(job.out_dir, job.video_id)) as f:
        store_frames(f, batches, len(keep), codec=job.codec, quality=job.quality, compression=job.compression)
    meta = {
        "video_id": job.video_id,
        "num_frames": int(len(keep)),
        "fps": job.fps,
        "height": job.height,
        "width": job.width,
        "codec": job.codec,
        "jpeg_quality": job.quality if job.codec == "jpeg" else None,
        "source": str(job.video_path),
        "source_stamp": stamp,
        "source_frames": len(reader),
        "source_fps": reader.info.fps,
    }
    write_json(record_file(job.out_dir, job.video_id), meta)
    return len(keep)


def run(settings: Settings, *, workers: int = 1, subsets: list[str] | None = None, shard: Shard = WHOLE,
        progress: Progress = SILENT) -> ExtractSummary:  # fmt: skip
    """Extract the videos of `subsets` (None: every video) in this shard; returns what was done,
    skipped, missing and failed."""
    d, c = settings.data, settings.cache
    if d.annotations is None or d.video_dir is None:
        raise UserError("data.annotations and data.video_dir must be set to extract")
    records = load_annotations(d.annotations)
    out_dir = frames_dir(settings)
    try:
        ensure_writable_dir(out_dir)
    except OSError as exc:
        raise UserError(f"{out_dir}: cannot write the output folder: {exc.strerror or exc}") from None
    jobs = {
        vid: ExtractJob(vid, safe_path(d.video_dir, vid, d.video_name), out_dir, d.fps, height=d.frame_height,
                        width=d.frame_width, backend=d.decoder, codec=c.codec, quality=c.jpeg_quality,
                        compression=c.compression)
        for vid in select(records, subsets, shard, where=str(d.annotations))
    }  # fmt: skip
    done = {vid for vid in jobs if extracted(settings, vid)}  # at the current fps and size
    chosen = drop_missing(list(jobs), lambda v: v in done or jobs[v].video_path.is_file(), d.missing,
                          what=f"video file in {d.video_dir}")  # fmt: skip
    summary = ExtractSummary(out_dir, missing=chosen.missing, notes=chosen.notes, shard=shard)
    todo = [jobs[v] for v in chosen.videos if v not in done]
    summary.skipped = len(done)
    progress.start(len(todo))
    start = time.perf_counter()

    def record(video_id: str, frames: int | None, reason: str | None) -> None:
        if reason is None:
            summary.done += 1
            summary.frames += frames
        else:
            summary.failures.append({"video_id": video_id, "reason": reason})
        speed = summary.frames / max(time.perf_counter() - start, 1e-9)
        progress.advance(info=f"{speed:,.0f} frames/s")

    run_each([(job.video_id, extract_one, (job,)) for job in todo], workers, record)
    summary.seconds = time.perf_counter() - start
    write_lists(out_dir, shard, failures=summary.failures, missing=summary.missing)
    return summary
