"""The work of each `etad` stage, one module per stage, plus the small modules they share."""
