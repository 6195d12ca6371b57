"""The `etad` command line: one Typer command per stage. Each parses options, loads the settings
(`--set` overrides included), calls `stages.<stage>.run(settings, ..., progress=...)` and prints
its summary (etad_cli/views.py). Nothing here knows how a stage does its work."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from etad_cli import __version__, views
from etad_cli.console import console, print_notes, stage_progress, user_errors
from etad_cli.runlog import StageRun, read_runs
from stages.core.errors import UserError

if TYPE_CHECKING:  # the settings models load only when a command runs, so --help stays fast
    from stages.core.settings import Settings

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
checkpoint_app = typer.Typer(
    help="Inspect or convert checkpoints (etad's and released ones).", no_args_is_help=True
)
app.add_typer(checkpoint_app, name="checkpoint")
annotations_app = typer.Typer(help="Convert other benchmarks' annotation files; check what a file holds.",
                              no_args_is_help=True)  # fmt: skip
app.add_typer(annotations_app, name="annotations")

ConfigArg = Annotated[Path, typer.Argument(help="YAML settings file.", show_default=False)]
ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="YAML settings file.", show_default=False)]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set", help="Override a setting, e.g. --set train.lr=1e-4 (repeatable).", show_default=False
    ),
]
WorkersOpt = Annotated[int | None, typer.Option(help="Parallel worker processes (default: 1).", min=1)]
CacheWorkersOpt = Annotated[
    int | None, typer.Option(help="Parallel worker processes (default: the setting cache.workers).", min=1)
]
SubsetOpt = Annotated[
    str | None,
    typer.Option(
        help="Subsets to process, comma-separated, or all (default: the recipe's training and "
        "evaluation subsets)."
    ),  # fmt: skip
]
ShardOpt = Annotated[
    str | None,
    typer.Option(help="K/N: this machine's share of the videos (default: the Slurm array's task, if any)."),
]
TRAIN_INTERRUPTED = "interrupted; checkpoints of finished epochs are kept: rerun with --resume to continue"


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


def load(
    config: Path | None,
    overrides: list[str] | None,
    extra: list[str] | None = None,
    check_parts: bool = True,
) -> Settings:
    """The settings of a command: the file, then --set overrides, then the command's own options.
    Part names are checked against their registries; commands that never build a model pass
    `check_parts=False`, which leaves out those that live in torch modules (no torch import)."""
    from etad_cli.runner import load

    return load(config, [*(overrides or []), *(extra or [])], check_parts)


def is_main_process() -> bool:
    """False in the non-zero ranks of a torchrun launch: they stay quiet and write nothing shared."""
    return os.environ.get("RANK", "0") == "0"


@config_app.command("show")
def config_show(config: ConfigArg, set_: SetOpt = None) -> None:
    """Print the resolved settings (defaults filled in, paths absolute). Part names (encoder,
    samplers, variant, grad mode) are checked by `etad config validate`, which loads torch.

    Example: etad config show examples/demo.yaml --set train.lr=1e-4
    """
    from stages.core.settings_file import settings_as_yaml

    with user_errors():
        resolved = load(config, set_, check_parts=False)
        console.print(settings_as_yaml(resolved), end="")


@config_app.command("reference")
def config_reference() -> None:
    """Print the settings reference (Markdown) generated from the settings models: docs/settings.md.

    Example: etad config reference > docs/settings.md
    """
    from etad_cli.parts import registries
    from stages.core.settings_reference import settings_reference

    console.print(settings_reference(registries()), end="", soft_wrap=True)


@config_app.command("validate")
def config_validate(config: ConfigArg, set_: SetOpt = None) -> None:
    """Check a settings file: one line per problem and exit code 2 if it is not valid.

    Example: etad config validate examples/anet_tsp_e2e.yaml
    """
    with user_errors():
        load(config, set_)
        console.print(f"{config}: valid")


@annotations_app.command("convert")
def annotations_convert(
    sources: Annotated[list[Path], typer.Argument(help="The dataset's own annotation file(s), e.g. its "
                                                      "training and validation files: one output.")],
    from_: Annotated[str, typer.Option("--from", help=(
        "The format: epic100, multithumos, charades, ego4d-mq, thumos-txt (a folder), or csv (columns "
        "video, start, end, label and optionally subset; seconds; video: an id or a file name)."))],
    out: Annotated[Path, typer.Option(help="The ActivityNet-layout JSON to write (a new file).")],
    video_info: Annotated[
        Path | None, typer.Option(help="epic100: EPIC_100_video_info.csv (durations).")
    ] = None,
    verbs: Annotated[Path | None, typer.Option(help="epic100: EPIC_100_verb_classes.csv (names).")] = None,
    nouns: Annotated[Path | None, typer.Option(help="epic100: EPIC_100_noun_classes.csv (names).")] = None,
    label: Annotated[str, typer.Option(help="epic100: verb, noun or action (verb noun).")] = "action",
    subset: Annotated[
        str | None, typer.Option(help="The subset name the rows get (default: the file's).")
    ] = None,
    classes: Annotated[
        Path | None, typer.Option(help="multithumos / charades: the class list (id name).")
    ] = None,
    durations: Annotated[Path | None, typer.Option(help="csv, thumos-txt: a video,duration CSV.")] = None,
    videos: Annotated[
        Path | None, typer.Option(help="The folder of the videos (<id>.mp4, ...): durations from the files.")
    ] = None,
) -> None:
    """Write another benchmark's annotations in ActivityNet's layout (every etad command reads it).

    Examples:
      etad annotations convert EPIC_100_train.csv EPIC_100_validation.csv --from epic100 \\
        --video-info EPIC_100_video_info.csv --verbs EPIC_100_verb_classes.csv \\
        --nouns EPIC_100_noun_classes.csv --label verb --out epic_verb.json
      etad annotations convert multithumos.json --from multithumos --out multithumos_anet.json
      etad annotations convert my_labels.csv --from csv --durations durations.csv --out mine.json
      etad annotations convert my_labels.csv --from csv --videos my_videos/ --out mine.json
    """
    from stages import annotations as stage

    options = {"video_info": video_info, "verbs": verbs, "nouns": nouns, "label": label, "classes": classes,
               "durations": durations, **({"subset": subset} if subset else {})}  # fmt: skip
    with user_errors():
        done = stage.convert(sources, fmt=from_, out=out, videos=videos, **options)
    instances = sum(len(e["annotations"]) for e in done.database.values())
    console.print(f"{len(done.database)} videos, {instances} instances ({done.clipped} clipped to their "
                  f"video's duration) -> {out}", soft_wrap=True)  # fmt: skip
    print_notes(done.notes)


@annotations_app.command("check")
def annotations_check(
    path: Annotated[Path, typer.Argument(help="An annotation file (ActivityNet layout).")],
) -> None:
    """What an annotation file holds, per subset, in one table."""
    from stages import annotations as stage

    with user_errors():
        report = stage.check(path)
        views.annotations_table(report)
    print_notes(report["notes"])


@checkpoint_app.command("info")
def checkpoint_info(path: Annotated[Path, typer.Argument(help="Checkpoint file.")]) -> None:
    """Print what a checkpoint holds: its layout, kind, parts and model sizes.

    Example: etad checkpoint info e2e_anet_snippet0.3_bs4_92e98.pth.tar
    """
    from stages.core import checkpoints

    with user_errors():
        views.checkpoint_summary(path, checkpoints.describe(path))


@checkpoint_app.command("convert")
def checkpoint_convert(
    source: Annotated[Path, typer.Argument(help="A checkpoint in any known layout.")],
    target: Annotated[Path, typer.Argument(help="Where to write the etad checkpoint (a new file).")],
) -> None:
    """Convert a released checkpoint (the original ETAD release) to an etad checkpoint.

    Example: etad checkpoint convert e2e_anet_snippet0.3_bs4_92e98.pth.tar etad_e2e_anet.pt
    """
    from stages.core import checkpoints

    with user_errors():
        views.checkpoint_summary(target, checkpoints.convert(source, target))


@app.command()
def init(
    videos: Annotated[Path, typer.Argument(help="The folder of your videos (<id>.mp4, .mov, ...).")],
    labels: Annotated[Path, typer.Argument(help="Your annotations (CSV: video,start,end,label[,subset]).")],
    from_: Annotated[str, typer.Option("--from", help="Their format (as convert's --from).")] = "csv",
    out: Annotated[Path, typer.Option(help="The folder for settings.yaml, annotations.json, work/.")] = Path(
        "etad_run"
    ),
) -> None:
    """Start on your own videos: their annotations converted and a settings file, with the next commands.

    The durations are read from the videos, the sizes chosen from what they hold.

    Example: etad init my_videos/ my_labels.csv --out my_run
    """
    from stages import annotations as convert_stage
    from stages import init as stage

    with user_errors():
        annotations = stage.new_run_folder(out) / "annotations.json"
        converted = convert_stage.convert([labels], fmt=from_, out=annotations, videos=videos)
        summary = stage.run(videos, annotations, out, probed=converted.probed)  # the videos read once
    print_notes(converted.notes + summary.notes)
    views.init_summary(summary)


@app.command()
def synth(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write videos/ and the annotation files into.")],
    videos: Annotated[
        int, typer.Option(help="Number of videos (30% go to validation).", min=1, max=100_000)
    ] = 24,
    classes: Annotated[int, typer.Option(help="Number of action classes (1-6).", min=1, max=6)] = 4,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed writes the same dataset.")] = 0,
    fps: Annotated[float, typer.Option(help="Frames per second.", min=1.0, max=120.0)] = 15.0,
    width: Annotated[int, typer.Option(help="Frame width (even).", min=32, max=3840)] = 128,
    height: Annotated[int, typer.Option(help="Frame height (even).", min=32, max=2160)] = 96,
    pretrain_videos: Annotated[
        int,
        typer.Option(help="Clean videos (actions alone) in a 'pretraining' subset, for train --encoder.",
                     min=0, max=100_000),
    ] = 0,
    movers: Annotated[
        bool, typer.Option("--movers", help="Add hollow shapes that move like actions (not annotated).")
    ] = False,
    multi_label: Annotated[
        bool,
        typer.Option("--multi-label", help="Instances of several classes per video, free to overlap."),
    ] = False,
) -> None:
    """Write the built-in synthetic action dataset: mp4 videos plus ActivityNet and THUMOS style annotations.

    Example: etad synth work/demo/data --videos 48 --pretrain-videos 24 --movers --classes 4 --seed 0
    """
    from stages import synth as stage

    with user_errors(), stage_progress("synth videos") as progress:
        summary = stage.run(out_dir, videos=videos, classes=classes, seed=seed, fps=fps, width=width,
                            height=height, pretrain_videos=pretrain_videos, movers=movers,
                            multi_label=multi_label, progress=progress)  # fmt: skip
    views.synth_summary(summary)


@app.command()
def extract(
    config: ConfigOpt, set_: SetOpt = None, workers: WorkersOpt = None, subset: SubsetOpt = None,
    shard: ShardOpt = None,
) -> None:  # fmt: skip
    """Decode the videos of the annotation file (decord) into frames at data.fps and the data frame size.

    Writes <work_dir>/frames/<id>.h5 (+ <id>.json when complete). Optional: `etad cache` decodes
    the videos itself when no frames are extracted. Resumable: finished videos are skipped. Exit
    code 1 if some videos failed (listed in frames/failures.json); absent videos stop it before any
    work unless data.missing is skip (then listed in frames/missing.json).

    Examples:
      etad extract --config examples/demo.yaml --workers 2
      etad extract --config examples/anet_tsp_e2e.yaml --subset all --shard 3/8
    """
    from stages import extract as stage
    from stages.data.video_selection import parse_shard, parse_subsets

    with user_errors():
        s = load(config, set_)
        subsets, part = parse_subsets(subset, s), parse_shard(shard)
        run = StageRun.start(s, "extract")
        with stage_progress("extract videos") as progress:
            summary = stage.run(s, workers=workers or 1, subsets=subsets, shard=part, progress=progress)
    views.per_video_summary(f"extract -> {summary.out_dir}", summary, frames=summary.frames)
    run.done(videos=summary.done, skipped=summary.skipped, failed=len(summary.failures))
    views.exit_on_failures(summary.failures, summary.out_dir / f"failures{part.suffix}.json")


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
    workers: CacheWorkersOpt = None,
    subset: SubsetOpt = None,
    shard: ShardOpt = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Project videos, frames, disk and time; write nothing.")
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="With --dry-run: print the projection as JSON.")
    ] = False,
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
    from stages import cache as stage
    from stages.data.video_selection import parse_shard, parse_subsets

    with user_errors():
        s = load(config, set_)
        subsets, part = parse_subsets(subset, s), parse_shard(shard)
        if dry_run:
            views.cache_projection(stage.project(s, what=what, subsets=subsets, shard=part), json_out)
            return
        run = StageRun.start(s, f"cache {'features' if from_npy is not None else what}")
        with stage_progress(run.stage) as progress:
            summary = stage.run(s, what=what, from_npy=from_npy, workers=workers, subsets=subsets, shard=part,
                                progress=progress)  # fmt: skip
    views.per_video_summary(f"cache {summary.kind} -> {summary.out_dir}", summary)
    run.done(videos=summary.done, skipped=summary.skipped, failed=len(summary.failures))
    views.exit_on_failures(summary.failures, summary.out_dir / f"failures{part.suffix}.json")


@app.command()
def train(
    config: ConfigOpt,
    set_: SetOpt = None,
    e2e: Annotated[
        bool, typer.Option("--e2e", help="Train encoder + detector end to end from the snippet cache.")
    ] = False,
    encoder: Annotated[
        bool,
        typer.Option("--encoder", help="Pretrain the encoder alone (TSP) on the snippet cache's clips."),
    ] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run from its last.pt.")] = False,
    restart: Annotated[
        bool, typer.Option("--restart", help="Move an earlier run aside (never deleted) and start again.")
    ] = False,
    grad_mode: Annotated[
        str | None, typer.Option(help="--e2e only: e2e.grad_mode (sampled, checkpoint or full).")
    ] = None,
    init_from: Annotated[
        Path | None, typer.Option(help="--e2e only: e2e.init_from, a checkpoint to start the detector from.")
    ] = None,
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
    from etad_cli import runner

    extra = [f"e2e.grad_mode={grad_mode}"] if grad_mode else []
    extra += [f"e2e.init_from={init_from.resolve()}"] if init_from else []
    with user_errors(TRAIN_INTERRUPTED):
        if extra and not e2e:
            raise UserError("--grad-mode and --init-from only apply with --e2e")
        if e2e and encoder:
            raise UserError("--e2e and --encoder are different runs: give one of them")
        kind, main_rank = "e2e" if e2e else "encoder" if encoder else "train", is_main_process()
        settings = load(config, set_, extra)
        with stage_progress(runner.TRAIN_STAGES[kind], visible=main_rank) as progress:
            trained = runner.train(settings, kind, resume=resume, restart=restart, progress=progress,
                                   log=main_rank)  # fmt: skip
    if main_rank:
        views.training_summary(trained.summary, f"{runner.TRAIN_STAGES[kind]} -> {trained.summary.out_dir}")


@app.command()
def infer(
    config: ConfigOpt,
    checkpoint: Annotated[
        Path | None,
        typer.Option(help="Checkpoint (default: <work_dir>/e2e or pretrain/checkpoints/last.pt)."),
    ] = None,
    set_: SetOpt = None,
    evaluate: Annotated[
        bool, typer.Option("--eval", help="Evaluate the detections in the same run.")
    ] = False,
    plot: Annotated[int, typer.Option(help="Draw a timeline PNG for the first N videos.", min=0)] = 0,
    video: Annotated[
        Path | None, typer.Option(help="Detect actions in one video file that is in no annotation file.")
    ] = None,
    subset: Annotated[
        str | None, typer.Option(help="The annotation subset to detect (default: data.eval_subset).")
    ] = None,
    shard: ShardOpt = None,
) -> None:
    """Detect actions in the evaluation subset (or one --video) and write ActivityNet-format JSON.

    With --shard K/N each shard writes its part beside infer.output; the last to finish merges them.

    Examples:
      etad infer --config examples/demo.yaml --eval
      etad infer --config examples/anet_tsp_e2e.yaml --shard 2/4 --eval
      etad infer --config examples/demo.yaml --checkpoint work/demo/pretrain/checkpoints/best.pt --plot 4
      etad infer --config examples/demo.yaml --video my_clip.mp4
    """
    from etad_cli import runner
    from stages.data.video_selection import WHOLE, parse_shard

    with user_errors():
        settings = load(config, set_, [f"data.eval_subset={subset}"] if subset else [])
        part = WHOLE if video is not None else parse_shard(shard)
        with stage_progress(f"encode {video.name}" if video is not None else "infer") as progress:
            done = runner.infer(settings, checkpoint=checkpoint, plot=plot, video=video, evaluate=evaluate,
                                shard=part, progress=progress)  # fmt: skip
        views.infer_summary(done.summary, video is not None)
        if done.report is not None:
            views.eval_report(done.report)


# the options of `etad eval` (each defaults to the settings' value when --config is given)
PredictionsOpt = Annotated[
    Path | None,
    typer.Option("--predictions", "-p", help="Result JSON (default: the settings' infer.output)."),
]
GroundTruthOpt = Annotated[
    Path | None,
    typer.Option("--ground-truth", "-g", help="Ground-truth JSON (default: the settings' data.annotations)."),
]
DatasetOpt = Annotated[
    str | None,
    typer.Option(help="anet, thumos, hacs, fineaction, epic100, ego4d_mq, multithumos or charades: the "
                 "benchmark's tIoUs, subset and detections per video; default: the settings'."),
]
GroundTruthSubsetOpt = Annotated[
    str | None, typer.Option(help="Ground-truth subset (default: validation for anet, test for thumos).")
]
BlockedOpt = Annotated[Path | None, typer.Option(help="JSON list of video ids left out of both files.")]
TaskOpt = Annotated[str | None, typer.Option(help="detection (mAP, the default) or proposals (AR@AN, AUC).")]
TiouOpt = Annotated[
    list[float] | None,
    typer.Option(help="tIoU threshold in (0, 1] (repeatable); replaces the dataset's list."),
]
ProtocolOpt = Annotated[
    str | None,
    typer.Option(help="official (ActivityNet) or actionformer (also drops duplicate ground truth)."),
]
PlotOpt = Annotated[Path | None, typer.Option(help="Draw mAP against tIoU (and per-class AP) to this PNG.")]
JsonOpt = Annotated[Path | None, typer.Option("--json", help="Write every number to this JSON file.")]
EvalConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="Settings file that supplies the defaults above.")
]


@app.command("eval")
def eval_(
    predictions: PredictionsOpt = None,
    ground_truth: GroundTruthOpt = None,
    dataset: DatasetOpt = None,
    subset: GroundTruthSubsetOpt = None,
    blocked: BlockedOpt = None,
    task: TaskOpt = None,
    tiou: TiouOpt = None,
    protocol: ProtocolOpt = None,
    per_class: Annotated[bool, typer.Option("--per-class", help="Also show AP per class.")] = False,
    plot: PlotOpt = None,
    json_out: JsonOpt = None,
    config: EvalConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Score detections (mAP per tIoU) or proposals (average recall) as the official ActivityNet code does.

    Examples:
      etad eval --dataset anet -p results.json -g activity_net.v1-3.min.json --blocked blocked.json
      etad eval --dataset thumos -p results.json -g thumos14.json --per-class --plot map.png
      etad eval --config examples/demo.yaml
    """
    from stages import evaluate as stage

    with user_errors():
        s = load(config, set_, check_parts=False) if config is not None else None
        request = stage.EvalRequest.from_settings(
            s, predictions=predictions, ground_truth=ground_truth, dataset=dataset, subset=subset,
            blocked=blocked, task=task, tious=tiou, protocol=protocol,
        )  # fmt: skip
        stage.check_outputs(request, json_out=json_out, plot=plot)
        report = stage.run(request)
        views.eval_report(report, per_class)
        if report.task == "detection" and request.dataset in ("anet", "thumos"):
            hint = (f"what the errors are: etad diagnose --dataset {request.dataset} "
                    f"-g {request.ground_truth} -p {request.predictions}"
                    + (f" --subset {request.subset}" if request.subset else ""))  # fmt: skip
            console.print(hint, style="dim", soft_wrap=True)
        if json_out is not None:
            stage.save_json(report, json_out)
            console.print(f"metrics: {json_out}", style="dim", soft_wrap=True)
        if plot is not None:
            stage.plot(report, plot, per_class)
            console.print(f"plot: {plot}", style="dim", soft_wrap=True)


@app.command()
def diagnose(
    predictions: PredictionsOpt = None,
    ground_truth: GroundTruthOpt = None,
    dataset: Annotated[
        str | None, typer.Option(help="anet or thumos: DETAD's tIoUs and buckets (default: the settings').")
    ] = None,
    subset: Annotated[
        str | None, typer.Option(help="Ground-truth subset (default: data.eval_subset; validation / test).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default: <stem>/diagnosis beside <stem>.json).")
    ] = None,
    config: EvalConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """What a detector gets wrong: DETAD's false-positive profile, sensitivity and false negatives.

    Writes diagnosis.json, diagnosis.md and three PNG figures (docs/diagnose.md).

    Examples:
      etad diagnose --dataset anet -g activity_net.v1-3.min.json -p results.json --out diagnosis
      etad diagnose --config examples/demo.yaml
    """
    from stages import diagnose as stage

    with user_errors():
        s = load(config, set_, check_parts=False) if config is not None else None
        request = stage.request(s, predictions=predictions, ground_truth=ground_truth, dataset=dataset,
                                subset=subset, out=out)  # fmt: skip
        result = stage.run(**request)
    console.print(stage.headline(result), soft_wrap=True)
    where = f"diagnosis: {request['out']} (diagnosis.json, diagnosis.md, 3 figures)"
    console.print(where, style="dim", soft_wrap=True)
    print_notes(result["notes"])


@app.command("view")
def view_page(
    predictions: PredictionsOpt = None,
    ground_truth: GroundTruthOpt = None,
    dataset: Annotated[str | None, typer.Option(help="anet or thumos (default: the settings').")] = None,
    subset: Annotated[
        str | None, typer.Option(help="Ground-truth subset (default: data.eval_subset; validation / test).")
    ] = None,
    videos: Annotated[
        Path | None, typer.Option(help="Folder of the video files (<id>.*), played beside the timeline.")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default: <stem>/view beside results/<stem>.json).")
    ] = None,
    top: Annotated[int, typer.Option(help="Detections shown per video.", min=1)] = 20,
    subtitles: Annotated[
        str | None, typer.Option(help="Also write srt or ass subtitles of the detections (one file a video).")
    ] = None,
    checkpoint: Annotated[
        Path | None, typer.Option(help="With --config: detect with this checkpoint first (etad infer).")
    ] = None,
    config: EvalConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Look at detections: a self-contained HTML page (offline) with each video's timeline and player.

    Ground truth above the top detections (colour: class, opacity: score, hover: DETAD error type),
    a click seeks the video; videos sortable by AP or errors; AP per class; the diagnosis figures.

    Examples:
      etad view --dataset anet -g activity_net.v1-3.min.json -p results.json --videos videos/ --out view
      etad view --config examples/demo.yaml --subtitles srt
      etad view --config examples/demo.yaml --checkpoint work/demo/e2e/checkpoints/best.pt
    """
    from etad_cli import runner
    from stages import view as stage

    with user_errors():
        if checkpoint is not None and config is None:
            raise UserError("--checkpoint detects with the settings of --config: give both")
        s = load(config, set_, check_parts=checkpoint is not None) if config is not None else None
        if checkpoint is not None:  # detections of this checkpoint first, into infer.output
            with stage_progress("infer") as progress:
                runner.infer(s, checkpoint=checkpoint, progress=progress)
        request = stage.request(s, predictions=predictions, ground_truth=ground_truth, dataset=dataset,
                                subset=subset, videos=videos, out=out)  # fmt: skip
        done = stage.run(**request, top=top, subtitle=subtitles)
    shown = f"{done['videos']} videos ({done['with_file']} with a local file) -> {done['page']}"
    console.print(shown, soft_wrap=True)
    print_notes(done["notes"])


@app.command()
def study(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Base settings file.")] = None,
    vary: Annotated[
        list[str] | None, typer.Option(help="KEY=V1,V2,... a setting and its values (repeatable; grid).")
    ] = None,
    also: Annotated[list[str] | None, typer.Option(help="KEY=V: one more point (repeatable).")] = None,
    zip_: Annotated[bool, typer.Option("--zip", help="Pair the --vary values instead of a grid.")] = False,
    seeds: Annotated[int, typer.Option(help="Seeds per point (seed, seed+1, ...).", min=1)] = 1,
    stages: Annotated[
        str,
        typer.Option(help="What each point trains: train, e2e, or train,e2e (e2e from its own detector)."),
    ] = "e2e",
    jobs: Annotated[int, typer.Option(help="Points run at once (one per GPU).", min=1)] = 1,
    out: Annotated[Path | None, typer.Option(help="Study folder (default: <work_dir>/study).")] = None,
    show: Annotated[Path | None, typer.Option(help="Print the table of this study folder and exit.")] = None,
    truth_labels: Annotated[
        bool,
        typer.Option(help="Also score each point with the annotation file's video labels (localisation)."),
    ] = False,
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
    from etad_cli.runner import ChildPoints
    from stages import study as stage

    with user_errors():
        if show is None:
            if config is None:
                raise UserError("give --config (or --show DIR)")
            plan = stage.prepare(load(config, set_), config=config, overrides=set_ or [], vary=vary or [],
                                 also=also or [], zip_values=zip_, seeds=seeds, stage=stages, jobs=jobs,
                                 out=out, truth_labels=truth_labels,
                                 check=lambda sets: load(config, sets))  # fmt: skip
            with (
                stage_progress(f"study {plan.out_dir.name}") as progress,
                ChildPoints(spread_over_gpus=jobs > 1) as runner,
            ):
                stage.run(plan, runner=runner, progress=progress)
            show = plan.out_dir
        console.print(stage.table(show), soft_wrap=True)


@app.command()
def encoders(
    as_json: Annotated[bool, typer.Option("--json", help="Print the registry as JSON.")] = False,
) -> None:
    """List the encoders model.encoder.name can be, with their clip shapes and checkpoint formats.

    Each row: parameters, feature width, the clip shape the encoder takes, its stages (what
    frozen_stages counts) and the weight files it loads.

    Example: etad encoders --json
    """
    from stages.model.encoder import describe_encoders

    with user_errors():
        rows = describe_encoders()
        if as_json:
            print(json.dumps(rows, indent=1))
        else:
            views.encoder_table(rows)


@app.command()
def report(config: ConfigOpt, set_: SetOpt = None) -> None:
    """Summarise a work folder: each stage's time and peak memory, and every evaluated model's mAP.

    Reads <work_dir>/logs/stages.jsonl (the last run of each stage) and compares the frozen-feature
    and end-to-end models that `etad infer --eval` scored; plots every run's loss curves and the
    models' scores to <work_dir>/report/curves.png. `make demo` ends with it.

    Example: etad report --config examples/demo.yaml
    """
    from stages.training.curves import plot_curves
    from stages.training.run_folder import set_aside_runs

    with user_errors():
        s = load(config, set_)
        scored = views.run_report(s.work_dir, read_runs(s.work_dir))
        aside = [p.name for p in set_aside_runs(s.work_dir)] if Path(s.work_dir).is_dir() else []
        print_notes([f"runs moved aside by --restart (kept): {', '.join(aside)}"] if aside else [])
        png = plot_curves(s.work_dir, scored, s.work_dir / "report" / "curves.png")
        views.curves_written(s.work_dir, png)


def main() -> None:
    """Console-script entry point."""
    app()
