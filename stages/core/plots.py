"""matplotlib, the one way every figure is drawn: off-screen (Agg), and labels drawn as text: a
class named "$5 tip" or "a_b" is no mathtext formula (a `$` pair broke `eval --per-class --plot`)."""

from __future__ import annotations


def pyplot():
    """matplotlib.pyplot, set up for files, with mathtext parsing off."""
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["text.parse_math"] = False
    matplotlib.rcParams["text.usetex"] = False
    import matplotlib.pyplot as plt

    return plt
