"""How a stage reports long work. Stages call `start` once the amount is known and `advance` as
items finish; the CLI passes a rich progress bar, tests and library callers the silent default."""

from __future__ import annotations


class Progress:
    """The silent default: a stage never checks whether anybody is watching."""

    def start(self, total: int | None, info: str = "") -> None:
        """`total` items of work (None: unknown)."""

    def advance(self, n: int = 1, info: str = "") -> None:
        """`n` more items done; `info` is a short status such as a loss or a speed."""

    def note(self, text: str) -> None:
        """A line worth showing beside the bar (the settings file a run logged, ...)."""


SILENT = Progress()
