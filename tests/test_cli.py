"""The command line as a user first meets it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from etad_cli import __version__
from tests.conftest import run_etad


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
    ):
        line = next(line for line in result.stdout.splitlines() if f" {command} " in line)
        assert len(line.split(command, 1)[1].strip(" │")) > 10, line


def test_every_command_help_shows_an_example():
    for command in (["synth"], ["extract"], ["cache"], ["train"], ["infer"], ["eval"], ["report"],
                    ["config", "show"], ["config", "validate"], ["config", "reference"], ["study"],
                    ["checkpoint", "info"], ["checkpoint", "convert"]):  # fmt: skip
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


def test_unknown_command_is_a_usage_error_without_traceback():
    result = run_etad("frobnicate")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
