"""`etad extract`: decode every video of the annotation file at a fixed fps and frame size.

Output, per video, in <work_dir>/frames/ (docs/extract.md):
  <id>.npy    uint8 [N, H, W, 3] RGB frames (raw .npy: memory-mappable, exact, fastest to write and read;
              the format was chosen by measurement, see docs/benchmarks.md)
  <id>.json   written last: {video_id, num_frames, fps, height, width, source, source_frames, source_fps}.
              Its presence (with matching fps and size) is what marks the video as done.
  failures.json   [{video_id, reason}] of the last run.
A rerun skips finished videos and redoes half-written ones. A video that is missing or cannot be
decoded is listed in failures.json and does not stop the run.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stages.core.errors import UserError
from stages.core.files import atomic_output, ensure_writable_dir, write_json
from stages.core.progress import SILENT, Progress
from stages.core.settings import Settings
from stages.core.workdir import frames_dir
from stages.data.annotations import load_annotations, safe_path
from stages.data.extracted_frames import frames_file, read_meta, record_file
from stages.data.per_video import run_each
from stages.data.snippet_positions import resample_frame_indices
from stages.data.video_io import VideoReader

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


@dataclass
class ExtractSummary:
    out_dir: Path
    done: int = 0
    skipped: int = 0
    frames: int = 0
    seconds: float = 0.0
    failures: list[dict] = field(default_factory=list)


def is_done(job: ExtractJob) -> bool:
    meta = read_meta(job.out_dir, job.video_id)
    return (
        meta is not None
        and meta.get("fps") == job.fps
        and (meta.get("height"), meta.get("width")) == (job.height, job.width)
        and frames_file(job.out_dir, job.video_id).is_file()
    )


def extract_one(job: ExtractJob) -> int:
    """Decode one video into <id>.npy and then <id>.json; returns the number of frames written.

    A writer thread stores batch k while decord decodes batch k+1 (both release the GIL), so
    extraction runs at about the speed of decoding alone.
    """
    reader = VideoReader(job.video_path, job.backend, job.height, job.width)
    keep = resample_frame_indices(len(reader), reader.info.fps or job.fps, job.fps)
    shape = (len(keep), job.height, job.width, 3)
    with atomic_output(frames_file(job.out_dir, job.video_id)) as tmp, open(tmp, "wb") as out:
        np.lib.format.write_array_header_1_0(out, {"descr": "|u1", "fortran_order": False, "shape": shape})
        with ThreadPoolExecutor(1) as writer:
            pending = None
            for start in range(0, len(keep), BATCH):
                batch = reader.get_frames(keep[start : start + BATCH])
                if pending is not None:
                    pending.result()
                pending = writer.submit(out.write, np.ascontiguousarray(batch).data)
            if pending is not None:
                pending.result()
    meta = {
        "video_id": job.video_id,
        "num_frames": int(len(keep)),
        "fps": job.fps,
        "height": job.height,
        "width": job.width,
        "source": str(job.video_path),
        "source_frames": len(reader),
        "source_fps": reader.info.fps,
    }
    write_json(record_file(job.out_dir, job.video_id), meta)
    return len(keep)


def run(settings: Settings, *, workers: int = 1, progress: Progress = SILENT) -> ExtractSummary:
    """Extract every video of the annotation file; returns what was done, skipped and failed."""
    d = settings.data
    if d.annotations is None or d.video_dir is None:
        raise UserError("data.annotations and data.video_dir must be set to extract")
    records = load_annotations(d.annotations)
    out_dir = frames_dir(settings)
    try:
        ensure_writable_dir(out_dir)
    except OSError as exc:
        raise UserError(f"{out_dir}: cannot write the output folder: {exc.strerror or exc}") from None
    jobs = [
        ExtractJob(vid, safe_path(d.video_dir, vid, d.video_name), out_dir, d.fps, height=d.frame_height,
                   width=d.frame_width, backend=d.decoder)
        for vid in records
    ]  # fmt: skip
    summary = ExtractSummary(out_dir)
    todo = []
    for job in jobs:
        if is_done(job):
            summary.skipped += 1
        else:
            todo.append(job)
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
    write_json(out_dir / "failures.json", summary.failures)
    return summary
