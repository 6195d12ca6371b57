"""Building blocks both detector variants use (stages/model/detector.py, stages/model/opentad.py)."""

from __future__ import annotations

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
