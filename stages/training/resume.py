"""What a resumed run must share with the run it continues: the settings that change what it learns
(RESUME_SAME), checked against last.pt's record, and the state it restores."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from stages.core.checkpoints import load_checkpoint, load_weights
from stages.core.errors import UserError

if TYPE_CHECKING:  # for type hints only
    from stages.core.settings import Settings
    from stages.training.loop import Run

SECTIONS = {"pretrain": "train", "e2e": "e2e", "encoder": "encoder_train"}  # a Job's kind -> its settings


def restore(run: Run) -> int:
    """Load last.pt into the job (weights, optimizer, schedule, generators); the epoch to start at."""
    path = run.ckpt_dir / "last.pt"
    if not path.is_file():
        run.summary.notes.append(f"--resume: no {path} yet, starting from scratch")
        return 0
    state = load_checkpoint(path)
    job = run.job
    if state.get("kind") != job.kind:
        raise UserError(f"{path}: a {state.get('kind')} checkpoint, cannot resume {job.kind}")
    _same_settings(path, state, run.settings, SECTIONS[job.kind])
    began_on = state.get("inputs")
    if isinstance(began_on, dict) and job.inputs and (differs := job.inputs.differences(began_on, "then")):
        raise UserError(
            f"{path}: the run began on inputs made with other settings: {differs}; --resume "
            "continues a run only on the inputs it began with (or pass --restart)"
        )
    for name, module in job.modules.items():
        load_weights(module, state, path, name)
    job.optimizer.load_state_dict(state["optimizer"])
    job.scheduler.load_state_dict(state["scheduler"])
    if state.get("scaler"):
        run.precision.scaler.load_state_dict(state["scaler"])
    run.best = float(state.get("best", run.best))
    began_with = state.get("threads")
    if run.device.type == "cpu" and began_with and began_with != torch.get_num_threads():
        run.summary.notes.append(
            f"resumed with {torch.get_num_threads()} CPU threads, the run began with {began_with}: CPU "
            "kernels split sums by thread, so the weights will not be bitwise an uninterrupted run's "
            "(set `threads`)"
        )
    run.summary.resumed_from = int(state["epoch"])
    return run.summary.resumed_from


# what a resumed run must share with the run it continues: the inputs (data) and how it optimises
# (the optimizer's state only fits its own optimizer and parameter groups; a checkpoint records one
# set of settings for the whole run). `epochs` may grow: the schedule steps every lr_step epochs.
RESUME_SAME = {
    "data": (
        "protocol",
        "fps",
        "frame_height",
        "frame_width",
        "snippet_length",
        "snippet_stride",
        "temporal_scale",
        "window_overlap",
    ),
    "optimisation": (
        "optimizer",
        "lr",
        "weight_decay",
        "batch_size",
        "accumulate",
        "lr_step",
        "lr_gamma",
        "grad_clip",
        "amp",
        "encoder_lr",
    ),
    "model.encoder": ("name", "frozen_stages"),
}


def _same_settings(path: Path, state: dict, settings: Settings, section: str) -> None:
    """Refuse --resume with settings that change the inputs or the optimisation the run began with."""
    began = state.get("settings") if isinstance(state.get("settings"), dict) else {}
    now = settings.model_dump(mode="json")
    for group, keys in RESUME_SAME.items():
        name = section if group == "optimisation" else group
        then_values, now_values = began, now
        for part in name.split("."):
            then_values = then_values.get(part) if isinstance(then_values, dict) else None
            now_values = now_values.get(part) if isinstance(now_values, dict) else None
        if not isinstance(then_values, dict) or not isinstance(now_values, dict):
            continue  # an older checkpoint without this section
        for key in keys:
            if key in then_values and key in now_values and then_values[key] != now_values[key]:
                raise UserError(
                    f"{path}: the run began with {name}.{key}={then_values[key]}, the settings now say "
                    f"{now_values[key]}; --resume continues a run only with the inputs and optimisation "
                    "it began with (or pass --restart)"
                )
