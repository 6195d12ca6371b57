"""`etad infer`: detections for the evaluation subset (or one video file) from a checkpoint, written
as ActivityNet-format JSON (stages/inference: the loaded checkpoint, batches, one video, outputs)."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from stages.core.errors import UserError
from stages.core.files import ensure_writable_dir
from stages.core.progress import SILENT, Progress
from stages.core.runtime import reuse_freed_memory, use_threads
from stages.core.settings import Settings
from stages.core.workdir import (
    beside_output,
    output_path,
)
from stages.data.annotations import safe_path
from stages.data.protocols import Item
from stages.data.video_selection import WHOLE, Shard
from stages.evaluation.timeline import plot_timeline
from stages.inference.batches import cached_dataset, classifier_accuracy, detect
from stages.inference.checkpoint import LoadedCheckpoint, find_checkpoint, labeller, task_of
from stages.inference.one_video import detect_one, for_new_videos, open_video
from stages.inference.outputs import write_outputs, write_results, write_shard
from stages.model.classifier import VideoClassifier


@dataclass
class InferSummary:
    output: Path
    kind: str  # the checkpoint's: pretrain (frozen features) or e2e (end to end)
    checkpoint: Path
    task: str  # what the output can be scored as: detection, or proposals (no classes)
    videos: int = 0
    detections: int = 0
    seconds: float = 0.0
    plots: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    top: list[dict] = field(default_factory=list)  # --video: the detections, best first
    shard: Shard = WHOLE
    complete: bool = True  # False: this shard's part is written, infer.output waits for the others


def writable_output(settings: Settings) -> Path:
    """infer.output, after checking (before any work) that its folder can be written."""
    output = output_path(settings)
    try:
        ensure_writable_dir(output.parent)
    except OSError as exc:
        raise UserError(f"{output.parent}: cannot write results: {exc.strerror or exc}") from None
    if output.is_dir():
        raise UserError(f"{output}: is a folder; infer.output must name a file")
    return output


def run(
    settings: Settings,
    *,
    checkpoint: Path | None = None,
    plot: int = 0,
    video: Path | None = None,
    shard: Shard = WHOLE,
    progress: Progress = SILENT,
) -> InferSummary:
    """Detect the evaluation subset (or this `shard` of its videos, or one `video` file) with a
    checkpoint (default: the newest run's)."""
    began = time.perf_counter()
    use_threads(settings.threads)
    reuse_freed_memory()  # the batches' large tensors: reused, not faulted in again (runtime.py)
    checkpoint = checkpoint or find_checkpoint(settings)
    output = writable_output(settings)
    loaded = LoadedCheckpoint(settings, checkpoint)
    if video is not None:
        summary = run_video(settings, loaded, video, plot=plot > 0, progress=progress)
        summary.seconds = time.perf_counter() - began
        return summary
    dataset, notes = cached_dataset(settings, loaded, shard)
    label = labeller(settings, loaded)
    progress.start(len(dataset))
    results, class_scores = detect(
        settings,
        loaded,
        dataset.items,
        dataset,
        label=label,
        snippets=dataset.load.kind == "snippets",
        progress=progress,
    )
    summary = InferSummary(output, loaded.kind, checkpoint, task_of(settings), notes=notes, shard=shard)
    summary.videos, summary.detections = len(results), sum(len(v) for v in results.values())
    video_head = isinstance(loaded.model.classifier, VideoClassifier)  # the proposal head: no video scores
    classes = loaded.classes if settings.infer.classifier == "builtin" and video_head else None
    if shard.count > 1:
        summary.complete = write_shard(
            output, shard, checkpoint, settings, results=results, class_scores=class_scores, classes=classes
        )
    else:
        write_outputs(output, results, class_scores, classes)
        if classes is not None and (accuracy := classifier_accuracy(dataset.items, classes, class_scores)):
            notes.append(accuracy)
    if plot:
        items = {item.video_id: item for item in dataset.items}
        folder = beside_output(output, "plots")
        folder.mkdir(parents=True, exist_ok=True)
        for video_id in list(results)[:plot]:
            path = safe_path(folder, video_id, "{id}.png")
            plot_timeline(items[video_id], results[video_id], path)
            summary.plots.append(path)
    summary.seconds = time.perf_counter() - began
    return summary


def run_video(
    settings: Settings, loaded: LoadedCheckpoint, video: Path, *, plot: bool, progress: Progress = SILENT
) -> InferSummary:
    """Detections of one video file that is in no annotation file, best first; saved as
    ActivityNet-format JSON beside infer.output as `<video stem>.json` (cityCC0.mpg -> cityCC0.json);
    with `plot`, their timeline as `<video stem>.png` in the model's plots folder (beside_output)."""
    settings, notes = for_new_videos(settings, loaded)
    output = _video_output(settings, video)
    found = detect_one(settings, loaded, open_video(settings, video), video_id=video.stem, progress=progress)
    # both outputs checked before either is written; the plot beside the model's detections
    plot_path = _writable_plot(beside_output(output_path(settings), "plots"), output.stem) if plot else None
    write_results(output, {found.video_id: found.detections})
    counts = dict(videos=1, detections=len(found.detections), notes=notes + found.notes)
    summary = InferSummary(output, loaded.kind, loaded.path, task_of(settings), **counts)
    summary.top = found.detections
    if plot_path is not None:
        plot_timeline(Item(found.video_id, found.duration, []), found.detections, plot_path)
        summary.plots.append(plot_path)
    return summary


def _video_output(settings: Settings, video: Path) -> Path:
    """Where one video's detections go: named for the video, as an id is (cityCC0.mpg ->
    cityCC0.json; a hidden file's, .clip.mp4, without its leading dots), beside infer.output and
    never over one of the subset's files."""
    stem = Path(video.name.lstrip(".")).stem or "video"
    output = safe_path(output_path(settings).parent, stem, "{id}.json")
    subset = output_path(settings)
    companions = {subset.name, f"{subset.stem}.classes.json", f"{subset.stem}.metrics.json"}
    shard_part = rf"{re.escape(subset.stem)}\.shard\d+of\d+\.json"
    if output.name in companions or re.fullmatch(shard_part, output.name):
        raise UserError(
            f"--video {video}: its detections would be written to {output}, a file of the "
            "subset's detections (infer.output); rename the video or set infer.output"
        )
    return output


def _writable_plot(folder: Path, name: str) -> Path:
    """Where `--video --plot` draws the timeline (<folder>/<name>.png), the folder made and proven
    writable."""
    path = safe_path(folder, name, "{id}.png")
    try:
        ensure_writable_dir(path.parent)
    except OSError as exc:
        raise UserError(f"{path.parent}: cannot write: {exc.strerror or exc}") from None
    return path
