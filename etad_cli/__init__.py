"""etad: the command-line interface (Typer commands, settings, console). The work lives in `stages`."""

# The one place the version is written: pyproject.toml reads it from here, and `etad --version`
# prints it without the ~30 ms that importlib.metadata costs every command at start-up.
__version__ = "0.2.0"
