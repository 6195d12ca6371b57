"""`etad checkpoint info|convert`: what a checkpoint holds, and released ones in etad's layout."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from etad_cli import views
from etad_cli.console import user_errors


def checkpoint_info(path: Annotated[Path, typer.Argument(help="Checkpoint file.")]) -> None:
    """Print what a checkpoint holds: its layout, kind, parts and model sizes.

    Example: etad checkpoint info e2e_anet_snippet0.3_bs4_92e98.pth.tar
    """
    from stages.core import checkpoints

    with user_errors():
        views.checkpoint_summary(path, checkpoints.describe(path))


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
