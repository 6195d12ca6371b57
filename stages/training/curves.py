"""Training curves: TensorBoard event files beside metrics.jsonl (when TensorBoard is installed,
`pip install etad[tensorboard]`), and PNG plots of the same records for `etad report` (always:
matplotlib is a dependency), so a run's curves can be looked at with or without TensorBoard."""

from __future__ import annotations

import json
import math
from pathlib import Path

from stages.core.files import atomic_output
from stages.core.plots import pyplot

LOSS_PARTS = ("total", "tem", "iou_cls", "iou_reg", "bnd_reg", "bnd_cls", "classifier")


class TensorBoard:
    """Scalars of each metrics record: a step's losses and learning rate under `train/`, an epoch's
    train and validation loss under `epoch/`, all against the optimizer step (so a resumed run,
    which purges the events after its checkpoint's step, never shows a step twice)."""

    def __init__(self, writer) -> None:
        self.writer = writer

    @classmethod
    def open(cls, folder: Path, purge_step: int | None) -> tuple[TensorBoard | None, str | None]:
        """(a writer into `folder`, None), or (None, why not) where TensorBoard is not installed or
        fails: an optional extra never stops a training run."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # torch's writer needs the tensorboard package
            return None, None
        except Exception as exc:  # installed but broken (a version clash raising at import)
            return (
                None,
                f"TensorBoard is installed but fails to import ({exc.__class__.__name__}: "
                f"{str(exc)[:100]}); metrics.jsonl and the PNG curves are written without it",
            )
        try:
            return cls(SummaryWriter(log_dir=str(folder), purge_step=purge_step)), None
        except Exception as exc:
            return (
                None,
                f"{folder}: TensorBoard cannot write ({exc.__class__.__name__}); curves go to "
                "metrics.jsonl only",
            )

    def write(self, record: dict, step: int) -> None:
        event = record.get("event")
        if event is None:
            scalars = {f"train/{k}": record[k] for k in (*LOSS_PARTS, "lr") if k in record}
        elif event == "epoch":
            scalars = {f"epoch/{k}": record[k] for k in ("train_loss", "val_loss", "lr", "items_per_s")}
        else:
            scalars = {}
        for tag, value in scalars.items():
            if isinstance(value, int | float) and math.isfinite(value):
                self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def read_metrics(path: Path) -> tuple[list[dict], list[dict]]:
    """(step records, epoch records) of a metrics.jsonl; a line cut by a kill is left out."""
    steps, epochs = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(record, dict):
            continue
        if record.get("event") is None and "step" in record:
            steps.append(record)
        elif record.get("event") == "epoch":
            epochs.append(record)
    return steps, epochs


def run_logs(work_dir: Path) -> dict[str, Path]:
    """Every training run's metrics.jsonl under a work folder (its runs, and one level below, as the
    demo's control/e2e), by the run's name; study points have their own work folders."""
    found = sorted(Path(work_dir).glob("*/metrics.jsonl")) + sorted(Path(work_dir).glob("*/*/metrics.jsonl"))
    return {str(p.parent.relative_to(work_dir)): p for p in found if "study" not in p.parts}


def plot_curves(work_dir: Path, scored: list[dict], out: Path) -> Path | None:
    """One PNG: per training run, its step loss and its epochs' train and validation loss; and the
    average mAP (or AUC) of every evaluated model. None when there is nothing to plot."""
    logs = run_logs(work_dir)
    if not logs and not scored:
        return None
    plt = pyplot()

    panels = len(logs) + bool(scored)
    fig, axes = plt.subplots(1, panels, figsize=(4.5 * panels, 3.4), squeeze=False)
    for ax, (name, path) in zip(axes[0], logs.items()):
        _plot_run(ax, name, *read_metrics(path))
    if scored:
        ax = axes[0][-1]
        names = [Path(r.get("output", "?")).stem for r in scored]
        values = [100 * r["average"] if r.get("task") == "detection" else r["average"] for r in scored]
        ax.bar(range(len(values)), values, color="tab:green")
        ax.set_xticks(range(len(values)), names, rotation=30, ha="right", fontsize=7)
        ax.set(title="evaluated models", ylabel="average mAP (%) / proposal AUC")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return out


def _plot_run(ax, name: str, steps: list[dict], epochs: list[dict]) -> None:
    if steps:
        ax.plot([r["step"] for r in steps], [r["total"] for r in steps], lw=0.8, alpha=0.6, label="step loss")
    per_epoch = max(1, steps[-1]["step"] // max(len(epochs), 1)) if steps else 1
    for key, style in (("train_loss", "o-"), ("val_loss", "s--")):
        points = [
            (r.get("at_step", r["epoch"] * per_epoch), r[key])
            for r in epochs
            if isinstance(r.get(key), int | float)
        ]
        if points:
            ax.plot(*zip(*points), style, ms=3, label=key.replace("_", " "))
    ax.set(title=name, xlabel="optimizer step", ylabel="loss")
    ax.legend(fontsize=7)
