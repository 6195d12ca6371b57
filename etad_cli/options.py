"""The options several commands share (as `Annotated` types), and how a command loads its settings."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:  # the settings models load only when a command runs, so --help stays fast
    from stages.core.settings import Settings

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
    ),
]


ShardOpt = Annotated[
    str | None,
    typer.Option(help="K/N: this machine's share of the videos (default: the Slurm array's task, if any)."),
]


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
    typer.Option(
        help="anet, thumos, hacs, fineaction, epic100, ego4d_mq, multithumos or charades: the "
        "benchmark's tIoUs, subset and detections per video; default: the settings'."
    ),
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


def flag(name: str, help: str) -> object:
    """The type of a boolean option that takes no value (`--dry-run`), off unless given: written
    `dry_run: flag("--dry-run", "...") = False` (Typer reads the annotation)."""
    return Annotated[bool, typer.Option(name, help=help)]


def option(kind: object, help: str, **extra: object) -> object:
    """The type of an option that takes a value: `out: option(Path | None, "Output folder.") = None`
    (extra: Typer's checks, e.g. min=1)."""
    return Annotated[kind, typer.Option(help=help, **extra)]


def load(
    config: Path | None,
    overrides: list[str] | None,
    extra: list[str] | None = None,
    check_parts: bool = True,
) -> Settings:
    """The settings of a command: the file, then --set overrides, then the command's own options.
    Part names are checked against their registries; commands that never build a model pass
    `check_parts=False`, which leaves out those that live in torch modules (no torch import)."""
    from stages.api import load_settings

    return load_settings(config, [*(overrides or []), *(extra or [])], check_parts=check_parts)


def is_main_process() -> bool:
    """False in the non-zero ranks of a torchrun launch: they stay quiet and write nothing shared."""
    return os.environ.get("RANK", "0") == "0"
