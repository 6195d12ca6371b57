"""A study's report: study.csv, study.md and the plots (mAP against each varied value, against
memory and time per iteration), and the table `etad study --show` prints."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING

from stages.core.plots import pyplot
from stages.studies.results import FIGURES, read_results, summary, unusable_results

if TYPE_CHECKING:  # the settings models, for type hints only
    pass

# what a point trains: frozen features, end to end, or both (end to end from the point's own detector)

COLUMNS = [
    "point",
    "seed",
    "average_mAP",
    "truth_labels_mAP",
    "mAP_first_tiou",
    "proposal_AUC",
    "peak_memory_mib",
    "memory_kind",
    "seconds_per_iteration",
    "seconds",
]


# the figures summarised over seeds (mean ± std per point)


def markdown(rows: list[dict]) -> str:
    """The mean ± std table; a column for the truth-label mAP when every point measured it."""
    truth = bool(rows) and all(r["truth_labels_mAP"] is not None for r in rows)
    head = "| point | seeds | average mAP (%) |" + (" mAP, truth labels (%) |" if truth else "")
    head += " proposal AUC | peak memory (MiB) | s / iteration | s in all |"
    lines = [head, "|---" * (7 + truth) + "|"]
    for r in rows:
        m, t, a, mem, it, sec = (r[k] for k in FIGURES)
        lines.append(
            f"| {r['point']} | {r['seeds']} | {100 * m[0]:.2f} ± {100 * m[1]:.2f} |"
            + (f" {100 * t[0]:.2f} ± {100 * t[1]:.2f} |" if truth else "")
            + f" {a[0]:.2f} ± {a[1]:.2f} | {mem[0]:,.0f} | {it[0]:.2f} | {sec[0]:.0f} |"
        )
    kind = rows[0]["memory_kind"] if rows else ""
    note = " Truth labels: each video labelled with its own classes (localisation alone)." if truth else ""
    return (
        "\n".join(lines)
        + f"\n\nMemory: {kind} of the training process. Mean ± standard deviation over seeds.{note}\n"
    )


def write_outputs(out_dir: Path, results: list[dict], varied: list[str]) -> None:
    """study.csv, study.md and the plots."""
    from stages.core.files import atomic_output

    with atomic_output(out_dir / "study.csv") as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            COLUMNS + [f"mAP@{t:.2f}" for t in (results[0]["tiou_thresholds"] if results else [])]
        )
        for r in results:
            writer.writerow([r.get(c) for c in COLUMNS] + list(r["mAP"]))
    rows = summary(results)
    with atomic_output(out_dir / "study.md") as tmp:
        tmp.write_text(markdown(rows))
    plot(out_dir, rows, varied)


def plot(out_dir: Path, rows: list[dict], varied: list[str]) -> None:
    plt = pyplot()

    from stages.core.files import atomic_output

    for key in varied:  # mAP against this value, one line per setting of the other varied keys
        fig, ax = plt.subplots(figsize=(5, 3.5))
        groups: dict[str, list] = {}
        for r in rows:
            if key not in r["overrides"]:
                continue
            rest = ",".join(f"{k}={v}" for k, v in r["overrides"].items() if k != key) or "mAP"
            groups.setdefault(rest, []).append((r["overrides"][key], r["average_mAP"]))
        for label, pts in groups.items():
            xs = [_number(x) for x, _ in pts]
            xs = xs if all(isinstance(x, float) for x in xs) else [str(x) for x, _ in pts]
            means, stds = [100 * m for _, (m, _) in pts], [100 * s for _, (_, s) in pts]
            ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=label)
        ax.set(xlabel=key, ylabel="average mAP (%)")
        ax.legend(fontsize=6)
        fig.tight_layout()
        with atomic_output(out_dir / f"map_vs_{key}.png") as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in (
        (axes[0], "peak_memory_mib", "peak memory (MiB)"),
        (axes[1], "seconds_per_iteration", "seconds per iteration"),
    ):
        for r in rows:
            ax.scatter(r[key][0], 100 * r["average_mAP"][0])
            ax.annotate(_label(r["overrides"], varied), (r[key][0], 100 * r["average_mAP"][0]), fontsize=6)
        ax.set(xlabel=label, ylabel="average mAP (%)")
    fig.tight_layout()
    with atomic_output(out_dir / "map_vs_cost.png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def _label(overrides: dict, varied: list[str]) -> str:
    """A short name for a point on a plot: its varied values ('0.3/random'), or 'key=value' for an
    extra point."""
    if overrides and all(k in varied for k in overrides):
        return "/".join(str(v) for v in overrides.values())
    return ",".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in overrides.items()) or "base"


def _number(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def table(out_dir: Path) -> str:
    """The markdown table of a finished or running study, and where its files are."""
    results, _ = read_results(out_dir)
    unusable = unusable_results(out_dir)
    skipped = (
        (
            f"\n{len(unusable)} result file(s) left out, as unfinished (a rerun of the study redoes "
            f"them): {unusable[0]}\n"
        )
        if unusable
        else ""
    )
    if not results:
        return f"{out_dir}: no point has finished yet{skipped}"
    return markdown(summary(results)) + f"\n{out_dir}: study.csv, study.md, map_vs_*.png\n" + skipped
