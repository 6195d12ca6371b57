"""Where every stage reads and writes under `work_dir`: the one description of a work folder.

frames/              etad extract       (<id>.npy + <id>.json per video)
cache/snippets/      etad cache --what snippets
cache/features/      etad cache --what features | --from-npy
pretrain/            etad train         (checkpoints/, metrics.jsonl)
e2e/                 etad train --e2e
encoder/             etad train --encoder (checkpoints/, metrics.jsonl, encoder_tsp.pth)
results/             etad infer         (infer.output)
study/               etad study         (points/<point>/seed<k>/work/ is each point's work folder)
logs/                every command: its settings and cost
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the settings models, for type hints only
    from stages.core.settings import Settings

RUN_KINDS = ("pretrain", "e2e")  # training runs; infer picks the newest of these by default


def frames_dir(settings: Settings) -> Path:
    return Path(settings.work_dir) / "frames"


def snippets_dir(settings: Settings) -> Path:
    return Path(settings.work_dir) / settings.cache.snippets_dir


def features_dir(settings: Settings) -> Path:
    return Path(settings.work_dir) / settings.cache.features_dir


def run_dir(settings: Settings, kind: str) -> Path:
    """The folder of a training run: pretrain/ (frozen features) or e2e/ (end to end)."""
    return Path(settings.work_dir) / kind


def last_checkpoint(settings: Settings, kind: str) -> Path:
    """The newest checkpoint of a training run (a hard link to its last epoch's file)."""
    return run_dir(settings, kind) / "checkpoints" / "last.pt"


def study_dir(settings: Settings) -> Path:
    """Where `etad study` puts a study unless --out says otherwise."""
    return Path(settings.work_dir) / "study"


def encoder_output(settings: Settings) -> Path:
    """encoder_train.output, the encoder `etad train --encoder` writes (relative to work_dir unless
    absolute)."""
    path = Path(settings.encoder_train.output)
    return path if path.is_absolute() else Path(settings.work_dir) / path


def output_path(settings: Settings) -> Path:
    """infer.output, relative to work_dir unless absolute."""
    path = Path(settings.infer.output)
    return path if path.is_absolute() else Path(settings.work_dir) / path


def beside_output(predictions: Path, kind: str) -> Path:
    """Where a model's plots, diagnosis and view go: a folder named for its detections file
    (results/e2e.json -> results/e2e/<kind>), so that two models' outputs live side by side."""
    predictions = Path(predictions)
    return predictions.parent / predictions.stem / kind
