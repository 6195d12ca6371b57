"""etad: the command-line interface (Typer commands, settings, console). The work lives in `stages`."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("etad")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"
