"""Console output shared by every command: one rich console, progress bars, and clean user errors.

A `UserError` is a problem with the user's input (a bad file, a bad value). It is printed as one
line per problem on stderr and the command exits with code 2, never with a traceback.

Both consoles print strings as text, never as rich markup, and show control characters as escapes:
ids, labels, paths and checkpoint fields come from files, and a crafted one must not colour the
terminal or hide a link in it (`[link=…]`, an OSC 8 escape). Styles are given as `style=` or `Text`.
"""

from __future__ import annotations

import re
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
from rich.text import Text

from stages.core.errors import TrainingDiverged, UserError
from stages.core.progress import Progress as StageProgress

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # all but tab and newline


def visible(text: str) -> str:
    """`text` with its control characters (ESC starts a terminal command) written as escapes."""
    return CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


class TextConsole(Console):
    """A console for which every string is plain text (tables' cells and titles included)."""

    def __init__(self, **options) -> None:
        super().__init__(markup=False, highlight=False, **options)

    def render_str(self, text: str, **options) -> Text:
        options["markup"] = False
        return super().render_str(visible(text), **options)


console = TextConsole()
err_console = TextConsole(stderr=True)

EXIT_FAILED = 1  # the command ran but its work failed (some videos, a diverging run)
EXIT_USER_ERROR = 2
RESUME_HINT = "interrupted; finished work is kept: rerun the same command to continue"
__all__ = ["UserError", "console", "err_console", "print_notes", "stage_progress", "user_errors", "visible"]


def _error(line: str) -> None:
    err_console.print(Text.assemble(("error:", "bold red"), " ", visible(line)), soft_wrap=True)


@contextmanager
def user_errors(interrupted: str = RESUME_HINT) -> Iterator[None]:
    """Inside a command: UserError (and an OSError the stage did not expect) -> clean stderr lines
    and exit 2; a diverging training run -> exit 1; Ctrl-C -> `interrupted` and exit 130."""
    try:
        yield
    except UserError as exc:
        for line in str(exc).splitlines():
            _error(line)
        raise typer.Exit(EXIT_USER_ERROR) from None
    except TrainingDiverged as exc:
        _error(str(exc))
        raise typer.Exit(EXIT_FAILED) from None
    except OSError as exc:
        _error(f"{exc.filename or ''}: {exc.strerror or exc.__class__.__name__}".lstrip(": "))
        raise typer.Exit(EXIT_USER_ERROR) from None
    except KeyboardInterrupt:
        err_console.print(interrupted, soft_wrap=True)
        raise typer.Exit(130) from None


def print_notes(notes: list[str]) -> None:
    """What a stage left out or assumed, one yellow line each on stderr."""
    for note in notes:
        err_console.print(Text.assemble(("note:", "yellow"), " ", visible(note)), soft_wrap=True)


class RichProgress(StageProgress):
    """A stage's progress as one rich bar (description, bar, done/total, elapsed, ETA, info)."""

    def __init__(self, bar: Progress, description: str, visible: bool = True) -> None:
        self.bar, self.visible = bar, visible
        self.task = bar.add_task(description, total=None, info="")

    def start(self, total: int | None, info: str = "") -> None:
        self.bar.update(self.task, total=total, info=info)

    def advance(self, n: int = 1, info: str = "") -> None:
        self.bar.update(self.task, advance=n, **({"info": info} if info else {}))

    def note(self, text: str) -> None:
        if self.visible:
            console.print(text, style="dim", soft_wrap=True)


@contextmanager
def stage_progress(description: str, visible: bool = True) -> Iterator[RichProgress]:
    """A live progress bar for one stage run (drawn nowhere when not `visible`: other torchrun ranks)."""
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}", markup=False),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        disable=not visible,
    )
    with bar:
        yield RichProgress(bar, description, visible)
