"""The ETAD detector (docs/method.md §3): LSTM-boosted temporal features, a start/end head (TEM),
and a cascade of proposal-evaluation stages on extended RoIAlign features.

Two variants share everything but the cascade stage and the TEM loss (VARIANTS): the original ETAD
(`ProposalStage` below) and OpenTAD's (stages/model/opentad.py).

Coordinates are normalised to [0, 1] of the video (or window) as in the original code. Anchors are
[B, K, 2] (start, end). With the ActivityNet recipe (512 input channels, hidden 256, RoI 24) the
layer sizes are exactly the original's and the detector has 10,343,450 parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from stages.model.classifier import ProposalClassifier, VideoClassifier
from stages.model.layers import GROUPS, NORM_GROUPS, conv_gn, mlp, parallel_mlps
from stages.model.losses import balanced_bce
from stages.model.opentad import SharedFCStage, mean_balanced_bce
from stages.model.roi import TapCache, binned_layers, inference_rows, proposal_taps, roi_features

if TYPE_CHECKING:  # the settings models, for type hints only
    from stages.core.settings import ModelSettings


class TemporalModule(nn.Module):
    """Conv -> forward and backward LSTMs -> three conv branches -> fused features [B, H, T]."""

    def __init__(self, in_channels: int, hidden: int) -> None:
        super().__init__()
        self.layer1 = conv_gn(in_channels, hidden, 3)
        self.lstm_f = nn.LSTM(hidden, hidden)
        self.lstm_b = nn.LSTM(hidden, hidden)
        self.layer2_f = conv_gn(hidden, hidden // 2, 3)
        self.layer2_b = conv_gn(hidden, hidden // 2, 3)
        self.layer2_d = conv_gn(hidden, hidden, 3)
        self.layer3 = conv_gn(2 * hidden, hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layer1(x)
        seq = h.permute(2, 0, 1)  # [T, B, H], sequence first
        h_f = self.lstm_f(seq)[0].permute(1, 2, 0)
        h_b = self.lstm_b(seq.flip(0))[0].flip(0).permute(1, 2, 0)
        fused = torch.cat([self.layer2_f(h_f), self.layer2_d(h), self.layer2_b(h_b)], dim=1)
        return self.layer3(fused)


def refine(anchors: torch.Tensor, reg: torch.Tensor) -> torch.Tensor:
    """Next-stage anchors: the mean of the start/end-offset and the centre/width refinements.

    reg[..., :6] = (start offset, end offset, centre offset, log width, start cls, end cls); offsets
    are in units of the anchor length. No clipping (as the original).
    """
    s, e = anchors[..., 0], anchors[..., 1]
    length = e - s
    s1, e1 = s + length * reg[..., 0], e + length * reg[..., 1]
    c2 = (s + e) / 2 + length * reg[..., 2]
    l2 = length * torch.exp(reg[..., 3])
    s2, e2 = c2 - l2 / 2, c2 + l2 / 2
    return torch.stack([(s1 + s2) / 2, (e1 + e2) / 2], dim=-1)


class ProposalStage(nn.Module):
    """One cascade stage of the original: its own residual conv, RoI features (aligned=False),
    IoU / boundary / regression heads, and start / end regressors on the context bins."""

    aligned = False

    def __init__(self, hidden: int, roi_size: int, extend_ratio: float, fc: int) -> None:
        super().__init__()
        reduced, head = hidden // 2, hidden // 2
        self.roi_size, self.extend_ratio = roi_size, extend_ratio
        self.context = roi_size // 4  # RoI bins of the context before the start / after the end
        self.residual = nn.Sequential(
            nn.Conv1d(hidden, hidden, 3, padding=1, groups=GROUPS), nn.ReLU(inplace=True)
        )
        self.reduce = nn.Sequential(nn.Conv1d(hidden, reduced, 3, padding=1), nn.ReLU(inplace=True))
        self.fc = nn.Sequential(nn.Linear(reduced * roi_size, fc), nn.ReLU(inplace=True))
        self.iou_head = mlp([fc, head, head, head, 2])
        self.se_head = mlp([fc, head, head, head, 2])
        self.cw_head = mlp([fc, head, head, head, 2])
        ctx = reduced * self.context
        self.start_head = mlp([ctx, fc, head, head, head, 1])
        self.end_head = mlp([ctx, fc, head, head, head, 1])
        self.roi_mode = "taps"  # or "roialign", the reference (tests and benchmarks)
        self.taps_cache = TapCache()

    def forward(
        self, x: torch.Tensor, anchors: torch.Tensor, *, pooled: bool = False, boundaries: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """x [B, H, T], anchors [B, K, 2] -> iou [B, K, 2] (cls, reg), reg [B, K, 6] (without
        `boundaries`: [B, K, 4], the boundary-classification head not run) and, with `pooled`, the
        pooled proposal features [B * K, fc] the heads read (for the per-proposal classifier; else
        None)."""
        b, k = anchors.shape[:2]
        feat = self.reduce(x + self.residual(x))
        heads = [self.iou_head, self.se_head if boundaries else None, self.cw_head]

        def outputs(z: torch.Tensor, rs: torch.Tensor, re: torch.Tensor) -> list[torch.Tensor]:
            iou, se, cw = parallel_mlps(z, heads)
            cw = cw / 2  # halved for smoother regression, as the original
            se = [] if se is None else [torch.sigmoid(se)]
            return [torch.cat([torch.sigmoid(iou), rs, re, cw, *se], dim=1), *([z] if pooled else [])]

        if self.roi_mode == "roialign":  # the reference: materialise RoI features, as the original
            rois = roi_features(feat, anchors, self.roi_size, self.extend_ratio)  # [BK, C, R]
            z = self.fc(rois.flatten(1))
            rs = self.start_head(rois[:, :, : self.context].flatten(1))
            both, *pooled_z = outputs(z, rs, self.end_head(rois[:, :, -self.context :].flatten(1)))
        else:  # the same numbers without the RoI tensor (stages/model/roi.py)
            taps = proposal_taps(
                anchors, feat.shape[2], self.roi_size, self.extend_ratio, cache=self.taps_cache
            )
            end = self.roi_size - self.context
            parts = [taps, taps.bins(0, self.context), taps.bins(end, self.context)]
            layers = [self.fc, self.start_head, self.end_head]
            both, *pooled_z = binned_layers(feat, parts, layers, outputs, rows=inference_rows())
        return (
            both[:, :2].reshape(b, k, 2),
            both[:, 2:].reshape(b, k, both.shape[1] - 2),
            pooled_z[0] if pooled else None,
        )


@dataclass(frozen=True)
class Variant:
    """A published form of the detector: its cascade stage and its TEM loss."""

    stage: Callable[[int, int, float, int], nn.Module]  # (hidden, roi size, extend ratio, fc width)
    tem_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    source: str


# The variants (`model.variant`).
VARIANTS: dict[str, Variant] = {
    "original": Variant(ProposalStage, balanced_bce, "sming256/ETAD (CVPR 2023 release)"),
    "opentad": Variant(SharedFCStage, mean_balanced_bce, "sming256/OpenTAD configs/etad"),
}


class ETAD(nn.Module):
    def __init__(
        self,
        in_channels: int = 512,
        hidden: int = 256,
        roi_size: int = 24,
        extend_ratio: float = 0.5,
        *,
        n_stages: int = 3,
        n_classes: int = 0,
        variant: str = "original",
        fc_channels: int | None = None,
        classifier: str = "video",
    ) -> None:
        super().__init__()
        if in_channels % GROUPS or hidden % (2 * NORM_GROUPS):
            raise ValueError(
                f"in_channels must be a multiple of {GROUPS} and hidden_channels of {2 * NORM_GROUPS}"
            )
        self.temporal = TemporalModule(in_channels, hidden)
        self.tem = nn.Sequential(
            nn.Conv1d(hidden, hidden, 3, padding=1, groups=GROUPS),
            nn.ReLU(inplace=True),
            nn.Conv1d(hidden, 2, 1),
        )
        make_stage, fc = VARIANTS[variant].stage, fc_channels or 2 * hidden
        self.variant = variant
        self.stages = nn.ModuleList(make_stage(hidden, roi_size, extend_ratio, fc) for _ in range(n_stages))
        self.classifier: VideoClassifier | ProposalClassifier | None = None
        if n_classes and classifier == "video":
            self.classifier = VideoClassifier(in_channels, hidden, n_classes)
        elif n_classes and classifier == "proposal":
            self.classifier = ProposalClassifier(fc, hidden, n_classes)
        elif n_classes:
            raise ValueError(f"unknown classifier head {classifier!r} (video or proposal)")
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform weights and zero bias for every conv and linear layer (LSTM/GN: defaults)."""
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if isinstance(self.classifier, ProposalClassifier):
            self.classifier.reset_prior()

    def detector_parameters(self) -> int:
        """Parameter count without the optional classifier (the original's count)."""
        extra = sum(p.numel() for p in self.classifier.parameters()) if self.classifier is not None else 0
        return sum(p.numel() for p in self.parameters()) - extra

    def forward(self, features: torch.Tensor, anchors: torch.Tensor, *, boundaries: bool = True) -> dict:
        """features [B, C, T], anchors [B, K, 2] -> tem [B, 2, T] probabilities; per stage the anchors
        it evaluated, iou [B, K, 2] and reg [B, K, 6]; with a head, class logits: video-level
        "classes" [B, n], or per proposal "proposal_classes" [B, K, n] (read from the first stage,
        whose anchors are the given ones: those the training targets were matched to).
        `boundaries=False` (test time, which never reads them): the stages' boundary-classification
        heads are not run, a fifth of their arithmetic, and reg is [B, K, 4]."""
        x = self.temporal(features)
        out: dict = {"tem": torch.sigmoid(self.tem(x)), "anchors": [], "iou": [], "reg": []}
        for index, stage in enumerate(self.stages):
            classify = index == 0 and isinstance(self.classifier, ProposalClassifier)
            iou, reg, pooled = stage(x, anchors, pooled=classify, boundaries=boundaries)
            if classify:
                out["proposal_classes"] = self.classifier(pooled).view(*anchors.shape[:2], -1)
            out["anchors"].append(anchors)
            out["iou"].append(iou)
            out["reg"].append(reg)
            anchors = refine(anchors, reg.detach())
        if isinstance(self.classifier, VideoClassifier):
            out["classes"] = self.classifier(features)
        return out


def final_proposals(out: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Test-time output: each stage's refined anchors and IoU scores, averaged over stages."""
    proposals = torch.stack([refine(a, r) for a, r in zip(out["anchors"], out["reg"])]).mean(dim=0)
    return proposals, torch.stack(out["iou"]).mean(dim=0)


def build_detector(model_settings: ModelSettings, n_classes: int = 0) -> ETAD:
    m = model_settings
    return ETAD(
        m.in_channels,
        m.hidden_channels,
        m.roi_size,
        m.extend_ratio,
        n_stages=len(m.stage_iou_thresholds),
        n_classes=n_classes if m.classifier_head else 0,
        variant=m.variant,
        fc_channels=m.fc_channels,
        classifier=m.classifier,
    )
