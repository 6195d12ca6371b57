"""The commands, by area: each module holds the Typer functions of one area; etad_cli/app.py
registers them in pipeline order."""
