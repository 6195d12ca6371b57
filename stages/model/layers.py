"""Building blocks both detector variants use (stages/model/detector.py, stages/model/opentad.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

GROUPS = 4  # grouped 1-D convolutions everywhere in the temporal module
NORM_GROUPS = 16


def conv_gn(c_in: int, c_out: int, kernel: int) -> nn.Sequential:
    """Grouped conv (no bias) -> GroupNorm -> ReLU."""
    return nn.Sequential(
        nn.Conv1d(c_in, c_out, kernel, padding=kernel // 2, groups=GROUPS, bias=False),
        nn.GroupNorm(NORM_GROUPS, c_out),
        nn.ReLU(inplace=True),
    )


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def parallel_mlps(x: torch.Tensor, heads: list[nn.Sequential | None]) -> list[torch.Tensor | None]:
    """Each of `heads` (`mlp`s of three or more sizes; None: not run, its output None, for outputs
    the caller does not need) applied to the same x, in the order given; without gradients
    (inference), their first layers and ReLUs as one: one pass over x (the [proposals, fc]
    features) instead of one a head. A head's outputs are those of calling it alone to float
    rounding (bit for bit at the recipe's widths here: each column's sum is the same); the backward
    of the joint product would sum x's gradient in another order, and training's rounding, so its
    figures, would change."""
    if torch.is_grad_enabled():  # training: each head alone, so the gradients sum as they always have
        return [head(x) if head is not None else None for head in heads]
    first = [head[0] for head in heads if head is not None]
    weight, bias = torch.cat([f.weight for f in first]), torch.cat([f.bias for f in first])
    hidden = F.relu(F.linear(x, weight, bias), inplace=True)
    outs, start = [], 0
    for head in heads:
        width = head[0].out_features if head is not None else 0
        outs.append(head[2:](hidden[:, start : start + width]) if head is not None else None)
        start += width
    return outs
