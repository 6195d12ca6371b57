"""`etad train` (its three kinds), `etad study` (sweeps of it), `etad report` (costs and scores)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from etad_cli import views
from etad_cli.console import console, print_notes, stage_progress, user_errors
from etad_cli.options import ConfigOpt, SetOpt, flag, is_main_process, load, option
from stages.core.errors import UserError

TRAIN_INTERRUPTED = "interrupted; checkpoints of finished epochs are kept: rerun with --resume to continue"


def train(
    config: ConfigOpt,
    set_: SetOpt = None,
    e2e: flag("--e2e", "Train encoder + detector end to end from the snippet cache.") = False,
    encoder: flag("--encoder", "Pretrain the encoder alone (TSP) on the snippet cache's clips.") = False,
    resume: flag("--resume", "Continue the run from its last.pt.") = False,
    restart: flag("--restart", "Move an earlier run aside (never deleted) and start again.") = False,
    grad_mode: option(str | None, "--e2e only: e2e.grad_mode (sampled, checkpoint or full).") = None,
    init_from: option(
        Path | None, "--e2e only: e2e.init_from, a checkpoint to start the detector from."
    ) = None,
) -> None:
    """Pretrain the ETAD detector on cached features, or (--e2e) train encoder and detector end to end,
    or (--encoder) pretrain the encoder alone with TSP's objective.

    Writes <work_dir>/pretrain/ (e2e/ with --e2e, encoder/ with --encoder): checkpoints/epoch_NNN.pt,
    last.pt, best.pt and metrics.jsonl; --encoder also writes the encoder in TSP's layout
    (encoder_train.output) for model.encoder.checkpoint. A folder that holds an earlier run needs
    --resume or --restart. Several GPUs or nodes: launch with torchrun.

    Examples:
      etad train --config examples/demo.yaml
      etad train --config examples/demo.yaml --resume
      etad train --config examples/demo.yaml --encoder
      etad train --config examples/demo.yaml --e2e --init-from work/demo/pretrain/checkpoints/last.pt
      torchrun --nproc-per-node 4 -m etad_cli train --config examples/anet_tsp_feature.yaml
    """
    from stages import api

    extra = [f"e2e.grad_mode={grad_mode}"] if grad_mode else []
    extra += [f"e2e.init_from={init_from.resolve()}"] if init_from else []
    with user_errors(TRAIN_INTERRUPTED):
        if extra and not e2e:
            raise UserError("--grad-mode and --init-from only apply with --e2e")
        if e2e and encoder:
            raise UserError("--e2e and --encoder are different runs: give one of them")
        kind, main_rank = "e2e" if e2e else "encoder" if encoder else "train", is_main_process()
        settings = load(config, set_, extra)
        with stage_progress(api.TRAIN_STAGES[kind], visible=main_rank) as progress:
            trained = api.train(
                settings, kind, resume=resume, restart=restart, progress=progress, log=main_rank
            )
    if main_rank:
        views.training_summary(trained.summary, f"{api.TRAIN_STAGES[kind]} -> {trained.summary.out_dir}")


def study(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Base settings file.")] = None,
    vary: option(list[str] | None, "KEY=V1,V2,... a setting and its values (repeatable; grid).") = None,
    also: option(list[str] | None, "KEY=V: one more point (repeatable).") = None,
    zip_: flag("--zip", "Pair the --vary values instead of a grid.") = False,
    seeds: option(int, "Seeds per point (seed, seed+1, ...).", min=1) = 1,
    stages: option(
        str, "What each point trains: train, e2e, or train,e2e (e2e from its own detector)."
    ) = "e2e",
    jobs: option(int, "Points run at once (one per GPU).", min=1) = 1,
    out: option(Path | None, "Study folder (default: <work_dir>/study).") = None,
    show: option(Path | None, "Print the table of this study folder and exit.") = None,
    truth_labels: option(
        bool, "Also score each point with the annotation file's video labels (localisation)."
    ) = False,
    set_: SetOpt = None,
) -> None:
    """Sweep settings: train, infer and evaluate every point, then tabulate and plot mAP, memory and time.

    Resumable: a rerun skips finished points and finishes interrupted ones.

    Examples:
      etad study -c examples/study_snippets.yaml --vary e2e.snippet_ratio=0.1,0.3
      etad study -c examples/study_snippets.yaml --vary e2e.snippet_ratio=0.3 --also e2e.grad_mode=full
      etad study -c examples/demo.yaml --stages train --vary model.proposal_ratio=0.06,0.2 --seeds 3
      etad study --show work/demo/study
    """
    from etad_cli.study_points import ChildPoints
    from stages import study as stage
    from stages.studies.report import table

    with user_errors():
        if show is None:
            if config is None:
                raise UserError("give --config (or --show DIR)")
            points = dict(vary=vary or [], also=also or [], zip_values=zip_, seeds=seeds, stage=stages)
            where = dict(jobs=jobs, out=out, truth_labels=truth_labels, check=lambda sets: load(config, sets))
            plan = stage.prepare(load(config, set_), config=config, overrides=set_ or [], **points, **where)
            with (
                stage_progress(f"study {plan.out_dir.name}") as progress,
                ChildPoints(spread_over_gpus=jobs > 1) as runner,
            ):
                stage.run(plan, runner=runner, progress=progress)
            show = plan.out_dir
        console.print(table(show), soft_wrap=True)


def report(config: ConfigOpt, set_: SetOpt = None) -> None:
    """Summarise a work folder: each stage's time and peak memory, and every evaluated model's mAP.

    Reads <work_dir>/logs/stages.jsonl (the last run of each stage) and compares the frozen-feature
    and end-to-end models that `etad infer --eval` scored; plots every run's loss curves and the
    models' scores to <work_dir>/report/curves.png. `make demo` ends with it.

    Example: etad report --config examples/demo.yaml
    """
    from stages.core.runlog import read_runs
    from stages.training.curves import plot_curves
    from stages.training.run_folder import set_aside_runs

    with user_errors():
        s = load(config, set_)
        scored = views.run_report(s.work_dir, read_runs(s.work_dir))
        aside = [p.name for p in set_aside_runs(s.work_dir)] if Path(s.work_dir).is_dir() else []
        print_notes([f"runs moved aside by --restart (kept): {', '.join(aside)}"] if aside else [])
        png = plot_curves(s.work_dir, scored, s.work_dir / "report" / "curves.png")
        views.curves_written(s.work_dir, png)
