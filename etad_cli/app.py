"""The `etad` command line: the root, its sub-apps and every command, registered in pipeline order.
Each command (etad_cli/commands/, by area) parses options, loads the settings (`--set` overrides
included), calls the stage through stages.api and prints its summary (etad_cli/views.py). Nothing
here knows how a stage does its work."""

from __future__ import annotations

import gc
from typing import Annotated

import typer

from etad_cli import __version__
from etad_cli.commands import annotations, checkpoints, data, evaluation, inference, settings, training
from etad_cli.console import console

app = typer.Typer(
    name="etad",
    help="Train and run ETAD temporal action detectors end to end, from raw video frames.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
config_app = typer.Typer(help="Show or check a settings file.", no_args_is_help=True)
checkpoint_app = typer.Typer(
    help="Inspect or convert checkpoints (etad's and released ones).", no_args_is_help=True
)
annotations_app = typer.Typer(
    help="Convert other benchmarks' annotation files; check what a file holds.", no_args_is_help=True
)
app.add_typer(config_app, name="config")
app.add_typer(checkpoint_app, name="checkpoint")
app.add_typer(annotations_app, name="annotations")

# the commands in the order a user runs them (`etad --help` lists them so)
for name, command in (
    ("init", annotations.init),
    ("synth", data.synth),
    ("extract", data.extract),
    ("cache", data.cache),
    ("train", training.train),
    ("infer", inference.infer),
    ("eval", evaluation.eval_),
    ("diagnose", evaluation.diagnose),
    ("view", evaluation.view_page),
    ("study", training.study),
    ("encoders", settings.encoders),
    ("report", training.report),
):
    app.command(name)(command)
for group, name, command in (
    (config_app, "show", settings.config_show),
    (config_app, "reference", settings.config_reference),
    (config_app, "validate", settings.config_validate),
    (checkpoint_app, "info", checkpoints.checkpoint_info),
    (checkpoint_app, "convert", checkpoints.checkpoint_convert),
    (annotations_app, "convert", annotations.annotations_convert),
    (annotations_app, "check", annotations.annotations_check),
):
    group.command(name)(command)


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


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    finally:
        # The command is over (its files written and closed; atexit handlers, log flushing among
        # them, still run). Frozen, the objects it made are left out of the interpreter's last
        # garbage collection, which would walk every one of torch's: a third of a second or more
        # of every command that imported torch (docs/benchmarks.md, `startup`).
        gc.freeze()
