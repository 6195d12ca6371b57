"""What `etad study` is made of: its plan, its results, its report (stages/study.py runs it)."""
