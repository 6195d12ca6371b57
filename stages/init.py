"""`etad init`: a working settings file for a user's own videos and annotation file (converted by
`etad annotations convert --videos` first), every path absolute, sizes chosen from what the videos
hold, a comment on each choice (docs/own_videos.md).

The start is the demo's small CPU setup (a tiny encoder pretrained on the user's own clips with
TSP's objective, a detector on its frozen features, then both end to end): it runs on a laptop in
minutes, and the comments say what to change for a GPU and a real encoder.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

from stages.core.errors import UserError
from stages.core.files import atomic_output
from stages.data.annotations import VideoRecord, load_annotations, several_classes
from stages.data.video_index import Probe, probe, video_file


@dataclass
class Probed:
    """What the videos hold, over all of them."""

    videos: int
    fps: float  # the median source rate
    height: int  # the smallest coded height
    width: int
    duration: float  # the median duration (s)
    longest: float


@dataclass
class InitSummary:
    settings: Path
    probed: Probed
    subsets: tuple[str, str]  # training, evaluation
    classifier: str
    notes: list[str] = field(default_factory=list)


def summarise(records: dict[str, VideoRecord], videos: Path, probed: dict[str, Probe]) -> Probed:
    """The annotated videos' rates, sizes and durations over all of them: from `probed` (what
    `annotations convert --videos` read), else read from each file (`<id>.*`)."""
    each = []
    for video_id in records:
        if video_id not in probed:
            found = video_file(videos, video_id)
            if found is None:
                raise UserError(f"{videos}: no video file for {video_id!r} (tried <id>.*)")
            probed[video_id] = probe(found)
        each.append(probed[video_id])
    return Probed(
        videos=len(each),
        fps=statistics.median(p.fps for p in each),
        height=min(p.size[0] for p in each),
        width=min(p.size[1] for p in each),
        duration=statistics.median(p.duration for p in each),
        longest=max(p.duration for p in each),
    )


def _subsets(records: dict[str, VideoRecord]) -> tuple[tuple[str, str], list[str]]:
    """(training subset, evaluation subset) from the file's own names; one subset serves both (noted)."""
    held = sorted({r.subset or "" for r in records.values()})
    train = next((s for s in held if s.lower().startswith("train")), None)
    evaluate = next((s for s in held if s.lower().startswith(("val", "test"))), None)
    if train and evaluate:
        return (train, evaluate), []
    only = held[0]
    return (only, only), [
        f"one subset ({only!r}): training and evaluation use the same videos; give the "
        "CSV a subset column (training, validation) to hold some out"
    ]


def new_run_folder(out: Path) -> Path:
    """`out`, made; refused where it already holds a run's settings (nothing is written over)."""
    if (Path(out) / "settings.yaml").exists():
        raise UserError(f"{Path(out) / 'settings.yaml'}: exists; give another --out folder")
    Path(out).mkdir(parents=True, exist_ok=True)
    return Path(out)


def run(videos: Path, annotations: Path, out: Path, probed: dict[str, Probe] | None = None) -> InitSummary:
    """Write `out`/settings.yaml for the videos in `videos` annotated in `annotations` (ActivityNet
    layout, durations set; `probed`: what was read of the videos already); refuses to write over one."""
    videos, annotations, out = Path(videos).resolve(), Path(annotations).resolve(), Path(out).resolve()
    target = out / "settings.yaml"
    if target.exists():
        raise UserError(f"{target}: exists; give another --out folder")
    records = load_annotations(annotations, require_duration=False)
    held = summarise(records, videos, dict(probed or {}))
    (train, evaluate), notes = _subsets(records)
    classifier = "proposal" if several_classes(list(records.values())) else "video"
    out.mkdir(parents=True, exist_ok=True)
    with atomic_output(target) as tmp:
        chosen = {"subsets": (train, evaluate), "classifier": classifier}
        tmp.write_text(settings_text(videos, annotations, out, held, **chosen), encoding="utf-8")
    return InitSummary(target, held, subsets=(train, evaluate), classifier=classifier, notes=notes)


def settings_text(
    videos: Path, annotations: Path, out: Path, p: Probed, *, subsets: tuple[str, str], classifier: str
) -> str:
    """The settings file (TEMPLATE), each choice commented with the figure it came from."""
    fps = 15 if p.fps >= 15 else max(1, round(p.fps))
    frames = p.duration * fps
    scale = 32 if frames <= 32 * 16 else 64 if frames <= 64 * 16 else 128
    small = p.height >= 48 and p.width >= 64
    height, width = (48, 64) if small else (p.height // 2 * 2, p.width // 2 * 2)
    head = (
        "             # most videos hold several classes: each segment labelled by its own"
        if classifier == "proposal"
        else "                # one class per video, mostly: the video head"
    )
    rate = "" if fps == 15 else f"; your videos run at {p.fps:.3g} fps"
    source = dict(videos=p.videos, duration=p.duration, longest=p.longest, source_fps=p.fps)
    source |= dict(source_width=p.width, source_height=p.height)
    paths = dict(work=out / "work", annotations=annotations, video_dir=videos)
    paths["encoder"] = out / "work" / "encoder" / "encoder_tsp.pth"
    chosen = dict(train=subsets[0], evaluate=subsets[1], fps=fps, rate=rate, height=height, width=width)
    chosen |= dict(scale=scale, frames=frames, classifier=classifier, head=head)
    return TEMPLATE.format(**source, **paths, **chosen)


TEMPLATE = """# etad settings for your own videos, written by `etad init` (docs/own_videos.md).
# {videos} videos: median {duration:.1f} s (longest {longest:.1f} s), {source_fps:.3g} fps, smallest
# {source_width}x{source_height}. Every path is absolute. A small CPU start (the demo's sizes): it runs on a
# laptop in minutes; for a GPU and a real encoder see the comments and docs/own_videos.md.
seed: 0
work_dir: {work}

data:
  protocol: anet                  # snippets spread over the whole video: clips of any length
  annotations: {annotations}
  video_dir: {video_dir}
  video_name: ["{{id}}.*"]          # each id's file, whatever its extension
  train_subset: {train}
  eval_subset: {evaluate}
  fps: {fps}                         # ETAD's 15{rate}
  frame_height: {height}                # the tiny encoder's size; 128 x 171 (ETAD's) for r2plus1d_34
  frame_width: {width}
  resize: crop                    # keep your videos' shape (phones: portrait), cut the centre
  snippet_length: 8
  temporal_scale: {scale}              # snippets per video; a median video: {frames:.0f} frames at {fps} fps

model:
  in_channels: 64
  hidden_channels: 64
  max_duration: {scale}                # an action may last the whole video
  roi_size: 8
  proposal_ratio: 0.2
  classifier_head: true
  classifier: {classifier}{head}
  encoder:
    name: tiny                    # r2plus1d_34 with a TSP checkpoint on a GPU (docs/encoders.md)
    checkpoint: {encoder}   # `etad train --encoder` writes it
    crop_size: 40
    frozen_stages: 0
    norm_eval: true

cache:
  device: cpu

encoder_train:                    # TSP's objective on your own annotated clips
  subset: {train}
  epochs: 8
  device: cpu

train:
  epochs: 12
  lr_step: 10
  device: cpu

e2e:
  epochs: 12
  lr_step: 10
  snippet_ratio: 0.5
  device: cpu

infer:
  device: cpu
  classifier: builtin
"""
