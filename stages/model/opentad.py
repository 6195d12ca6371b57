"""OpenTAD's variant of the ETAD proposal stage and TEM loss (docs/method.md, "two variants").

OpenTAD (sming256/OpenTAD, configs/etad/*.py) keeps the original's temporal module and TEM with the
same layers, and changes the cascade stage: no per-stage residual conv and no channel reduction,
RoIAlign with aligned=True (roi 16) straight on the temporal features, one shared FC
(hidden x roi -> feat, ReLU) and three heads of 3 FCs of hidden / 2 each: IoU (2), boundary
classification (2) and regression (4: start, end, centre, log width; not halved). Coordinates are
in snippet units there and normalised here; RoIAlign reads the same time steps and the regression
is relative to the anchor length, so the numbers are the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stages.model.layers import mlp, parallel_mlps
from stages.model.roi import TapCache, binned_layers, inference_rows, proposal_taps, roi_features


class SharedFCStage(nn.Module):
    """One OpenTAD cascade stage: iou [B, K, 2] and reg [B, K, 6] = (start, end, centre, log width,
    start cls, end cls), the layout of the original's stage."""

    aligned = True

    def __init__(self, hidden: int, roi_size: int, extend_ratio: float, fc_channels: int) -> None:
        super().__init__()
        self.roi_size, self.extend_ratio = roi_size, extend_ratio
        head = hidden // 2
        self.fc = nn.Sequential(nn.Linear(hidden * roi_size, fc_channels), nn.ReLU(inplace=True))
        self.iou_head = mlp([fc_channels, head, head, head, 2])
        self.se_head = mlp([fc_channels, head, head, head, 2])
        self.reg_head = mlp([fc_channels, head, head, head, 4])
        self.roi_mode = "taps"  # or "roialign", the reference (tests and benchmarks)
        self.taps_cache = TapCache()

    def forward(
        self, x: torch.Tensor, anchors: torch.Tensor, *, pooled: bool = False, boundaries: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """As the original's stage: iou, reg (without `boundaries` its first four columns only)
        and, with `pooled`, the pooled proposal features."""
        b, k = anchors.shape[:2]
        heads = [self.iou_head, self.reg_head, self.se_head if boundaries else None]  # the order as ever

        def outputs(z: torch.Tensor) -> list[torch.Tensor]:
            iou, reg, se = parallel_mlps(z, heads)
            se = [] if se is None else [torch.sigmoid(se)]
            return [torch.cat([torch.sigmoid(iou), reg, *se], dim=1), *([z] if pooled else [])]

        if self.roi_mode == "roialign":
            rois = roi_features(x, anchors, self.roi_size, self.extend_ratio, aligned=True)
            both, *pooled_z = outputs(self.fc(rois.flatten(1)))
        else:  # stages/model/roi.py
            taps = proposal_taps(
                anchors, x.shape[2], self.roi_size, self.extend_ratio, cache=self.taps_cache, aligned=True
            )
            both, *pooled_z = binned_layers(x, [taps], [self.fc], outputs, rows=inference_rows())
        return (
            both[:, :2].reshape(b, k, 2),
            both[:, 2:].reshape(b, k, both.shape[1] - 2),
            pooled_z[0] if pooled else None,
        )


def mean_balanced_bce(p: torch.Tensor, y: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """OpenTAD's TEM loss: BCE (log clamped at -100, as F.binary_cross_entropy) with positives and
    negatives weighted to contribute equally; with only one kind present, the plain mean BCE."""
    p, y = p.flatten().float(), y.flatten()
    pos = (y > threshold).float()
    with torch.autocast(p.device.type, enabled=False):  # BCE refuses to run under autocast
        loss = F.binary_cross_entropy(p, pos, reduction="none")
    n_pos, n = pos.sum(), float(p.numel())
    if n_pos == 0 or n_pos == n:
        return loss.mean()
    weight = 0.5 * n / n_pos * pos + 0.5 * n / (n - n_pos) * (1.0 - pos)
    return (weight * loss).mean()
