"""How each command shows its result: rich tables built from the summaries the stages return."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table
from rich.text import Text

from etad_cli.console import EXIT_FAILED, console, err_console, print_notes, visible
from stages.core.files import human_bytes

SHOWN_FAILURES = 20  # failed videos listed on the terminal; failures.json has them all
MODEL_NAMES = {"pretrain": "frozen features", "e2e": "end to end", "finetune": "end to end"}


def synth_summary(summary) -> None:
    table = Table(title=f"synthetic dataset in {summary.out_dir}", show_header=False)
    pretraining = f", {summary.pretrain_videos} pretraining" if summary.pretrain_videos else ""
    table.add_row(
        "videos",
        f"{summary.videos + summary.pretrain_videos} ({summary.train_videos} training, "
        f"{summary.val_videos} validation{pretraining})",
    )
    table.add_row("written / already there", f"{summary.written} / {summary.skipped}")
    table.add_row("action instances", str(summary.instances))
    table.add_row("annotations", f"{summary.out_dir / 'anet.json'}, {summary.out_dir / 'thumos.json'}")
    console.print(table)


def per_video_summary(title: str, summary, frames: int | None = None) -> None:
    """extract and cache: what was done, skipped and failed."""
    table = Table(title=title, show_header=False)
    table.add_row(
        "videos done / already done / failed", f"{summary.done} / {summary.skipped} / {len(summary.failures)}"
    )
    if summary.missing:
        table.add_row("videos missing (data.missing: skip)", str(len(summary.missing)))
    if summary.shard.count > 1:
        table.add_row("shard", f"{summary.shard.index} of {summary.shard.count}")
    if frames is not None:
        table.add_row("frames written", f"{frames:,}")
        table.add_row("speed", f"{frames / max(summary.seconds, 1e-9):,.0f} frames/s")
    if getattr(summary, "frame_bytes", 0):
        table.add_row("frames stored", human_bytes(summary.frame_bytes))
    table.add_row("seconds", f"{summary.seconds:.1f}")
    console.print(table)
    print_notes(summary.notes)


def cache_projection(projection: dict, as_json: bool) -> None:
    """`etad cache --dry-run`: what a run would process and write, before it does."""
    if as_json:
        console.print_json(data=projection)
        return
    table = Table(title="etad cache --dry-run (nothing written)", show_header=False)
    counts = f"{projection['videos']:,} / {projection['cached']:,} / {projection['missing']:,}"
    table.add_row("videos (to do / already cached / missing)", counts)
    table.add_row("frames stored", f"{projection['frames']:,}")
    table.add_row("bytes per frame (measured)", f"{projection['bytes_per_frame']:,.0f}")
    if projection.get("measured"):
        low, median, high = projection["measured"]["bytes_per_frame"]
        table.add_row(
            f"  over {projection['measured']['videos']} videos (min / median / max)",
            f"{low:,.0f} / {median:,.0f} / {high:,.0f}",
        )
    table.add_row("projected disk", human_bytes(projection["projected_bytes"]))
    table.add_row("free disk", human_bytes(projection["free_bytes"]))
    seconds = projection["projected_seconds"]
    table.add_row(
        "projected time, one process", f"{seconds / 3600:,.2f} h" if seconds > 600 else f"{seconds:,.1f} s"
    )
    console.print(table)
    print_notes(projection["notes"])


def exit_on_failures(failures: list[dict], failures_file: Path) -> None:
    """List failed videos; exit code 1 says that the stage finished but some videos failed."""
    if not failures:
        return
    for failure in failures[:SHOWN_FAILURES]:
        line = visible(f"{failure['video_id']}: {failure['reason']}")
        err_console.print(Text.assemble(("failed", "red"), " ", line), soft_wrap=True)
    if len(failures) > SHOWN_FAILURES:
        err_console.print(f"... and {len(failures) - SHOWN_FAILURES:,} more", soft_wrap=True)
    err_console.print(f"{len(failures)} video(s) failed; listed in {failures_file}", soft_wrap=True)
    raise typer.Exit(EXIT_FAILED)


def training_summary(summary, title: str) -> None:
    table = Table(title=title)
    for column in ("epoch", "train loss", "val loss", "lr", "seconds"):
        table.add_column(column, justify="right")
    for e in summary.epochs:
        val = "-" if e["val_loss"] is None else f"{e['val_loss']:.4f}"
        table.add_row(str(e["epoch"]), f"{e['train_loss']:.4f}", val, f"{e['lr']:.2e}", f"{e['seconds']:.1f}")
    console.print(table)
    counted = "encoder and heads" if summary.kind == "encoder" else "detector"
    details = f"{counted} parameters: {summary.parameters:,}"
    if summary.peak_memory_mb:
        details += f"; peak GPU memory {summary.peak_memory_mb:,.0f} MiB"
    console.print(f"{details}\ncheckpoints: {summary.out_dir / 'checkpoints'} (last.pt, best.pt)")
    print_notes(summary.notes)


def infer_summary(summary, one_video: bool) -> None:
    console.print(f"checkpoint: {summary.checkpoint}", style="dim", soft_wrap=True)
    print_notes(summary.notes)
    if one_video:
        table = Table(title=f"{summary.output.stem}: top detections")
        for column in ("label", "score", "start (s)", "end (s)"):
            table.add_column(column, justify="right")
        for d in summary.top[:10]:
            table.add_row(d["label"], f"{d['score']:.3f}", f"{d['segment'][0]:.1f}", f"{d['segment'][1]:.1f}")
        console.print(table)
        console.print(f"{summary.detections} detections -> {summary.output}", soft_wrap=True)
        for path in summary.plots:
            console.print(f"plot: {path}", soft_wrap=True)
        return
    shard = summary.shard
    done = f"{summary.videos} videos, {summary.detections:,} detections, {summary.seconds:.1f} s"
    if shard.count > 1:
        state = (
            f"all {shard.count} parts merged -> {summary.output}"
            if summary.complete
            else (f"waiting for the other shards' parts before writing {summary.output}")
        )
        console.print(f"shard {shard.index}/{shard.count}: {done}; {state}", soft_wrap=True)
    else:
        console.print(f"{done} -> {summary.output}", soft_wrap=True)
    for path in summary.plots:
        console.print(f"plot: {path}", style="dim", soft_wrap=True)


def eval_report(report, per_class: bool = False) -> None:
    """The mAP (or recall) table of an EvalReport, its notes, and optionally per-class AP."""
    detection = report.task == "detection"
    table = Table(title=f"{report.task}: {report.counts.get('ground_truth_videos', 0)} videos")
    table.add_column("tIoU", justify="right")
    table.add_column("mAP (%)" if detection else "recall@100 (%)", justify="right")
    for tiou, value in zip(report.tious, report.values):
        table.add_row(f"{tiou:.2f}", f"{100 * value:.2f}")
    if detection:
        table.add_row("average", f"{100 * report.average:.2f}", style="bold")
        for name, value in report.recall_at.items():
            table.add_row(name, f"{100 * value:.2f}")
    else:
        for an, value in report.ar_at.items():
            table.add_row(f"AR@{an}", f"{100 * value:.2f}")
        table.add_row("AUC", f"{report.average:.2f}", style="bold")
    console.print(table)
    if per_class and report.per_class:
        # every tIoU where the terminal holds them whole, else the first and the average (all in --json)
        longest = max(len(label) for label in report.per_class)
        shown = range(len(report.tious)) if console.width >= longest + 8 * len(report.tious) + 16 else [0]
        classes = Table(title="AP per class (%)")
        classes.add_column("class", overflow="fold")
        for i in shown:
            classes.add_column(f"{report.tious[i]:.2f}", justify="right", no_wrap=True)
        classes.add_column("avg", justify="right", no_wrap=True)
        for label, values in report.per_class.items():
            classes.add_row(
                label, *(f"{100 * values[i]:.1f}" for i in shown), f"{100 * sum(values) / len(values):.1f}"
            )
        console.print(classes)
        if len(shown) < len(report.tious):
            console.print(
                "(the first tIoU and the average: a wider terminal or --json shows every tIoU)", style="dim"
            )
    print_notes(report.notes)


def run_report(work_dir: Path, runs: list[dict]) -> list[dict]:
    """`etad report`: the last run of each stage, then every evaluated model (returned)."""
    latest: dict[tuple, dict] = {}
    for r in runs:  # the last run of each stage (and of each infer output), in the order they finished
        key = (r["stage"], r.get("output"))
        latest.pop(key, None)
        latest[key] = r
    table = Table(title=f"stages: {work_dir}")
    for column in ("stage", "seconds", "peak RSS (MiB)", "output"):
        table.add_column(column, justify="left" if column in ("stage", "output") else "right")
    for r in latest.values():
        output = Path(r["output"]).name if r.get("output") else ""
        table.add_row(r["stage"], f"{r['seconds']:.1f}", f"{r['peak_rss_mib']:,.0f}", output)
    table.add_row("total", f"{sum(r['seconds'] for r in latest.values()):.1f}", "", "", style="bold")
    console.print(table)
    scored = [r for r in latest.values() if "average" in r]
    if not scored:
        return scored
    models = Table(
        title="evaluated models",
        caption="detection: average mAP over the tIoU thresholds and "
        "mAP at the first; proposals: AUC of AR@AN and AR@100 at the first",
        caption_justify="left",
    )
    for column in ("model", "output", "average", "first tIoU"):
        models.add_column(column, justify="left" if column in ("model", "output") else "right")
    for r in scored:
        name = MODEL_NAMES.get(r.get("kind", ""), r.get("kind", "?"))
        if r["task"] == "detection":
            values = f"{r['average']:.2%}", f"{r['first_tiou']:.2%}"
        else:
            values = f"AUC {r['average']:.2f}", f"{r['first_tiou']:.2%}"
        models.add_row(name, Path(r["output"]).name, *values)
    console.print(models)
    return scored


def curves_written(work_dir: Path, png: Path | None) -> None:
    if png is not None:
        console.print(f"curves: {png}", soft_wrap=True)
    if any(Path(work_dir).glob("**/tensorboard")):
        console.print(f"TensorBoard: tensorboard --logdir {work_dir}", soft_wrap=True)


def checkpoint_summary(path: Path, info: dict) -> None:
    table = Table(title=str(path), show_header=False)
    table.add_row("layout", str(info["layout"]))
    table.add_row("kind", f"{info['kind']} (epoch {info['epoch']})" if info["epoch"] else str(info["kind"]))
    for part, count in info["parameters"].items():
        table.add_row(f"{part} parameters", f"{count:,}")
    if info["encoder"]:
        table.add_row("encoder", str(info["encoder"]))
    table.add_row("model", ", ".join(f"{k} {v}" for k, v in info["model"].items() if v is not None))
    heads = {"video": "video-level head", "proposal": "per-proposal head"}
    head = f" ({heads.get(str(info.get('head')), str(info.get('head')))})" if info.get("head") else ""
    none = "none (label with infer.classifier: file)"
    table.add_row("classes", f"{info['classes']}{head}" if info["classes"] else none)
    console.print(table)


def encoder_table(rows: list[dict]) -> None:
    """`etad encoders`: the registry, one row per encoder."""
    # no rules and one space between columns: the seven columns fit 80 characters (a pipe, a log)
    # without cutting a number; only the formats column wraps where the terminal is narrower
    caption = (
        "clip: frames x crop (n: a multiple, +: at least); parameters '-': needs pip install "
        "'etad[hf]'; `etad encoders --json` says more"
    )
    table = Table(
        title="encoders (model.encoder.name)",
        caption=caption,
        caption_justify="left",
        box=None,
        padding=(0, 1, 0, 0),
    )
    for column in ("name", "family", "params", "width", "clip", "frozen", "formats"):
        table.add_column(
            column, justify="right" if column in ("params", "width") else "left", no_wrap=column != "formats"
        )
    for r in rows:
        count = f"{r['parameters'] / 1e6:.1f} M" if r["parameters"] is not None else "-"
        stages, formats = f"-1 .. {r['stages']}", ", ".join(r["checkpoint_formats"])
        table.add_row(r["name"], r["family"], count, str(r["width"]), r["clip_short"], stages, formats)
    console.print(table)


def annotations_table(report: dict) -> None:
    """`etad annotations check`: one column per subset, one row per count (a narrow terminal shows
    every word: subsets are few, counts are many)."""
    table = Table(title=f"{report['file']}: {report['classes']} classes")
    rows = {
        "videos": "videos",
        "instances": "instances",
        "unusable": "unusable",
        "classes": "classes",
        "zero_length": "zero length",
        "out_of_range": "outside",
        "overlapping": "overlapping",
        "no_duration": "no duration",
    }
    table.add_column("", no_wrap=True)
    for subset in report["subsets"]:
        table.add_column(subset, justify="right", overflow="fold")
    for key, name in rows.items():
        table.add_row(name, *(f"{row[key]:,}" for row in report["subsets"].values()))
    console.print(table)
    console.print(
        "unusable: not finite or ending before they start (not counted as instances); outside: "
        "outside [0, duration]; overlapping: pairs of one class overlapping in a video",
        style="dim",
        soft_wrap=False,
    )


def init_summary(summary) -> None:
    """`etad init`: what the videos hold, what was chosen, and the commands that follow."""
    p, config = summary.probed, summary.settings
    console.print(
        f"{p.videos} videos, median {p.duration:.1f} s at {p.fps:.3g} fps -> {config}", soft_wrap=True
    )
    console.print(
        f"train on {summary.subsets[0]!r}, evaluate on {summary.subsets[1]!r}; "
        f"classifier head: {summary.classifier}",
        soft_wrap=True,
    )
    steps = [
        "extract",
        "cache --what snippets",
        "train --encoder",
        "cache --what features",
        "train",
        "infer --eval",
        "view",
    ]
    console.print("next:", style="bold")
    for step in steps:
        console.print(Text(f"  etad {step} -c {config}"), soft_wrap=True)


def diagnose_hint(request, report) -> None:
    """After a detection score on a benchmark DETAD knows: the command that says what the errors are."""
    if report.task == "detection" and request.dataset in ("anet", "thumos"):
        hint = f"what the errors are: etad diagnose --dataset {request.dataset} "
        hint += f"-g {request.ground_truth} -p {request.predictions}"
        hint += f" --subset {request.subset}" if request.subset else ""
        console.print(hint, style="dim", soft_wrap=True)
