"""etad's Python API: what every command does, callable from a script or a notebook (docs/api.md).

    from stages import api
    settings = api.load_settings("examples/demo.yaml", ["infer.batch_size=8"])
    detector = api.VideoDetector(settings)               # the newest run's checkpoint
    found = detector.video("my_clip.mp4")                # VideoDetections, best first, with notes
    report = api.evaluate("results.json", "gt.json", dataset="anet")
    print(report.average, report.values)

The commands (etad_cli) are thin calls of these functions: they parse options, call one of them
with a rich progress bar and print what it returns. A stage run through here logs its settings and
appends its cost to <work_dir>/logs/stages.jsonl, as the command does (`etad report` reads it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stages.core.errors import UserError
from stages.core.progress import SILENT, Progress
from stages.core.runlog import StageRun

if TYPE_CHECKING:  # the stages load when a function runs, so `import stages.api` stays fast
    from stages.core.settings import Settings
    from stages.evaluate import EvalReport
    from stages.inference.one_video import VideoDetections

TRAIN_STAGES = {"train": "train", "e2e": "train --e2e", "encoder": "train --encoder"}  # kind -> name


def registries(with_torch: bool = True) -> dict[str, dict]:
    """Setting key -> the registry (a plain dict in the module that owns the parts) its names are
    checked against. `with_torch=False` leaves out those that live in torch modules, so that scoring
    and showing settings start without importing torch."""
    from stages.data.protocols import PROTOCOLS
    from stages.evaluation.benchmarks import BENCHMARKS
    from stages.evaluation.postprocess import CLASSIFIERS, POST_PROCESSING

    parts = {
        "data.protocol": PROTOCOLS,
        "infer.classifier": CLASSIFIERS,
        "infer.post_processing": POST_PROCESSING,
    }
    parts["eval.benchmark"] = BENCHMARKS
    if with_torch:
        from stages.model.backward import GRAD_MODES
        from stages.model.detector import VARIANTS
        from stages.model.encoder import ENCODERS
        from stages.model.sampling import PROPOSAL_SAMPLERS, SNIPPET_SAMPLERS

        parts |= {"model.encoder.name": ENCODERS, "model.variant": VARIANTS, "e2e.grad_mode": GRAD_MODES}
        parts |= {"model.proposal_sampling": PROPOSAL_SAMPLERS, "e2e.snippet_sampling": SNIPPET_SAMPLERS}
    return parts


def load_settings(
    config: Path | str | None, overrides: Sequence[str] = (), *, check_parts: bool = True
) -> Settings:
    """The settings of a YAML file (None: the defaults) with `KEY=VALUE` overrides applied, validated
    (UserError with one line per problem); part names checked against their registries."""
    from stages.core.settings_file import load_settings as from_file

    return from_file(
        Path(config) if config is not None else None, list(overrides), parts=registries(check_parts)
    )


def extract(settings: Settings, *, progress: Progress = SILENT, **options: Any) -> Any:
    """`etad extract`: the videos' frames at data.fps and the data frame size (an ExtractSummary).
    Options as stages.extract.run's: workers, subsets (None: every video), shard."""
    from stages import extract as stage

    run = StageRun.start(settings, "extract", progress)
    summary = stage.run(settings, progress=progress, **options)
    run.done(videos=summary.done, skipped=summary.skipped, failed=len(summary.failures))
    return summary


def cache(settings: Settings, *, what: str = "snippets", progress: Progress = SILENT, **options: Any) -> Any:
    """`etad cache`: snippets or features of the videos in HDF5 (a CacheSummary). Options as
    stages.cache.run's: from_npy (import released features), workers, subsets, shard."""
    from stages import cache as stage

    imported = options.get("from_npy") is not None
    run = StageRun.start(settings, f"cache {'features' if imported else what}", progress)
    summary = stage.run(settings, what=what, progress=progress, **options)
    run.done(videos=summary.done, skipped=summary.skipped, failed=len(summary.failures))
    return summary


@dataclass
class Trained:
    summary: Any  # stages.training.loop.TrainSummary
    cost: dict  # the stages.jsonl record: seconds, peak_rss_mib, peak_gpu_mib, ... (empty off rank 0)


def train(
    settings: Settings,
    kind: str = "train",
    *,
    resume: bool = False,
    restart: bool = False,
    progress: Progress = SILENT,
    log: bool = True,
) -> Trained:
    """One training run: `etad train` (kind "train"), `--e2e` ("e2e") or `--encoder` ("encoder");
    `log=False` on the non-zero ranks of torchrun (they write nothing shared)."""
    from stages import train as frozen
    from stages import train_e2e, train_encoder

    if kind not in TRAIN_STAGES:
        raise UserError(f"training kind {kind!r}: one of {', '.join(TRAIN_STAGES)}")
    trainer = {"train": frozen, "e2e": train_e2e, "encoder": train_encoder}[kind]
    run = StageRun.start(settings, TRAIN_STAGES[kind], progress) if log else None
    summary = trainer.run(settings, resume=resume, restart=restart, progress=progress)
    cost = {}
    if run is not None:
        cost = run.done(epochs=len(summary.epochs), peak_gpu_mib=round(summary.peak_memory_mb, 1))
    return Trained(summary, cost)


@dataclass
class Inferred:
    summary: Any  # stages.infer.InferSummary
    report: EvalReport | None = None  # with evaluate=True
    cost: dict = field(default_factory=dict)


def infer(
    settings: Settings,
    *,
    video: Path | None = None,
    evaluate: bool = False,
    progress: Progress = SILENT,
    **options: Any,
) -> Inferred:
    """`etad infer`: detections of the evaluation subset (or a `shard` of it, or one video file)
    written to infer.output; with `evaluate`, scored once infer.output is complete (the report also
    saved beside it as <output>.metrics.json). Options as stages.infer.run's: checkpoint (default: the
    newest run's), plot (timelines of the first N videos), shard."""
    from stages import evaluate as scoring
    from stages import infer as stage

    if evaluate and video is not None:
        raise UserError(
            f"--video {video}: --eval scores a subset against its annotation file, and this "
            "video is in none; detect it without --eval, or add it to an annotation file"
        )
    run = StageRun.start(settings, "infer --video" if video is not None else "infer", progress)
    summary = stage.run(settings, video=video, progress=progress, **options)
    done, scores = Inferred(summary), {}
    if evaluate and video is None and summary.complete:
        request = scoring.EvalRequest.from_settings(settings, predictions=summary.output, task=summary.task)
        done.report = report = scoring.run(request)
        scoring.save_json(report, summary.output.with_suffix(".metrics.json"))
        scores = {"task": report.task, "average": report.average, "first_tiou": report.values[0]}
    where = dict(checkpoint=str(summary.checkpoint), output=str(summary.output))
    done.cost = run.done(kind=summary.kind, **where, **scores)
    return done


class VideoDetector:
    """A checkpoint loaded once, to detect actions in any number of videos that are in no annotation
    file: files (decoded as `etad extract` does) or frames already decoded. Nothing is written."""

    def __init__(self, settings: Settings, checkpoint: Path | str | None = None) -> None:
        """`checkpoint`: etad's or a released one (default: the newest run's last.pt in work_dir)."""
        from stages.inference.checkpoint import LoadedCheckpoint, find_checkpoint
        from stages.inference.one_video import for_new_videos

        self.checkpoint = Path(checkpoint) if checkpoint is not None else find_checkpoint(settings)
        self.loaded = LoadedCheckpoint(settings, self.checkpoint)
        self.settings, self.notes = for_new_videos(settings, self.loaded)
        self.classes = self.loaded.classes

    def video(self, path: Path | str, progress: Progress = SILENT) -> VideoDetections:
        """Detections of a video file, best first, with what its decoding found (notes)."""
        from stages.inference.one_video import detect_one, open_video

        path = Path(path)
        source = open_video(self.settings, path)
        return detect_one(self.settings, self.loaded, source, video_id=path.stem, progress=progress)

    def frames(
        self, frames: np.ndarray, video_id: str = "frames", progress: Progress = SILENT
    ) -> VideoDetections:
        """Detections of frames already decoded at data.fps and the data frame size ([N, H, W, 3] uint8)."""
        from stages.inference.one_video import FrameArray, detect_one

        source = FrameArray(frames)
        return detect_one(self.settings, self.loaded, source, video_id=video_id, progress=progress)


def evaluate(
    predictions: Path | str | None = None,
    ground_truth: Path | str | None = None,
    *,
    settings: Settings | None = None,
    **options: Any,
) -> EvalReport:
    """`etad eval`: the scores of a detections (or proposals) file against a ground truth, as the
    official code computes them. Options as the command's: dataset, subset, blocked, task, tious,
    protocol; each left out comes from `settings` where given (infer.output, data.annotations, ...)."""
    from stages import evaluate as stage

    files = {
        k: Path(v) for k, v in (("predictions", predictions), ("ground_truth", ground_truth)) if v is not None
    }
    return stage.run(stage.EvalRequest.from_settings(settings, **files, **options))


def diagnose(
    predictions: Path | str | None = None,
    ground_truth: Path | str | None = None,
    *,
    settings: Settings | None = None,
    **options: Any,
) -> dict:
    """`etad diagnose`: DETAD's false-positive profile, sensitivity and false negatives, written to
    `out` (default: beside the detections) and returned as a dict. Options: dataset, subset, out."""
    from stages import diagnose as stage

    files = {
        k: Path(v) for k, v in (("predictions", predictions), ("ground_truth", ground_truth)) if v is not None
    }
    return stage.run(**stage.request(settings, **files, **options))
