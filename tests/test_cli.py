"""The command line as a user first meets it."""

from __future__ import annotations

from etad_cli import __version__
from tests.conftest import run_etad


def test_help_lists_every_command_with_one_line():
    result = run_etad("--help")
    assert result.returncode == 0
    for command in ("synth", "config", "extract", "cache"):
        line = next(line for line in result.stdout.splitlines() if f" {command} " in line)
        assert len(line.split(command, 1)[1].strip(" │")) > 10, line


def test_version():
    result = run_etad("--version")
    assert result.returncode == 0
    assert __version__ in result.stdout


def test_unknown_command_is_a_usage_error_without_traceback():
    result = run_etad("frobnicate")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
