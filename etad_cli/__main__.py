"""`python -m etad_cli` runs the CLI (torchrun uses this form: `torchrun ... -m etad_cli train ...`)."""

from etad_cli.app import main

main()
