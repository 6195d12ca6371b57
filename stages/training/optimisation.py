"""The optimiser of a training run."""

from __future__ import annotations

import torch


def make_optimizer(groups: list[dict], kind: str, weight_decay: float) -> torch.optim.Optimizer:
    cls = torch.optim.AdamW if kind == "adamw" else torch.optim.Adam
    return cls(groups, weight_decay=weight_decay)
