"""The `etad` command line: one Typer command per stage. Each parses options, loads the settings,
calls `stages.<stage>.run(...)` and prints its summary. Nothing here knows how a detector works."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from etad_cli import __version__
from etad_cli.console import UserError, console, progress, user_errors
from etad_cli.settings import Settings, load_settings, settings_as_yaml

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


@config_app.command("show")
def config_show(config: ConfigArg, set_: SetOpt = None) -> None:
    """Print the resolved settings (defaults filled in, paths absolute).

    Example: etad config show examples/demo.yaml --set train.lr=1e-4
    """
    with user_errors():
        settings = load(config, set_)
        console.print(settings_as_yaml(settings), markup=False, highlight=False, end="")


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


def main() -> None:
    """Console-script entry point."""
    app()
