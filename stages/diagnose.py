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

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from stages.core.errors import UserError
from stages.core.files import atomic_output, ensure_writable_dir, write_json
from stages.core.workdir import output_path
from stages.data.annotations import load_annotations, read_json, unsafe_id_reason
from stages.evaluation import detad
from stages.evaluation.detections import read_predictions

if TYPE_CHECKING:  # the settings models, for type hints only
    from stages.core.settings import Settings

DATASETS = tuple(detad.BINS)
NAMES = {  # what the tables and figures call the characteristics and error types
    "coverage": "Coverage", "length": "Length", "num-instances": "# Instances",
    "context-size": "Context Size",
    "context-distance": "Context Distance", "agreement": "Agreement",
    "true_positive": "True Positive", "double_detection": "Double Detection", "wrong_label": "Wrong Label",
    "localization": "Localization", "confusion": "Confusion", "background": "Background",
}  # fmt: skip
COLORS = ["#33a02c", "#b2df8a", "#1f78b4", "#fb9a99", "#e31a1c", "#a6cee3"]  # DETAD's, by error type


@dataclass
class Inputs:
    """The analysed ground truth and predictions, with the codes that name them."""

    truth: detad.Truth
    pred: detad.Predictions
    classes: list[str]
    videos: list[str]  # video codes -> ids (the truth's first, then predictions' other videos)
    bins: dict[str, list[str]]  # the characteristics analysed -> their bucket names
    source: dict[str, str]  # characteristic -> "file" or "computed"
    notes: list[str] = field(default_factory=list)


def default_subset(path: Path, dataset: str) -> str:
    """DETAD's subset: ActivityNet's validation; THUMOS-14's test (named `test` or `testing`)."""
    if dataset != "thumos":
        return "validation"
    held = {(r.subset or "").lower() for r in load_annotations(path, require_duration=False).values()}
    return next((s for s in ("test", "testing") if s in held), "test")


def read_inputs(ground_truth: Path, predictions: Path, dataset: str, subset: str) -> Inputs:
    """Ground truth of `subset` with its characteristics, and the predictions coded alike; bad
    input (unknown labels, another dataset's file, no ground truth in the subset) is one line."""
    if dataset not in DATASETS:
        raise UserError(f"--dataset {dataset}: expected one of {', '.join(DATASETS)}")
    records = load_annotations(ground_truth, require_duration=False)  # ids, segments and numbers checked
    raw = read_json(ground_truth, "annotation file")
    database = raw["database"] if isinstance(raw, dict) and isinstance(raw.get("database"), dict) else raw
    wanted = {k: r for k, r in records.items() if (r.subset or "").lower() == subset.lower()}
    if not wanted:
        held = sorted({r.subset for r in records.values() if r.subset})
        raise UserError(
            f"{ground_truth}: no video in subset {subset!r} (subsets: {', '.join(held) or 'none'})"
        )
    videos, rows = list(wanted), []
    for code, (video_id, record) in enumerate(wanted.items()):
        extra = database[video_id].get("annotations") or []
        for i, seg in enumerate(record.segments):
            if not (math.isfinite(seg.start) and math.isfinite(seg.end)):
                raise UserError(f"{ground_truth}: video {video_id!r} annotation {i}: segment is not finite")
            given = extra[i] if i < len(extra) else {}
            rows.append((code, seg.start, seg.end, seg.label, given, record.duration))
    if not rows:
        raise UserError(f"{ground_truth}: subset {subset!r} has no ground-truth instance")
    classes = list(dict.fromkeys(r[3] for r in rows))  # DETAD's class index: first appearance
    video = np.array([r[0] for r in rows])
    segments = np.array([(r[1], r[2]) for r in rows], dtype=float)
    values, source = _characteristics(ground_truth, dataset, rows, video=video, segments=segments,
                                      videos=videos)  # fmt: skip
    keep = (segments[:, 0] < segments[:, 1]) & (values["coverage"] <= 1.0)  # as DETAD leaves out
    bins = {name: detad.BINS[dataset][name][1] for name in values}
    label = _codes([r[3] for r in rows], classes)
    buckets = {n: detad.bucket(v[keep], detad.BINS[dataset][n][0]) for n, v in values.items()}
    truth = detad.Truth(video=video[keep], segments=segments[keep], label=label[keep],
                        n_classes=len(classes), buckets=buckets)  # fmt: skip
    notes = [f"{int((~keep).sum())} ground-truth instance(s) of zero length or covering more than their "
             "video left out, as DETAD leaves them out"] if (~keep).any() else []  # fmt: skip
    pred = _predictions(predictions, classes, videos, subset)
    return Inputs(truth, pred, classes=classes, videos=videos, bins=bins, source=source, notes=notes)


def _codes(names: list[str], vocabulary: list[str]) -> np.ndarray:
    index = {name: i for i, name in enumerate(vocabulary)}
    return np.array([index[n] for n in names], dtype=np.int64)


def _characteristics(path: Path, dataset: str, rows: list, *, video: np.ndarray, segments: np.ndarray,
                     videos: list[str]) -> tuple[dict[str, np.ndarray], dict[str, str]]:  # fmt: skip
    """Each characteristic's value per instance: the file's where every instance carries it, else
    (length, coverage, number of instances) computed from the ground truth and the durations."""
    values, source = {}, {}
    for name in detad.BINS[dataset]:
        given = [r[4].get(name) if isinstance(r[4], dict) else None for r in rows]
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in given):
            values[name], source[name] = np.array(given, dtype=float), "file"
    missing = [n for n in detad.COMPUTED if n not in values]
    if missing:
        durations = np.array([np.nan if r[5] is None else r[5] for r in rows], dtype=float)
        if "coverage" in missing and not np.isfinite(durations).all():
            first = videos[int(video[~np.isfinite(durations)][0])]
            raise UserError(f"{path}: video {first!r} has no duration; coverage needs every video's "
                            "duration (or DETAD's characteristics in the file)")  # fmt: skip
        computed = detad.computed_characteristics(segments, video, durations)
        for name in missing:
            values[name], source[name] = computed[name], "computed"
    return {n: values[n] for n in detad.BINS[dataset] if n in values}, source


def _predictions(path: Path, classes: list[str], videos: list[str], subset: str) -> detad.Predictions:
    table = read_predictions(path)  # every segment and score finite and ordered, or one line
    known = {c: i for i, c in enumerate(classes)}
    unknown = sorted({label for label in table.labels if label not in known})
    if unknown:
        raise UserError(f"{path}: {len(unknown)} label(s) not among the ground truth's {len(classes)} "
                        f"classes of subset {subset!r} (first: {unknown[0][:60]!r}); a prediction file of "
                        "another dataset?")  # fmt: skip
    for video_id in dict.fromkeys(table.videos):  # the viewer names files after them
        if (reason := unsafe_id_reason(video_id)) is not None:
            raise UserError(f"{path}: video id {video_id[:80]!r} {reason}")
    code = {v: i for i, v in enumerate(videos)}
    if table.videos and not any(v in code for v in table.videos):
        raise UserError(
            f"{path}: no prediction is for a video of subset {subset!r}; another dataset or subset?"
        )
    for v in table.videos:  # videos without ground truth: their predictions are all background
        code.setdefault(v, len(code))
    return detad.Predictions(np.array([code[v] for v in table.videos], dtype=np.int64), table.segments,
                             np.array([known[label] for label in table.labels], dtype=np.int64),
                             np.asarray(table.scores, dtype=float))  # fmt: skip


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
        },  # fmt: skip
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
    line = (f"{100 * errors[common]:.1f}% of your top predictions are {NAMES[common].lower()} errors; "
            f"fixing {NAMES[costly].lower()} errors would add {100 * gain[costly]:.2f} "
            "average-mAP_N")  # fmt: skip
    return line + (
        f" (removing {NAMES[common].lower()} errors: {100 * gain[common]:+.2f})." if costly != common else "."
    )


def markdown(result: dict) -> str:
    fp, lines = result["false_positive"], []
    lines += [f"# Diagnosis ({result['dataset']}, DETAD)", "", headline(result), "",
              f"average-mAP_N {100 * result['average_mAP_N']:.2f} (top 10G per class: "
              f"{100 * fp['average_mAP_N_top10G']:.2f}); tIoU "
              f"{', '.join(f'{t:g}' for t in result['tiou_thresholds'])}", "",
              "## False positives (top 10G predictions per class)", "",
              "| | " + " | ".join(NAMES[k] for k in detad.ERROR_TYPES) + " |", "|---" * 7 + "|"]  # fmt: skip
    for name, row in [("all", fp["over_all"]), *fp["per_k"].items()]:
        lines.append(f"| {name} | " + " | ".join(f"{100 * row[k]:.1f}%" for k in detad.ERROR_TYPES) + " |")
    lines += ["", "| removing | " + " | ".join(NAMES[k] for k in result["mAP_N_gain_removing"]) + " |",
              "|---" * 6 + "|", "| average-mAP_N gain | "
              + " | ".join(f"{100 * v:+.2f}" for v in result["mAP_N_gain_removing"].values()) + " |", "",
              "## Sensitivity (average-mAP_N per bucket) and false negatives (share missed)", ""]  # fmt: skip
    for name, row in result["sensitivity"].items():
        missed = result["false_negative"].get(name, {})
        lines.append(f"- {NAMES[name]} ({result['characteristics'][name]}): " + ", ".join(
            f"{b} {'-' if v is None else f'{100 * v:.1f}'} / {100 * missed[b]:.0f}% missed" if b in missed
            else f"{b} -" for b, v in row.items()))  # fmt: skip
    return "\n".join(lines + [""] + [f"note: {n}" for n in result["notes"]]) + "\n"


def plot(result: dict, out: Path) -> list[Path]:
    """DETAD's three figures as PNG (matplotlib, no LaTeX)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    figures = (("sensitivity", "sensitivity_analysis.png", "average-mAP_N (%)"),
               ("false_negative", "false_negative_analysis.png", "false negatives (%)"))
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
    data.protocol, data.eval_subset); the output folder defaults to diagnosis/ beside the predictions."""
    given = {k: v for k, v in given.items() if v not in (None, "")}
    if settings is not None:
        d = settings.data
        defaults = {"predictions": output_path(settings), "ground_truth": d.annotations,
                    "dataset": d.protocol, "subset": d.eval_subset}  # fmt: skip
        given = {**{k: v for k, v in defaults.items() if v is not None}, **given}
    if given.get("predictions") is None or given.get("ground_truth") is None:
        raise UserError(
            "give --predictions and --ground-truth, or --config with infer.output and data.annotations"
        )
    given.setdefault("dataset", "anet")
    given.setdefault("out", Path(given["predictions"]).parent / "diagnosis")
    return given


def run(ground_truth: Path, predictions: Path, *, dataset: str, subset: str | None = None, out: Path) -> dict:
    """Analyse and write diagnosis.json, diagnosis.md and the figures into `out` (`subset` unset:
    validation for anet; test, or testing, for thumos)."""
    subset = subset or default_subset(Path(ground_truth), dataset)
    inputs = read_inputs(Path(ground_truth), Path(predictions), dataset, subset)
    try:
        ensure_writable_dir(Path(out))
    except OSError as exc:
        raise UserError(f"{out}: cannot write the output folder: {exc.strerror or exc}") from None
    result = {"subset": subset, "ground_truth": str(ground_truth), "predictions": str(predictions),
              **analyse(inputs, dataset)}  # fmt: skip
    write_json(Path(out) / "diagnosis.json", result)
    with atomic_output(Path(out) / "diagnosis.md") as tmp:
        tmp.write_text(markdown(result), encoding="utf-8")
    result["figures"] = [str(p) for p in plot(result, Path(out))]
    return result
