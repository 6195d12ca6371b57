"""One video's timeline: its ground truth on one row and its top detections below, best first,
each as opaque as its score is near the best. `infer --plot` draws it as a PNG and `etad view`
as an interactive page, from the same rows (`timeline_rows`)."""

from __future__ import annotations

import colorsys
import zlib
from pathlib import Path

from stages.core.files import atomic_output
from stages.core.plots import pyplot


def timeline_rows(truth: list[tuple[float, float, str]], detections: list[dict], top: int) -> dict:
    """{"truth": [[start, end, label]], "detections": [[start, end, label, score, opacity]]}: the
    `top` detections by score, best first; opacity 0.3..1 as the score nears the best one's."""
    best = sorted(detections, key=lambda d: -d["score"])[:top]
    high = max((d["score"] for d in best), default=1.0) or 1.0
    return {
        "truth": [[float(s), float(e), str(label)] for s, e, label in truth],
        "detections": [
            [
                float(d["segment"][0]),
                float(d["segment"][1]),
                str(d["label"]),
                float(d["score"]),
                0.3 + 0.7 * min(1.0, max(0.0, d["score"] / high)),
            ]
            for d in best
        ],
    }


def class_color(name: str) -> str:
    """A class's colour, from its name (so a class has one colour in every page and figure, whatever
    classes are beside it), spread around the hue circle by the golden ratio."""
    index = zlib.crc32(str(name).encode("utf-8")) % 997
    r, g, b = colorsys.hsv_to_rgb((index * 0.618033988749895) % 1.0, 0.65, 0.85)
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"


def plot_timeline(item, detections: list[dict], path: Path, top: int = 10) -> None:
    """`item` (an Item: video_id, duration, segments) as a PNG: truth above, detections below."""
    plt = pyplot()

    rows = timeline_rows(item.segments, detections, top)
    best = rows["detections"]
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.3 * (len(best) + 1)))
    for s, e, label in rows["truth"]:
        ax.barh(0, e - s, left=s, color=class_color(label), height=0.6)
        ax.text(s, 0, f" {label}", va="center", fontsize=7)
    for row, (s, e, label, score, opacity) in enumerate(best, start=1):
        ax.barh(row, e - s, left=s, color=class_color(label), alpha=opacity)
        ax.text(s, row, f" {label} {score:.2f}", va="center", fontsize=7)
    shown = dict.fromkeys([label for *_, label in rows["truth"]] + [r[2] for r in best])
    if shown:  # a class legend: the colours are the classes', as on `etad view`'s page
        from matplotlib.patches import Patch

        ax.legend(
            handles=[Patch(color=class_color(c), label=c) for c in shown],
            fontsize=7,
            loc="upper left",
            bbox_to_anchor=(1.0, 1.0),
        )
    ax.set_yticks([0, *range(1, len(best) + 1)], ["truth", *[f"#{i}" for i in range(1, len(best) + 1)]])
    ax.invert_yaxis()
    ax.set_xlim(0, item.duration)
    ax.set_xlabel("seconds")
    ax.set_title(item.video_id)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
