"""`etad synth`, `etad extract` and `etad cache`: videos into frames, snippets and features."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from etad_cli import views
from etad_cli.console import stage_progress, user_errors
from etad_cli.options import (
    CacheWorkersOpt,
    ConfigOpt,
    SetOpt,
    ShardOpt,
    SubsetOpt,
    WorkersOpt,
    flag,
    load,
    option,
)


def synth(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write videos/ and the annotation files into.")],
    videos: option(int, "Number of videos (30% go to validation).", min=1, max=100_000) = 24,
    classes: option(int, "Number of action classes (1-6).", min=1, max=6) = 4,
    seed: option(int, "Random seed; the same seed writes the same dataset.") = 0,
    fps: option(float, "Frames per second.", min=1.0, max=120.0) = 15.0,
    width: option(int, "Frame width (even).", min=32, max=3840) = 128,
    height: option(int, "Frame height (even).", min=32, max=2160) = 96,
    pretrain_videos: option(
        int,
        "Clean videos (actions alone) in a 'pretraining' subset, for train --encoder.",
        min=0,
        max=100_000,
    ) = 0,
    movers: flag("--movers", "Add hollow shapes that move like actions (not annotated).") = False,
    multi_label: flag("--multi-label", "Instances of several classes per video, free to overlap.") = False,
) -> None:
    """Write the built-in synthetic action dataset: mp4 videos plus ActivityNet and THUMOS style annotations.

    Example: etad synth work/demo/data --videos 48 --pretrain-videos 24 --movers --classes 4 --seed 0
    """
    from stages import synth as stage

    with user_errors(), stage_progress("synth videos") as progress:
        counts = {"videos": videos, "classes": classes, "pretrain_videos": pretrain_videos, "seed": seed}
        kinds = {"movers": movers, "multi_label": multi_label}
        summary = stage.run(
            out_dir, **counts, fps=fps, width=width, height=height, **kinds, progress=progress
        )
    views.synth_summary(summary)


def extract(
    config: ConfigOpt,
    set_: SetOpt = None,
    workers: WorkersOpt = None,
    subset: SubsetOpt = None,
    shard: ShardOpt = None,
) -> None:
    """Decode the videos of the annotation file (decord) into frames at data.fps and the data frame size.

    Writes <work_dir>/frames/<id>.h5 (+ <id>.json when complete). Optional: `etad cache` decodes
    the videos itself when no frames are extracted. Resumable: finished videos are skipped. Exit
    code 1 if some videos failed (listed in frames/failures.json); absent videos stop it before any
    work unless data.missing is skip (then listed in frames/missing.json).

    Examples:
      etad extract --config examples/demo.yaml --workers 2
      etad extract --config examples/anet_tsp_e2e.yaml --subset all --shard 3/8
    """
    from stages import api
    from stages.data.video_selection import parse_shard, parse_subsets

    with user_errors():
        s = load(config, set_)
        subsets, part = parse_subsets(subset, s), parse_shard(shard)
        with stage_progress("extract videos") as progress:
            summary = api.extract(s, workers=workers or 1, subsets=subsets, shard=part, progress=progress)
    views.per_video_summary(f"extract -> {summary.out_dir}", summary, frames=summary.frames)
    views.exit_on_failures(summary.failures, summary.out_dir / f"failures{part.suffix}.json")


def cache(
    config: ConfigOpt,
    set_: SetOpt = None,
    what: option(str, "snippets (for end-to-end training) or features (frozen encoder).") = "snippets",
    from_npy: option(
        Path | None, "Import released per-video features (v_<id>.npy or <id>.npy, [T, D])."
    ) = None,
    workers: CacheWorkersOpt = None,
    subset: SubsetOpt = None,
    shard: ShardOpt = None,
    dry_run: flag("--dry-run", "Project videos, frames, disk and time; write nothing.") = False,
    json_out: flag("--json", "With --dry-run: print the projection as JSON.") = False,
) -> None:
    """Cache the videos' snippets (each frame once, JPEG by default), or a frozen encoder's features,
    into per-video HDF5 files under <work_dir>/cache/.

    Frames come from `etad extract` when it ran, else straight from the video files. Resumable and
    kill-safe: each video file is written under a temporary name and renamed; a rerun skips videos
    already cached with the same settings. A run checks the free disk space against its projection
    first. Exit code 1 if some videos failed.

    Examples:
      etad cache --config examples/demo.yaml --what snippets
      etad cache --config examples/anet_tsp_e2e.yaml --what snippets --dry-run
      etad cache --config examples/anet_tsp_e2e.yaml --what snippets --shard 2/16
      etad cache --config examples/anet_tsp_feature.yaml --from-npy data/tsp_features
    """
    from stages import api
    from stages import cache as stage
    from stages.data.video_selection import parse_shard, parse_subsets

    with user_errors():
        s = load(config, set_)
        subsets, part = parse_subsets(subset, s), parse_shard(shard)
        if dry_run:
            views.cache_projection(stage.project(s, what=what, subsets=subsets, shard=part), json_out)
            return
        with stage_progress(f"cache {'features' if from_npy is not None else what}") as progress:
            chosen = dict(workers=workers, subsets=subsets, shard=part, progress=progress)
            summary = api.cache(s, what=what, from_npy=from_npy, **chosen)
    views.per_video_summary(f"cache {summary.kind} -> {summary.out_dir}", summary)
    views.exit_on_failures(summary.failures, summary.out_dir / f"failures{part.suffix}.json")
