"""`etad diagnose`: what a detector gets wrong, with DETAD's three analyses (stages/evaluation/detad.py).

Reads a ground-truth file (ActivityNet layout; durations, or DETAD's characteristics per instance)
and a prediction file, and writes into the output folder:
  diagnosis.json   average_mAP_N, false_positive (shares per error type: over all, per tIoU, per
                   rank chunk k·G), mAP_N_gain_removing (per error type), sensitivity (mAP_N per
                   bucket of each characteristic), false_negative (share missed per bucket)
  diagnosis.md     the headline and the tables
  false_positive_analysis.png, sensitivity_analysis.png, false_negative_analysis.png
Layout and definitions: docs/diagnose.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from stages.core.errors import UserError
from stages.core.files import aliased_output, atomic_output, ensure_writable_dir, write_json
from stages.core.plots import pyplot
from stages.evaluation import detad
from stages.evaluation.detad_files import FIGURES, Inputs, default_subset, files_request, read_inputs

if TYPE_CHECKING:  # the settings models, for type hints only
    from stages.core.settings import Settings

NAMES = {  # what the tables and figures call the characteristics and error types
    "coverage": "Coverage",
    "length": "Length",
    "num-instances": "# Instances",
    "context-size": "Context Size",
    "context-distance": "Context Distance",
    "agreement": "Agreement",
    "true_positive": "True Positive",
    "double_detection": "Double Detection",
    "wrong_label": "Wrong Label",
    "localization": "Localization",
    "confusion": "Confusion",
    "background": "Background",
}
COLORS = ["#33a02c", "#b2df8a", "#1f78b4", "#fb9a99", "#e31a1c", "#a6cee3"]  # DETAD's, by error type


def analyse(inputs: Inputs, dataset: str) -> dict:
    """DETAD's three analyses as diagnosis.json holds them."""
    truth, pred, tious = inputs.truth, inputs.pred, detad.TIOUS[dataset]
    ap, matched = detad.normalised_ap(truth, pred, tious)
    _, matched_fn = detad.normalised_ap(truth, pred, tious, min_precision=detad.FN_MIN_PRECISION)
    top = pred.take(detad.top_predictions(truth, pred))
    ap_top, matched_top = detad.normalised_ap(truth, top, tious)
    types = detad.error_types(truth, top, matched_top, tious)
    base = float(ap_top.mean())
    return {
        "dataset": dataset,
        "tiou_thresholds": [float(t) for t in tious],
        "counts": {
            "ground_truth": len(truth.label),
            "classes": truth.n_classes,
            "predictions": len(pred.label),
            "top_predictions": len(top.label),
        },
        "characteristics": inputs.source,
        "average_mAP_N": float(ap.mean()),
        "false_positive": {
            "average_mAP_N_top10G": base,
            "over_all": detad.shares(types),
            "per_tiou": {f"{t:.2f}": detad.shares(types[i : i + 1]) for i, t in enumerate(tious)},
            "per_k": detad.profile(truth, top, types),
        },
        "mAP_N_gain_removing": detad.gains(truth, top, matched_top, types=types, base=base),
        "sensitivity": detad.sensitivity(truth, pred, matched, inputs.bins),
        "false_negative": detad.false_negatives(truth, matched_fn, inputs.bins),
        "notes": inputs.notes,
    }


def headline(result: dict) -> str:
    """One sentence: the commonest false-positive type among the top predictions and what removing
    the type that costs most would add."""
    errors = {k: v for k, v in result["false_positive"]["over_all"].items() if k != "true_positive"}
    common = max(errors, key=errors.get)
    gain = result["mAP_N_gain_removing"]
    costly = max(gain, key=gain.get)
    line = f"{100 * errors[common]:.1f}% of your top predictions are {NAMES[common].lower()} errors"
    if gain[costly] <= 0:
        return line + "; removing no error type would raise average-mAP_N."
    line += f"; fixing {NAMES[costly].lower()} errors would add {100 * gain[costly]:.2f} average-mAP_N"
    if costly != common:
        line += f" (removing {NAMES[common].lower()} errors: {100 * gain[common]:+.2f})"
    return line + "."


def markdown(result: dict) -> str:
    fp, lines = result["false_positive"], []
    lines += [
        f"# Diagnosis ({result['dataset']}, DETAD)",
        "",
        headline(result),
        "",
        f"average-mAP_N {100 * result['average_mAP_N']:.2f} (top 10G per class: "
        f"{100 * fp['average_mAP_N_top10G']:.2f}); tIoU "
        f"{', '.join(f'{t:g}' for t in result['tiou_thresholds'])}",
        "",
        "## False positives (top 10G predictions per class)",
        "",
        "| | " + " | ".join(NAMES[k] for k in detad.ERROR_TYPES) + " |",
        "|---" * 7 + "|",
    ]
    for name, row in [("all", fp["over_all"]), *fp["per_k"].items()]:
        lines.append(f"| {name} | " + " | ".join(f"{100 * row[k]:.1f}%" for k in detad.ERROR_TYPES) + " |")
    lines += [
        "",
        "| removing | " + " | ".join(NAMES[k] for k in result["mAP_N_gain_removing"]) + " |",
        "|---" * 6 + "|",
        "| average-mAP_N gain | "
        + " | ".join(f"{100 * v:+.2f}" for v in result["mAP_N_gain_removing"].values())
        + " |",
        "",
        "## Sensitivity (average-mAP_N per bucket) and false negatives (share missed)",
        "",
    ]
    for name, row in result["sensitivity"].items():
        missed = result["false_negative"].get(name, {})
        lines.append(
            f"- {NAMES[name]} ({result['characteristics'][name]}): "
            + ", ".join(
                f"{b} {'-' if v is None else f'{100 * v:.1f}'} / {100 * missed[b]:.0f}% missed"
                if b in missed
                else f"{b} -"
                for b, v in row.items()
            )
        )
    return "\n".join(lines + [""] + [f"note: {n}" for n in result["notes"]]) + "\n"


def plot(result: dict, out: Path) -> list[Path]:
    """DETAD's three figures as PNG (matplotlib, no LaTeX)."""
    plt = pyplot()

    written = []
    fp, gain = result["false_positive"], result["mAP_N_gain_removing"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 2]})
    bottom = np.zeros(len(fp["per_k"]))
    for i, kind in enumerate(detad.ERROR_TYPES):
        heights = np.array([100 * row[kind] for row in fp["per_k"].values()])
        left.bar(list(fp["per_k"]), heights, bottom=bottom, color=COLORS[i], label=NAMES[kind])
        bottom += heights
    left.set(
        xlabel="top predictions", ylabel="error breakdown (%)", title="False positive profile", ylim=(0, 100)
    )
    left.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.15))
    bars = right.bar([NAMES[k] for k in gain], [100 * v for v in gain.values()], color=COLORS[1:])
    right.bar_label(bars, fmt="%.1f", fontsize=8)
    right.set(ylabel="average-mAP_N improvement (%)", title="Removing error impact")
    right.tick_params(axis="x", labelrotation=30, labelsize=8)
    written.append(_save(fig, out / "false_positive_analysis.png"))
    figures = (
        ("sensitivity", "sensitivity_analysis.png", "average-mAP_N (%)"),
        ("false_negative", "false_negative_analysis.png", "false negatives (%)"),
    )
    for key, file, label in figures:
        fig, ax = plt.subplots(figsize=(3 + 2.2 * len(result[key]), 3.6))
        x, ticks, names = 0, [], []
        for c, (name, row) in enumerate(result[key].items()):
            xs = np.arange(x, x + len(row))
            bars = ax.bar(
                xs, [np.nan if v is None else 100 * v for v in row.values()], color=f"C{c}", label=NAMES[name]
            )
            ax.bar_label(bars, fmt="%.1f", fontsize=7)
            ticks += list(xs)
            names += list(row)
            x += len(row) + 1
        if key == "sensitivity":
            ax.axhline(100 * result["average_mAP_N"], color="k", linestyle="--", linewidth=1)
        ax.set_xticks(ticks, names)
        ax.set(ylabel=label, ylim=(0, 100))
        ax.legend(fontsize=7)
        written.append(_save(fig, out / file))
    return written


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def request(settings: Settings | None, **given) -> dict:
    """run()'s arguments: the options given, else the settings' (infer.output, data.annotations,
    data.protocol, data.eval_subset); the output folder defaults to <stem>/diagnosis beside <stem>.json."""
    return files_request(settings, given, folder="diagnosis")


def run(ground_truth: Path, predictions: Path, *, dataset: str, subset: str | None = None, out: Path) -> dict:
    """Analyse and write diagnosis.json, diagnosis.md and the figures into `out` (`subset` unset:
    validation for anet; test, or testing, for thumos)."""
    written = {name: Path(out) / name for name in ("diagnosis.json", "diagnosis.md", *FIGURES)}
    if why := aliased_output(written, {"--ground-truth": ground_truth, "--predictions": predictions}):
        raise UserError(why)
    subset = subset or default_subset(Path(ground_truth), dataset)
    inputs = read_inputs(Path(ground_truth), Path(predictions), dataset, subset)
    try:
        ensure_writable_dir(Path(out))
    except OSError as exc:
        raise UserError(f"{out}: cannot write the output folder: {exc.strerror or exc}") from None
    result = {
        "subset": subset,
        "ground_truth": str(ground_truth),
        "predictions": str(predictions),
        **analyse(inputs, dataset),
    }
    write_json(Path(out) / "diagnosis.json", result)
    with atomic_output(Path(out) / "diagnosis.md") as tmp:
        tmp.write_text(markdown(result), encoding="utf-8")
    result["figures"] = [str(p) for p in plot(result, Path(out))]
    return result
