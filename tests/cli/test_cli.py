"""The command line as a user first meets it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from etad_cli import __version__
from tests.helpers import FILES, REPO, run_cli, run_etad


def test_help_lists_every_command_with_one_line():
    result = run_etad("--help")
    assert result.returncode == 0
    for command in (
        "synth",
        "config",
        "extract",
        "cache",
        "train",
        "infer",
        "eval",
        "report",
        "study",
        "checkpoint",
        "encoders",
    ):
        lines = result.stdout.splitlines()
        line = next(line for line in lines if line.lstrip("│ ").startswith(f"{command} "))
        assert len(line.split(command, 1)[1].strip(" │")) > 10, line


@pytest.mark.slow  # `etad` in a subprocess
def test_every_command_help_shows_an_example():
    for command in (
        ["synth"],
        ["extract"],
        ["cache"],
        ["train"],
        ["infer"],
        ["eval"],
        ["report"],
        ["config", "show"],
        ["config", "validate"],
        ["config", "reference"],
        ["study"],
        ["checkpoint", "info"],
        ["checkpoint", "convert"],
        ["encoders"],
    ):
        result = run_etad(*command, "--help")
        assert result.returncode == 0, command
        assert "Example" in result.stdout and f"etad {' '.join(command)} " in result.stdout, command


def test_shell_completion_script():
    """The installed `etad` script prints a bash completion script (`--install-completion` installs it)."""
    etad = Path(sys.executable).with_name("etad")
    if not etad.is_file():
        pytest.skip(f"{etad}: etad is not installed as a script in this environment")
    env = {**os.environ, "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}  # the shell named, not guessed
    result = subprocess.run(
        [etad, "--show-completion", "bash"], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 0
    assert "_etad_completion" in result.stdout and "complete " in result.stdout


def test_version():
    result = run_etad("--version")
    assert result.returncode == 0
    assert __version__ in result.stdout


def test_the_entry_point_freezes_what_a_command_made_out_of_the_last_garbage_collection(monkeypatch):
    """`main` (the console script) leaves the objects alive at the end out of the interpreter's
    final collection, however the command ends (typer exits with SystemExit)."""
    import gc

    from etad_cli.app import main

    monkeypatch.setattr(sys, "argv", ["etad", "--version"])
    assert gc.get_freeze_count() == 0
    try:
        with pytest.raises(SystemExit):
            main()
        assert gc.get_freeze_count() > 1000
    finally:
        gc.unfreeze()


def test_unknown_command_is_a_usage_error_without_traceback():
    result = run_etad("frobnicate")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def _imports_of(*args: str) -> set[str]:
    """The modules a real `etad ARGS...` process imports (from `python -X importtime`)."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "etad_cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines() if "|" in line}


@pytest.mark.slow  # `etad` in a subprocess
def test_scoring_and_showing_settings_never_import_torch():
    """`etad eval` and `etad config show` start in well under a second: a user scoring a file waits
    for scoring, not for torch's 6 s of imports. `config validate` checks the part names, with torch."""
    data = FILES
    scoring = _imports_of(
        "eval",
        "-p",
        str(data / "tiny_predictions.json"),
        "-g",
        str(data / "tiny_anet.json"),
        "--config",
        "examples/demo.yaml",
    )
    showing = _imports_of("config", "show", "examples/demo.yaml")
    assert "stages.evaluate" in scoring and "stages.core.settings" in showing
    assert "torch" not in scoring | showing
    assert "torch" in _imports_of("config", "validate", "examples/demo.yaml")


@pytest.mark.slow  # `etad` in a subprocess
def test_config_validate_checks_part_names_that_show_leaves_to_it():
    shown = run_etad("config", "show", "examples/demo.yaml", "--set", "model.encoder.name=nope")
    assert shown.returncode == 0 and "name: nope" in shown.stdout
    checked = run_etad("config", "validate", "examples/demo.yaml", "--set", "model.encoder.name=nope")
    assert checked.returncode == 2 and "model.encoder.name" in checked.stderr
    assert "Traceback" not in checked.stderr


def test_each_commands_subset_help_describes_its_own_option():
    """`SubsetOpt` was defined twice in app.py and Typer read the later one: extract and cache
    described --subset as eval's ground-truth subset."""
    for command, own, other in (
        ("extract", "Subsets to process", "Ground-truth subset"),
        ("cache", "Subsets to process", "Ground-truth subset"),
        ("eval", "Ground-truth subset", "Subsets to process"),
    ):
        text = " ".join(run_cli(command, "--help", width=200).output.split())
        assert own in text and other not in text, command


def test_tables_keep_their_words_at_eighty_columns(tmp_path, monkeypatch):
    """`annotations check` and `eval --per-class` at 80 columns: no header or class name cut to "…"."""
    import json

    from etad_cli.console import console

    monkeypatch.setattr(console, "width", 80)
    label = "Putting on a rather long class name"
    entry = {"subset": "validation", "duration": 20.0, "annotations": [{"segment": [1, 5], "label": label}]}
    gt = {"database": {f"v{i}": entry for i in range(3)}}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    detection = {"segment": [1, 4], "label": label, "score": 0.5}
    predictions = {"results": {f"v{i}": [detection] for i in range(3)}}
    (tmp_path / "p.json").write_text(json.dumps(predictions))
    for args in (
        ("annotations", "check", tmp_path / "gt.json"),
        ("eval", "-g", tmp_path / "gt.json", "-p", tmp_path / "p.json", "--per-class"),
    ):
        done = run_cli(*args)
        assert done.returncode == 0 and "…" not in done.stdout, done.stdout
    assert label in done.stdout
    assert "instances" in run_cli("annotations", "check", tmp_path / "gt.json").stdout


def _commands(command, path=()):
    """Every leaf command of the click tree under `command`, with its words (e.g. ("config", "show"))."""
    if hasattr(command, "commands"):
        for name, sub in command.commands.items():
            yield from _commands(sub, (*path, name))
    else:
        yield path, command


def test_every_help_names_only_options_its_command_has_and_flags_take_no_value():
    """A help text (the command's and its options') names `--x` only where the command has it, or
    qualified by the command that has it ("etad infer --eval", "train --encoder", torchrun's own);
    every boolean option is a flag and its row shows no type."""
    import re

    import typer.main

    from etad_cli.app import app
    from stages.core.settings import Settings

    commands = dict(_commands(typer.main.get_command(app)))
    options = {
        path[-1]: {o for p in c.params for o in p.opts + p.secondary_opts} for path, c in commands.items()
    }
    for path, command in commands.items():
        text = " ".join([command.help or "", *(getattr(p, "help", None) or "" for p in command.params)])
        for before, option in re.findall(r"(\S*)\s+(--[a-z][a-z0-9-]*)", text):
            owners = {path[-1], before} & options.keys()  # "--stages train --vary": train is a value
            if before != "torchrun":
                assert any(option in options[owner] for owner in owners), (path, before, option)
        for param in command.params:
            for default in re.findall(r"\(default: ([^)]*)\)", getattr(param, "help", None) or ""):
                assert default != "the settings'", (path, param.name)  # which setting, named
                for section, field in re.findall(r"\b([a-z_]+)\.([a-z_]+)\b", default):
                    if section in Settings.model_fields:  # not a file name such as last.pt
                        assert field in Settings.model_fields[section].annotation.model_fields, (path, field)
            if getattr(param, "type", None) is not None and param.type.name == "boolean":
                assert param.is_flag, (path, param.name)
        shown = run_cli(*path, "--help", width=200).output
        assert "<bool>" not in shown and "requires an argument" not in shown, path
