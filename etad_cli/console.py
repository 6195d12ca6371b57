"""Console output shared by every command: one rich console, progress bars, and clean user errors.

A `UserError` is a problem with the user's input (a bad file, a bad value). It is printed as one
line per problem on stderr and the command exits with code 2, never with a traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from stages.errors import UserError

console = Console()
err_console = Console(stderr=True)

EXIT_USER_ERROR = 2
__all__ = ["UserError", "console", "err_console", "progress", "user_errors"]


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn UserError into clean stderr lines + exit 2, and Ctrl-C into exit 130, inside a command."""
    try:
        yield
    except UserError as exc:
        for line in str(exc).splitlines():
            err_console.print(f"[bold red]error:[/] {line}", markup=True, highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_USER_ERROR) from None
    except KeyboardInterrupt:
        err_console.print("interrupted; finished work is kept, rerun the same command to resume")
        raise typer.Exit(130) from None


def progress(*extra_columns: TextColumn) -> Progress:
    """A rich progress bar: description, bar, done/total, elapsed, ETA, plus any extra columns."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *extra_columns,
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
    )
