"""The `etad` command line: one Typer command per stage. Each parses options, loads the settings,
calls `stages.<stage>.run(...)` and prints its summary. Nothing here knows how a detector works."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from etad_cli import __version__
from etad_cli.console import UserError, console, err_console, progress, user_errors
from etad_cli.runlog import StageRun, read_runs
from etad_cli.settings import Settings, load_settings, settings_as_yaml, settings_reference

app = typer.Typer(
    name="etad",
    help="Train and run ETAD temporal action detectors end to end, from raw video frames.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
config_app = typer.Typer(help="Show or check a settings file.", no_args_is_help=True)
app.add_typer(config_app, name="config")

ConfigArg = Annotated[Path, typer.Argument(help="YAML settings file.", show_default=False)]
ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="YAML settings file.", show_default=False)]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set", help="Override a setting, e.g. --set train.lr=1e-4 (repeatable).", show_default=False
    ),
]


def _version(value: bool) -> None:
    if value:
        console.print(f"etad {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Train and run ETAD temporal action detectors end to end, from raw video frames."""


def load(config: Path, overrides: list[str] | None) -> Settings:
    return load_settings(config, overrides or [])


def print_notes(notes: list[str]) -> None:
    """What a stage left out or assumed, one yellow line each on stderr."""
    for note in notes:
        err_console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)


def report_failures(failures: list[dict], failures_file: Path) -> None:
    """List failed videos; exit code 1 says that the stage finished but some videos failed."""
    if not failures:
        return
    for failure in failures:
        err_console.print(f"[red]failed[/] {failure['video_id']}: {failure['reason']}", highlight=False)
    err_console.print(f"{len(failures)} video(s) failed; listed in {failures_file}")
    raise typer.Exit(1)


@config_app.command("show")
def config_show(config: ConfigArg, set_: SetOpt = None) -> None:
    """Print the resolved settings (defaults filled in, paths absolute).

    Example: etad config show examples/demo.yaml --set train.lr=1e-4
    """
    with user_errors():
        settings = load(config, set_)
        console.print(settings_as_yaml(settings), markup=False, highlight=False, end="")


@config_app.command("reference")
def config_reference() -> None:
    """Print the settings reference (Markdown) generated from the settings models: docs/settings.md.

    Example: etad config reference > docs/settings.md
    """
    console.print(settings_reference(), markup=False, highlight=False, end="", soft_wrap=True)


@config_app.command("validate")
def config_validate(config: ConfigArg, set_: SetOpt = None) -> None:
    """Check a settings file: one line per problem and exit code 2 if it is not valid.

    Example: etad config validate examples/anet_tsp_e2e.yaml
    """
    with user_errors():
        load(config, set_)
        console.print(f"{config}: valid")


@app.command()
def synth(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write videos/ and the annotation files into.")],
    videos: Annotated[int, typer.Option(help="Number of videos (30% go to validation).", min=1)] = 24,
    classes: Annotated[int, typer.Option(help="Number of action classes (1-6).", min=1, max=6)] = 4,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed writes the same dataset.")] = 0,
    fps: Annotated[float, typer.Option(help="Frames per second.", min=1.0)] = 15.0,
    width: Annotated[int, typer.Option(help="Frame width (even).", min=32)] = 128,
    height: Annotated[int, typer.Option(help="Frame height (even).", min=32)] = 96,
) -> None:
    """Write the built-in synthetic action dataset: mp4 videos plus ActivityNet and THUMOS style annotations.

    Example: etad synth work/demo/data --videos 24 --classes 4 --seed 0
    """
    from stages import synth as synth_stage

    with user_errors():
        try:
            with progress() as bar:
                task = bar.add_task("synth videos", total=videos)
                summary = synth_stage.run(
                    out_dir, videos, classes, seed, fps, width, height, on_video=lambda _id: bar.advance(task)
                )
        except ValueError as exc:
            raise UserError(str(exc)) from None
        except OSError as exc:
            raise UserError(f"{out_dir}: cannot write: {exc.strerror or exc}") from None
    table = Table(title=f"synthetic dataset in {summary.out_dir}", show_header=False)
    table.add_row(
        "videos", f"{summary.videos} ({summary.train_videos} training, {summary.val_videos} validation)"
    )
    table.add_row("written / already there", f"{summary.written} / {summary.skipped}")
    table.add_row("action instances", str(summary.instances))
    table.add_row("annotations", f"{summary.out_dir / 'anet.json'}, {summary.out_dir / 'thumos.json'}")
    console.print(table)


WorkersOpt = Annotated[
    int | None, typer.Option(help="Parallel worker processes (default: the settings').", min=1)
]


@app.command()
def extract(config: ConfigOpt, set_: SetOpt = None, workers: WorkersOpt = None) -> None:
    """Decode every video of the annotation file (decord) into frames at data.fps and the data frame size.

    Writes <work_dir>/frames/<id>.npy (+ <id>.json when complete). Resumable: finished videos are
    skipped. Exit code 1 if some videos failed (listed in frames/failures.json).

    Example: etad extract --config examples/demo.yaml --workers 2
    """
    from rich.progress import TextColumn

    from stages import extract as extract_stage

    with user_errors():
        s = load(config, set_)
        run = StageRun.start(s, "extract")
        if s.data.annotations is None or s.data.video_dir is None:
            raise UserError(f"{config}: data.annotations and data.video_dir must be set to extract")
        with progress(TextColumn("{task.fields[rate]}")) as bar:
            task = bar.add_task("extract videos", total=None, rate="")
            frames = 0
            began = time.perf_counter()

            def advance(_video_id: str, n: int, _reason: str | None) -> None:
                nonlocal frames
                frames += n
                rate = f"{frames / max(time.perf_counter() - began, 1e-9):,.0f} frames/s"
                bar.update(task, advance=1, rate=rate)

            summary = extract_stage.run(
                s.data.annotations,
                s.data.video_dir,
                s.data.video_name,
                s.work_dir,
                s.data.fps,
                s.data.frame_height,
                s.data.frame_width,
                backend=s.data.decoder,
                workers=workers or 1,
                on_start=lambda n: bar.update(task, total=n),
                on_video=advance,
            )
    table = Table(title=f"extract -> {summary.out_dir}", show_header=False)
    table.add_row(
        "videos extracted / already done / failed",
        f"{summary.done} / {summary.skipped} / {len(summary.failures)}",
    )
    table.add_row("frames written", f"{summary.frames:,}")
    table.add_row("speed", f"{summary.frames / max(summary.seconds, 1e-9):,.0f} frames/s")
    console.print(table)
    run.done(videos=summary.done, skipped=summary.skipped, failed=len(summary.failures))
    report_failures(summary.failures, summary.out_dir / "failures.json")


@app.command()
def cache(
    config: ConfigOpt,
    set_: SetOpt = None,
    what: Annotated[
        str, typer.Option(help="snippets (for end-to-end training) or features (frozen encoder).")
    ] = "snippets",
    from_npy: Annotated[
        Path | None, typer.Option(help="Import released per-video features (v_<id>.npy or <id>.npy, [T, D]).")
    ] = None,
    workers: WorkersOpt = None,
) -> None:
    """Cut extracted frames into snippets, or encode them, into per-video HDF5 files under <work_dir>/cache/.

    Resumable and kill-safe: each video file is written under a temporary name and renamed; a rerun
    skips videos already cached with the same settings. Exit code 1 if some videos failed.

    Examples:
      etad cache --config examples/demo.yaml --what snippets
      etad cache --config examples/demo.yaml --what features
      etad cache --config examples/anet_tsp_feature.yaml --from-npy data/tsp_features
    """
    from stages import cache as cache_stage

    with user_errors():
        if what not in ("snippets", "features"):
            raise UserError(f"--what {what}: expected 'snippets' or 'features'")
        s = load(config, set_)
        kind = "features" if from_npy is not None else what
        run = StageRun.start(s, f"cache {kind}")
        with progress() as bar:
            task = bar.add_task(f"cache {kind}", total=None)
            summary = cache_stage.run(
                s,
                what,
                from_npy,
                workers or s.cache.workers,
                on_start=lambda n: bar.update(task, total=n),
                on_video=lambda _vid, _reason: bar.advance(task),
            )
    table = Table(title=f"cache {summary.kind} -> {summary.out_dir}", show_header=False)
    table.add_row(
        "videos cached / already done / failed",
        f"{summary.done} / {summary.skipped} / {len(summary.failures)}",
    )
    table.add_row("seconds", f"{summary.seconds:.1f}")
    console.print(table)
    run.done(videos=summary.done, skipped=summary.skipped, failed=len(summary.failures))
    report_failures(summary.failures, summary.out_dir / "failures.json")


def is_main_process() -> bool:
    """False in the non-zero ranks of a torchrun launch: they stay quiet and write nothing shared."""
    return os.environ.get("RANK", "0") == "0"


def print_training(summary, title: str) -> None:
    table = Table(title=title)
    for column in ("epoch", "train loss", "val loss", "lr", "seconds"):
        table.add_column(column, justify="right")
    for e in summary.epochs:
        val = "-" if e["val_loss"] is None else f"{e['val_loss']:.4f}"
        table.add_row(str(e["epoch"]), f"{e['train_loss']:.4f}", val, f"{e['lr']:.2e}", f"{e['seconds']:.1f}")
    console.print(table)
    details = f"detector parameters: {summary.parameters:,}"
    if summary.peak_memory_mb:
        details += f"; peak GPU memory {summary.peak_memory_mb:,.0f} MiB"
    console.print(f"{details}\ncheckpoints: {summary.out_dir / 'checkpoints'} (last.pt, best.pt)")
    print_notes(summary.notes)


@app.command()
def train(
    config: ConfigOpt,
    set_: SetOpt = None,
    e2e: Annotated[
        bool, typer.Option("--e2e", help="Fine-tune encoder + detector end to end from the snippet cache.")
    ] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from <run>/checkpoints/last.pt.")
    ] = False,
    grad_mode: Annotated[
        str | None, typer.Option(help="--e2e only: sampled (default), checkpoint or full backward.")
    ] = None,
    init_from: Annotated[
        Path | None, typer.Option(help="--e2e only: start the detector from this pretraining checkpoint.")
    ] = None,
) -> None:
    """Pretrain the ETAD detector on cached features, or (--e2e) fine-tune encoder and detector end to end.

    Writes <work_dir>/pretrain/ (or finetune/ with --e2e): checkpoints/epoch_NNN.pt, last.pt, best.pt and
    metrics.jsonl. Several GPUs or nodes: launch with torchrun.

    Examples:
      etad train --config examples/demo.yaml
      etad train --config examples/demo.yaml --resume
      etad train --config examples/demo.yaml --e2e --init-from work/demo/pretrain/checkpoints/last.pt
      torchrun --nproc-per-node 4 -m etad_cli train --config examples/anet_tsp_feature.yaml
    """
    from rich.progress import TextColumn

    with user_errors():
        s = load(config, set_)
        main_rank = is_main_process()
        run = StageRun.start(s, "train --e2e" if e2e else "train") if main_rank else None
        if e2e:
            from stages import finetune as stage

            if grad_mode is not None:
                if grad_mode not in ("sampled", "checkpoint", "full"):
                    raise UserError(f"--grad-mode {grad_mode}: expected sampled, checkpoint or full")
                s.e2e.grad_mode = grad_mode
            if init_from is not None:
                s.e2e.init_from = init_from.resolve()
        else:
            from stages import pretrain as stage

            if grad_mode is not None or init_from is not None:
                raise UserError("--grad-mode and --init-from only apply with --e2e")
        with progress(TextColumn("{task.fields[info]}")) as bar:
            task = bar.add_task("train --e2e" if e2e else "train", total=None, info="", visible=main_rank)

            def started(steps: int, videos: int) -> None:
                bar.update(task, total=steps, info=f"{videos} training items")

            def stepped(r: dict) -> None:
                info = f"epoch {r['epoch']} loss {r['total']:.3f} {r['videos_per_s']:.1f} items/s"
                bar.update(task, advance=1, info=info)

            summary = stage.run(s, resume=resume, on_start=started, on_step=stepped)
    if run is not None:
        print_training(summary, f"{run.stage} -> {summary.out_dir}")
        run.done(epochs=len(summary.epochs))


def print_eval(report, per_class: bool = False) -> None:
    """The mAP (or recall) table of an EvalReport, its notes, and optionally per-class AP."""
    detection = report.task == "detection"
    table = Table(title=f"{report.task}: {report.counts.get('ground_truth_videos', 0)} videos")
    table.add_column("tIoU", justify="right")
    table.add_column("mAP (%)" if detection else "recall@100 (%)", justify="right")
    for tiou, value in zip(report.tious, report.values):
        table.add_row(f"{tiou:.2f}", f"{100 * value:.2f}")
    if detection:
        table.add_row("[bold]average", f"[bold]{100 * report.average:.2f}")
    else:
        for an, value in report.ar_at.items():
            table.add_row(f"AR@{an}", f"{100 * value:.2f}")
        table.add_row("[bold]AUC", f"[bold]{report.average:.2f}")
    console.print(table)
    if per_class and report.per_class:
        classes = Table(title="AP per class (%)")
        classes.add_column("class")
        for tiou in report.tious:
            classes.add_column(f"{tiou:.2f}", justify="right")
        classes.add_column("avg", justify="right")
        for label, values in report.per_class.items():
            classes.add_row(
                label, *(f"{100 * v:.1f}" for v in values), f"{100 * sum(values) / len(values):.1f}"
            )
        console.print(classes)
    print_notes(report.notes)


@app.command("eval")
def eval_(
    predictions: Annotated[
        Path | None,
        typer.Option("--predictions", "-p", help="Result JSON (default: the settings' infer.output)."),
    ] = None,
    ground_truth: Annotated[
        Path | None,
        typer.Option(
            "--ground-truth", "-g", help="Ground-truth JSON (default: the settings' data.annotations)."
        ),
    ] = None,
    dataset: Annotated[
        str, typer.Option(help="anet (tIoU 0.5:0.05:0.95) or thumos (0.3:0.1:0.7); default: the settings'.")
    ] = "",
    subset: Annotated[
        str | None, typer.Option(help="Ground-truth subset (default: validation for anet, test for thumos).")
    ] = None,
    blocked: Annotated[
        Path | None, typer.Option(help="JSON list of video ids left out of both files.")
    ] = None,
    task: Annotated[str, typer.Option(help="detection (mAP) or proposals (AR@AN, AUC).")] = "detection",
    tiou: Annotated[
        list[float] | None, typer.Option(help="tIoU threshold (repeatable); replaces the dataset's list.")
    ] = None,
    protocol: Annotated[
        str, typer.Option(help="official (ActivityNet) or actionformer (also drops duplicate ground truth).")
    ] = "",
    per_class: Annotated[bool, typer.Option("--per-class", help="Also show AP per class.")] = False,
    plot: Annotated[
        Path | None, typer.Option(help="Draw mAP against tIoU (and per-class AP) to this PNG.")
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write every number to this JSON file.")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Settings file that supplies the defaults above.")
    ] = None,
    set_: SetOpt = None,
) -> None:
    """Score detections (mAP per tIoU) or proposals (average recall) as the official ActivityNet code does.

    Examples:
      etad eval --dataset anet -p results.json -g activity_net.v1-3.min.json --blocked blocked.json
      etad eval --dataset thumos -p results.json -g thumos14.json --per-class --plot map.png
      etad eval --config examples/demo.yaml
    """
    from stages import evaluate as evaluate_stage

    with user_errors():
        s = load(config, set_) if config is not None else None
        if s is not None:
            from stages.infer import output_path

            predictions = predictions or output_path(s)
            ground_truth = ground_truth or s.data.annotations
            dataset = dataset or s.data.dataset
            subset = subset or s.data.eval_subset
            blocked = blocked or s.data.blocked
            tiou = tiou or s.eval.tiou_thresholds
            protocol = protocol or s.eval.protocol
        dataset, protocol = dataset or "anet", protocol or "official"
        if predictions is None or ground_truth is None:
            raise UserError(
                "give --predictions and --ground-truth, or --config with infer.output and data.annotations"
            )
        for name, value, allowed in (
            ("--dataset", dataset, ("anet", "thumos")),
            ("--task", task, ("detection", "proposals")),
            ("--protocol", protocol, ("official", "actionformer")),
        ):
            if value not in allowed:
                raise UserError(f"{name} {value}: expected one of {', '.join(allowed)}")
        report = evaluate_stage.evaluate(
            predictions, ground_truth, dataset, subset, blocked, task, tiou, protocol
        )
        print_eval(report, per_class)
        try:
            if json_out is not None:
                evaluate_stage.save_json(report, json_out)
                console.print(f"[dim]metrics: {json_out}[/]")
            if plot is not None:
                evaluate_stage.plot(report, plot, per_class)
                console.print(f"[dim]plot: {plot}[/]")
        except OSError as exc:
            raise UserError(
                f"{exc.filename or json_out or plot}: cannot write: {exc.strerror or exc}"
            ) from None


@app.command()
def infer(
    config: ConfigOpt,
    checkpoint: Annotated[
        Path | None,
        typer.Option(help="Checkpoint (default: <work_dir>/finetune or pretrain/checkpoints/last.pt)."),
    ] = None,
    set_: SetOpt = None,
    evaluate: Annotated[
        bool, typer.Option("--eval", help="Evaluate the detections in the same run.")
    ] = False,
    plot: Annotated[int, typer.Option(help="Draw a timeline PNG for the first N videos.", min=0)] = 0,
    video: Annotated[
        Path | None, typer.Option(help="Detect actions in one video file that is in no annotation file.")
    ] = None,
) -> None:
    """Detect actions in the evaluation subset (or one --video) and write ActivityNet-format JSON.

    Examples:
      etad infer --config examples/demo.yaml --eval
      etad infer --config examples/demo.yaml --checkpoint work/demo/pretrain/checkpoints/best.pt --plot 4
      etad infer --config examples/demo.yaml --video my_clip.mp4
    """
    from stages import infer as infer_stage

    with user_errors():
        s = load(config, set_)
        run = StageRun.start(s, "infer --video" if video is not None else "infer")
        if checkpoint is None:
            for kind in ("finetune", "pretrain"):
                candidate = s.work_dir / kind / "checkpoints" / "last.pt"
                if candidate.is_file():
                    checkpoint = candidate
                    break
            else:
                raise UserError(f"{s.work_dir}: no checkpoint yet; run `etad train` or give --checkpoint")
        console.print(f"[dim]checkpoint: {checkpoint}[/]", soft_wrap=True)
        if video is not None:
            with progress() as bar:
                task = bar.add_task(f"encode {video.name}", total=None)
                detections, out, notes = infer_stage.run_video(
                    s,
                    checkpoint,
                    video,
                    on_snippets=lambda done, total: bar.update(task, completed=done, total=total),
                )
            print_notes(notes)
            table = Table(title=f"{video.name}: top detections")
            for column in ("label", "score", "start (s)", "end (s)"):
                table.add_column(column, justify="right")
            for d in detections[:10]:
                table.add_row(
                    d["label"], f"{d['score']:.3f}", f"{d['segment'][0]:.1f}", f"{d['segment'][1]:.1f}"
                )
            console.print(table)
            console.print(f"{len(detections)} detections -> {out}", soft_wrap=True)
            run.done(checkpoint=str(checkpoint), output=str(out))
            return
        with progress() as bar:
            task = bar.add_task("infer", total=None)
            summary = infer_stage.run(
                s,
                checkpoint,
                plot,
                on_start=lambda n: bar.update(task, total=n),
                on_batch=lambda n: bar.advance(task, n),
            )
        console.print(
            f"{summary.videos} videos, {summary.detections:,} detections, {summary.seconds:.1f} s"
            f" -> {summary.output}",
            soft_wrap=True,
        )
        for path in summary.plots:
            console.print(f"[dim]plot: {path}[/]", soft_wrap=True)
        print_notes(summary.notes)
        scores = {}
        if evaluate:
            from stages import evaluate as evaluate_stage

            report = evaluate_stage.evaluate(
                summary.output,
                s.data.annotations,
                s.data.dataset,
                s.data.eval_subset,
                s.data.blocked,
                "detection" if s.infer.classifier != "none" else "proposals",
                s.eval.tiou_thresholds,
                s.eval.protocol,
            )
            print_eval(report)
            metrics = summary.output.with_suffix(".metrics.json")
            evaluate_stage.save_json(report, metrics)
            console.print(f"[dim]metrics: {metrics}[/]", soft_wrap=True)
            scores = {"task": report.task, "average": report.average, "first_tiou": report.values[0]}
        run.done(checkpoint=str(checkpoint), kind=summary.kind, output=str(summary.output), **scores)


MODEL_NAMES = {"pretrain": "frozen features", "finetune": "end to end"}


@app.command()
def report(config: ConfigOpt, set_: SetOpt = None) -> None:
    """Summarise a work folder: each stage's time and peak memory, and every evaluated model's mAP.

    Reads <work_dir>/logs/stages.jsonl (the last run of each stage) and compares the frozen-feature
    and end-to-end models that `etad infer --eval` scored. `make demo` ends with it.

    Example: etad report --config examples/demo.yaml
    """
    with user_errors():
        s = load(config, set_)
        runs = read_runs(s.work_dir)
    latest: dict[tuple, dict] = {}
    for r in runs:  # the last run of each stage (and of each infer output), in the order they finished
        key = (r["stage"], r.get("output"))
        latest.pop(key, None)
        latest[key] = r
    table = Table(title=f"stages: {s.work_dir}")
    for column in ("stage", "seconds", "peak RSS (MiB)", "output"):
        table.add_column(column, justify="left" if column in ("stage", "output") else "right")
    for r in latest.values():
        output = Path(r["output"]).name if r.get("output") else ""
        table.add_row(r["stage"], f"{r['seconds']:.1f}", f"{r['peak_rss_mib']:,.0f}", output)
    table.add_row("total", f"{sum(r['seconds'] for r in latest.values()):.1f}", "", "", style="bold")
    console.print(table)
    scored = [r for r in latest.values() if "average" in r]
    if not scored:
        return
    models = Table(
        title="evaluated models",
        caption="detection: average mAP over the tIoU thresholds and "
        "mAP at the first; proposals: AUC of AR@AN and AR@100 at the first",
        caption_justify="left",
    )
    for column in ("model", "output", "average", "first tIoU"):
        models.add_column(column, justify="left" if column in ("model", "output") else "right")
    for r in scored:
        name = MODEL_NAMES.get(r.get("kind", ""), r.get("kind", "?"))
        if r["task"] == "detection":
            values = f"{r['average']:.2%}", f"{r['first_tiou']:.2%}"
        else:
            values = f"AUC {r['average']:.2f}", f"{r['first_tiou']:.2%}"
        models.add_row(name, Path(r["output"]).name, *values)
    console.print(models)


def main() -> None:
    """Console-script entry point."""
    app()
