"""OpenTAD's variant of ETAD: its released key layout loads into the `opentad` variant and gives the
outputs that OpenTAD's model computes from the same weights; the parameter count its configs give;
its TEM loss and post-processing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from stages.core.checkpoints import read_checkpoint
from stages.core.errors import UserError
from stages.core.settings import InferSettings
from stages.evaluation.postprocess import POST_PROCESSING, boundary_mask_opentad, soft_nms_opentad
from stages.model.detector import ETAD, final_proposals
from stages.model.encoder import build_encoder
from stages.model.opentad import mean_balanced_bce
from stages.model.targets import proposal_map
from tests.helpers import assert_backbone_released, run_cli


class ConvModule(nn.Module):
    """OpenTAD's bricks.ConvModule by its attribute names: conv, then optional norm and ReLU."""

    def __init__(self, c_in: int, c_out: int, k: int, groups: int = 1, norm: bool = False, act: bool = True):
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, k, padding=k // 2, groups=groups, bias=not norm)
        self.norm = nn.GroupNorm(16, c_out) if norm else None
        self.act = act

    def forward(self, x):
        x = self.conv(x)
        x = self.norm(x) if self.norm is not None else x
        return F.relu(x) if self.act else x


class FCHead(nn.Module):
    def __init__(self, c_in: int, c_out: int, fcs: int = 3, width: int = 128):
        super().__init__()
        self.fcs = nn.Sequential(
            *[nn.Sequential(nn.Linear(c_in if i == 0 else width, width), nn.ReLU()) for i in range(fcs)]
        )
        self.head = nn.Linear(width, c_out)

    def forward(self, x):
        return self.head(self.fcs(x))


def opentad_model(in_dim: int, feat: int, roi: int = 16, stages: int = 3) -> nn.Module:
    """OpenTAD's ETAD (configs/_base_/models/etad.py: ConvSingleProj, LSTMNeck,
    TemporalEvaluationHead(shared), ETADRoIHead with ETADHead), by module names and shapes."""
    m = nn.Module()
    m.projection = nn.Module()
    m.projection.convs = nn.ModuleList([ConvModule(in_dim, 256, 3, groups=4, norm=True)])
    m.neck = nn.Module()
    m.neck.mem_f, m.neck.mem_b = nn.LSTM(256, 256), nn.LSTM(256, 256)
    m.neck.layer2_f = ConvModule(256, 128, 3, groups=4, norm=True)
    m.neck.layer2_b = ConvModule(256, 128, 3, groups=4, norm=True)
    m.neck.layer2_d = ConvModule(256, 256, 3, groups=4, norm=True)
    m.neck.layer3 = ConvModule(512, 256, 1, groups=4, norm=True)
    m.rpn_head = nn.Module()
    m.rpn_head.tem = nn.Sequential(ConvModule(256, 256, 3, groups=4), ConvModule(256, 2, 1, act=False))
    m.roi_head = nn.Module()
    heads = []
    for _ in range(stages):
        head = nn.Module()
        head.shared_conv_fc = nn.Module()
        head.shared_conv_fc.fcs = nn.Sequential(nn.Sequential(nn.Linear(256 * roi, feat), nn.ReLU()))
        head.iou_head, head.se_head, head.reg_head = FCHead(feat, 2), FCHead(feat, 2), FCHead(feat, 4)
        heads.append(head)
    m.roi_head.proposal_heads = nn.ModuleList(heads)
    torch.manual_seed(5)
    for p in m.parameters():
        nn.init.normal_(p, std=0.05)
    return m


@torch.no_grad()
def opentad_forward(m: nn.Module, x: torch.Tensor, dscale: int, roi: int = 16) -> tuple:
    """OpenTAD's forward_test, in its own snippet units: (tem [B,2,T], proposals [B,K,2], iou)."""
    x = m.projection.convs[0](x)
    seq = x.permute(2, 0, 1)
    f = m.neck.layer2_f(m.neck.mem_f(seq)[0].permute(1, 2, 0))
    b = m.neck.layer2_b(m.neck.mem_b(seq.flip(0))[0].flip(0).permute(1, 2, 0))
    x = m.neck.layer3(torch.cat([f, m.neck.layer2_d(x), b], dim=1))
    tem = torch.sigmoid(m.rpn_head.tem(x))
    bs, t = x.shape[0], x.shape[2]
    anchors = (proposal_map(t, dscale) * t)[None].repeat(bs, 1, 1)  # snippet units
    proposals, scores = [], []
    for head in m.roi_head.proposal_heads:
        length = anchors[..., 1] - anchors[..., 0]
        ext = torch.stack([anchors[..., 0] - 0.5 * length, anchors[..., 1] + 0.5 * length], dim=-1)
        idx = torch.arange(bs).repeat_interleave(anchors.shape[1]).float()
        flat = ext.reshape(-1, 2)
        boxes = torch.stack([idx, torch.zeros_like(idx), flat[:, 0], torch.ones_like(idx), flat[:, 1]], 1)
        feats = roi_align(x.unsqueeze(3), boxes, (roi, 1), aligned=True).squeeze(-1)
        z = head.shared_conv_fc.fcs(feats.flatten(1))
        iou = torch.sigmoid(head.iou_head(z)).view(bs, -1, 2)
        reg = head.reg_head(z).view(bs, -1, 4)
        cen, ln = (anchors[..., 0] + anchors[..., 1]) / 2, length
        len1 = ln + ln * (reg[..., 1] - reg[..., 0])
        cen1 = cen + ln * (reg[..., 0] + reg[..., 1]) / 2
        cen2, len2 = cen + reg[..., 2] * ln, ln * torch.exp(reg[..., 3])
        anchors = torch.stack(
            [(cen1 - len1 / 2 + cen2 - len2 / 2) / 2, (cen1 + len1 / 2 + cen2 + len2 / 2) / 2], dim=-1
        )
        proposals.append(anchors)
        scores.append(iou)
    return tem, torch.stack(proposals, -1).mean(-1), torch.stack(scores, -1).mean(-1)


def _save(path, model: nn.Module, *, ema: bool = False, backbone: nn.Module | None = None) -> None:
    """As OpenTAD's save_checkpoint under DDP: module.-prefixed keys, optimizer and scheduler states."""
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    if backbone is not None:
        state.update({f"module.backbone.model.backbone.{k}": v for k, v in backbone.state_dict().items()})
    saved = {"epoch": 5, "state_dict": state, "optimizer": {}, "scheduler": {}}
    if ema:
        saved["state_dict_ema"] = {k: v + 1.0 for k, v in state.items()}
    torch.save(saved, path)


@pytest.mark.parametrize("in_dim, feat, dscale", [(512, 512, 128), (2048, 256, 64)], ids=["anet", "thumos"])
def test_an_opentad_release_gives_opentads_outputs(tmp_path, in_dim, feat, dscale):
    theirs = opentad_model(in_dim, feat)
    _save(tmp_path / "epoch_5.pth", theirs)
    state = read_checkpoint(tmp_path / "epoch_5.pth")
    m = state["settings"]["model"]
    assert (m["variant"], m["in_channels"], m["roi_size"], m["fc_channels"]) == ("opentad", in_dim, 16, feat)
    ours = ETAD(in_dim, 256, 16, 0.5, n_stages=3, n_classes=0, variant="opentad", fc_channels=feat)
    ours.load_state_dict(state["model"])  # strict
    ours.eval()
    t = 32
    x = torch.randn(2, in_dim, t, generator=torch.Generator().manual_seed(0))
    tem, proposals, iou = opentad_forward(theirs, x, dscale)
    with torch.no_grad():
        out = ours(x, proposal_map(t, dscale)[None].expand(2, -1, -1))
    mine, my_iou = final_proposals(out)
    torch.testing.assert_close(out["tem"], tem, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(mine * t, proposals, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(my_iou, iou, atol=1e-5, rtol=1e-4)


def test_the_ema_weights_are_used_when_present(tmp_path):
    theirs = opentad_model(512, 512)
    _save(tmp_path / "ema.pth", theirs, ema=True)
    state = read_checkpoint(tmp_path / "ema.pth")
    expected = theirs.state_dict()["neck.layer3.norm.bias"] + 1.0
    assert torch.equal(state["model"]["temporal.layer3.1.bias"], expected)


def test_an_opentad_end_to_end_release_brings_its_backbone(tmp_path):
    backbone = build_encoder("r2plus1d_34_tsp").backbone
    _save(tmp_path / "e2e.pth", opentad_model(512, 512), backbone=backbone)
    assert_backbone_released(tmp_path / "e2e.pth", backbone)


def test_an_opentad_file_with_unknown_parts_is_refused(tmp_path):
    torch.save({"state_dict": {"module.neck.lstm.weight": torch.zeros(1)}}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="key.s. of no known part.*neck.lstm.weight"):
        read_checkpoint(tmp_path / "other.pth")


def _count(in_dim: int, feat: int, roi: int = 16, hidden: int = 256, fcs: int = 128) -> int:
    """The parameter count of configs/_base_/models/etad.py, layer by layer, by hand."""
    conv = lambda c_in, c_out, k, groups, bias: c_out * c_in // groups * k + (c_out if bias else 0)  # noqa: E731
    gn = lambda c: 2 * c  # noqa: E731
    lstm = 4 * hidden * (hidden + hidden) + 8 * hidden
    projection = conv(in_dim, hidden, 3, 4, False) + gn(hidden)
    neck = 2 * lstm + 2 * (conv(hidden, hidden // 2, 3, 4, False) + gn(hidden // 2))
    neck += conv(hidden, hidden, 3, 4, False) + gn(hidden)
    neck += conv(2 * hidden, hidden, 1, 4, False) + gn(hidden)
    tem = conv(hidden, hidden, 3, 4, True) + conv(hidden, 2, 1, 1, True)
    fc_head = lambda out: (feat * fcs + fcs) + 2 * (fcs * fcs + fcs) + (fcs * out + out)  # noqa: E731
    stage = (hidden * roi * feat + feat) + fc_head(2) + fc_head(2) + fc_head(4)
    return projection + neck + tem + 3 * stage


def test_the_parameter_count_is_the_one_opentads_configs_give():
    anet = ETAD(512, 256, 16, 0.5, n_stages=3, n_classes=0, variant="opentad", fc_channels=512)
    thumos = ETAD(2048, 256, 16, 0.5, n_stages=3, n_classes=0, variant="opentad", fc_channels=256)
    assert anet.detector_parameters() == _count(512, 512) == 8_518_298  # "about 8.52 M"
    assert thumos.detector_parameters() == _count(2048, 256)
    assert sum(p.numel() for p in opentad_model(512, 512).parameters()) == 8_518_298


def test_opentads_tem_loss_is_plain_bce_when_one_kind_is_missing():
    p = torch.tensor([0.2, 0.7, 0.9, 0.4])
    all_negative = torch.zeros(4)
    assert torch.isclose(mean_balanced_bce(p, all_negative), F.binary_cross_entropy(p, all_negative))
    y = torch.tensor([1.0, 0.0, 0.0, 0.0])  # 1 positive: weight 2, 3 negatives: weight 2/3
    by_hand = (2 * -np.log(0.2) + 2 / 3 * (-np.log(0.3) - np.log(0.1) - np.log(0.6))) / 4
    assert abs(float(mean_balanced_bce(p, y)) - by_hand) < 1e-5
    assert torch.isfinite(mean_balanced_bce(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0])))


def test_opentad_soft_nms_min_score_and_voting_by_hand():
    segs = np.array([[0.0, 10.0], [0.0, 9.0], [20.0, 30.0], [50.0, 60.0]])
    scores = np.array([0.9, 0.8, 0.5, 0.00005])
    out, kept, idx = soft_nms_opentad(segs, scores, 0.3, 10, min_score=1e-4)
    iou = 9 / (10 + 1e-6 + 9 + 1e-6 - 9)
    assert list(idx) == [0, 2, 1]  # the last one is below the minimum score; disjoint ones keep theirs
    np.testing.assert_allclose(kept, [0.9, 0.5, 0.8 * np.exp(-(iou**2) / 0.3)])
    voted, _, _ = soft_nms_opentad(segs, scores, 0.3, 10, min_score=1e-4, voting=0.85)
    np.testing.assert_allclose(voted[0], (0.9 * segs[0] + 0.8 * segs[1]) / 1.7)  # IoU 0.9 >= 0.85
    np.testing.assert_allclose(voted[1], segs[2])
    assert len(soft_nms_opentad(segs, scores, 0.3, 2, min_score=1e-4)[0]) == 2


def test_opentad_boundary_peaks_are_not_strict():
    p = np.array([0.1, 0.3, 0.3, 0.05, 0.2, 0.9])
    assert boundary_mask_opentad(p).tolist() == [False, True, True, False, False, True]


def test_opentad_post_processing_labels_windows_before_merging_them():
    inf = InferSettings(post_processing="opentad", soft_nms_sigma=0.3, top_k=200, min_score=1e-4)
    classes = [("A", 0.8), ("B", 0.5)]
    window_1 = (np.array([[1.0, 5.0]]), np.array([0.9]), [classes])
    window_2 = (np.array([[1.0, 5.0], [7.0, 8.0]]), np.array([0.6, 0.4]), [classes, classes])
    detections = POST_PROCESSING["opentad"].video(inf, [window_1, window_2])
    # six labelled segments go through one class-agnostic Soft-NMS: the best copy keeps its score,
    # every other copy of the same segment (IoU 1) decays by exp(-1 / 0.3)
    best = max(detections, key=lambda d: d["score"])
    assert best == {"label": "A", "score": 0.72, "segment": [1.0, 5.0]}
    decay = np.exp(-1 / 0.3)
    second = sorted(d["score"] for d in detections if d["segment"] == [1.0, 5.0])[-2]
    assert second == round(0.6 * 0.8 * decay, 4)  # window 2, label A
    assert {d["label"] for d in detections if d["segment"] == [7.0, 8.0]} == {"A", "B"}
    original = POST_PROCESSING["original"].video(InferSettings(), [window_1, window_2])
    assert len(original) == 2 * len({tuple(d["segment"]) for d in original})  # labels after merging


def test_infer_runs_an_opentad_release(trained, tmp_path):
    import shutil

    root = tmp_path / "space"
    shutil.copytree(trained, root)
    model = opentad_model(8, 64)
    _save(root / "opentad.pth", model)
    config = root / "tiny.yaml"
    done = run_cli(
        "infer",
        "-c",
        config,
        "--checkpoint",
        root / "opentad.pth",
        "--set",
        "infer.classifier=none",
        "--set",
        "infer.post_processing=opentad",
        "--set",
        "infer.min_score=0.0001",
    )
    assert done.returncode == 0, done.stderr
    results = json.loads((root / "work" / "results" / "detections.json").read_text())["results"]
    scores = [d["score"] for dets in results.values() for d in dets]
    assert scores and min(scores) >= 1e-4 and all(round(s, 4) == s for s in scores)
    info = run_cli("checkpoint", "info", root / "opentad.pth")
    assert info.returncode == 0 and "opentad" in info.stdout
