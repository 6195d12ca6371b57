"""The one check of an instance's numbers, for every reader and converter: a duration is a finite
positive number of seconds (under MAX_DURATION), a segment two finite numbers in order, inside
[0, duration] or clipped to it where the dataset's protocol clips (and counted). A reversed segment
is refused everywhere, never matched: its tIoU with anything would divide by nothing."""

from __future__ import annotations

import math

MAX_DURATION = 1e6  # seconds; an annotated duration beyond it is an error in the file, not a video


def number_problem(value: object) -> str | None:
    """Why `value` is not a number read from a file (a bool, a string or a null is not), or None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{str(value)[:40]!r} is not a number"
    if not math.isfinite(value):
        return f"{value} is not finite"
    return None


def duration_problem(value: object) -> str | None:
    """Why `value` cannot be a video's duration, or None."""
    if value is None:
        return "has no duration"
    if (why := number_problem(value)) is not None:
        return f"duration {why}"
    if value <= 0:
        return f"duration {value} is not positive"
    if value > MAX_DURATION:
        return f"duration {value:g} s is longer than {MAX_DURATION:g} s (11.6 days)"
    return None


def segment_problem(start: object, end: object) -> str | None:
    """Why [start, end] cannot be a segment (not numbers, not finite, ends before it starts), or None."""
    if any(isinstance(v, bool) or not isinstance(v, int | float) for v in (start, end)):
        return f"segment [{str(start)[:20]!r}, {str(end)[:20]!r}] is not two numbers"
    if not (math.isfinite(start) and math.isfinite(end)):
        return f"segment [{start}, {end}] is not finite"
    if end < start:
        return f"segment [{start}, {end}] ends before it starts"
    return None


def clipped(start: float, end: float, duration: float) -> tuple[float, float]:
    """[start, end] cut to [0, duration] (an instance wholly past the end, as MultiTHUMOS has one,
    becomes a zero-length one at the end, as the protocols that clip make it)."""
    return min(max(start, 0.0), duration), min(max(end, 0.0), duration)
