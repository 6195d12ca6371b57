"""Released checkpoints: the original ETAD layout (detector alone, and end to end with the mmaction2
backbone) loads as written, with and without DataParallel's prefix; unknown layouts are refused.
OpenTAD's layout: tests/model/test_opentad.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from stages.core.checkpoints import read_checkpoint
from stages.core.errors import UserError
from stages.model.detector import ETAD
from stages.model.encoder import build_encoder
from tests.helpers import assert_backbone_released, run_cli, snapshot


def _mlp(sizes: list[int], sigmoid: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(sizes) - 2 else [])
    return nn.Sequential(*layers, *([nn.Sigmoid()] if sigmoid else []))


def original_detector(in_dim: int = 512, roi: int = 24, stages: int = 3) -> nn.Module:
    """sming256/ETAD's `detector_model`, by its module names and shapes as the public code builds
    them (lib/models/detector/detector.py, feature.py, pem.py): weights only, no forward."""

    def conv_gn(c_in: int, c_out: int, k: int) -> nn.Sequential:
        conv = nn.Conv1d(c_in, c_out, k, padding=k // 2, groups=4, bias=False)
        return nn.Sequential(conv, nn.GroupNorm(16, c_out), nn.ReLU())

    feature = nn.Module()
    feature.layer1 = conv_gn(in_dim, 256, 3)
    feature.mem_f, feature.mem_b = nn.LSTM(256, 256), nn.LSTM(256, 256)
    feature.layer2_f, feature.layer2_b = conv_gn(256, 128, 3), conv_gn(256, 128, 3)
    feature.layer2_d, feature.layer3 = conv_gn(256, 256, 3), conv_gn(512, 256, 1)
    detector = nn.Module()
    detector.temporal_enhance = feature
    detector.tem = nn.Sequential(nn.Conv1d(256, 256, 3, padding=1, groups=4), nn.ReLU(), nn.Conv1d(256, 2, 1))
    detector.stage_conv = nn.ModuleList(
        nn.Sequential(nn.Conv1d(256, 256, 3, padding=1, groups=4), nn.ReLU()) for _ in range(stages)
    )
    pems = []
    for _ in range(stages):
        pem = nn.Module()
        pem.reduce_dim_before = nn.Sequential(nn.Conv1d(256, 128, 3, padding=1), nn.ReLU())
        pem.reduce_dim_ext = nn.Sequential(nn.Linear(128 * roi, 512), nn.ReLU())
        pem.iou_fc = _mlp([512, 128, 128, 128, 2], sigmoid=True)
        pem.cls_se_fc = _mlp([512, 128, 128, 128, 2], sigmoid=True)
        pem.reg_cw_fc = _mlp([512, 128, 128, 128, 2])
        pem.reg_s_fc = _mlp([128 * roi // 4, 512, 128, 128, 128, 1])
        pem.reg_e_fc = _mlp([128 * roi // 4, 512, 128, 128, 128, 1])
        pems.append(pem)
    detector.stage_pem = nn.ModuleList(pems)
    torch.manual_seed(3)
    for p in detector.parameters():
        nn.init.normal_(p, std=0.05)
    return detector


def _release(path, encoder: nn.Module | None = None, prefix: str = "", in_dim: int = 512) -> dict:
    """Save a checkpoint as the original release does: {"state_dict": model.state_dict()}."""
    original = original_detector(in_dim)
    state = {f"{prefix}base_detector.{k}": v for k, v in original.state_dict().items()}
    if encoder is not None:
        state.update(
            {f"{prefix}feature_extractor.model.backbone.{k}": v for k, v in encoder.state_dict().items()}
        )
    torch.save({"state_dict": state, "epoch": 5}, path)
    return original.state_dict()


@pytest.mark.parametrize("prefix", ["", "module."])
def test_the_original_detector_release_loads_into_the_same_places(tmp_path, prefix):
    original = _release(tmp_path / "feature_anet_tsp.pth.tar", prefix=prefix)
    state = read_checkpoint(tmp_path / "feature_anet_tsp.pth.tar")
    assert state["kind"] == "pretrain" and "encoder" not in state
    model = ETAD(512, 256, 24, 0.5, n_stages=3)
    model.load_state_dict(state["model"])  # strict: every key of both sides accounted for
    assert model.detector_parameters() == 10_343_450
    ours = model.state_dict()
    for theirs, mine in [  # read off the two codebases by hand
        ("temporal_enhance.mem_b.weight_hh_l0", "temporal.lstm_b.weight_hh_l0"),
        ("temporal_enhance.layer2_d.1.bias", "temporal.layer2_d.1.bias"),
        ("stage_conv.2.0.weight", "stages.2.residual.0.weight"),
        ("stage_pem.1.reduce_dim_ext.0.weight", "stages.1.fc.0.weight"),
        ("stage_pem.0.cls_se_fc.6.bias", "stages.0.se_head.6.bias"),
        ("stage_pem.2.reg_s_fc.8.weight", "stages.2.start_head.8.weight"),
        ("stage_pem.1.reg_e_fc.0.weight", "stages.1.end_head.0.weight"),
        ("tem.2.weight", "tem.2.weight"),
    ]:
        assert torch.equal(original[theirs], ours[mine]), (theirs, mine)


def test_the_original_end_to_end_release_brings_its_backbone(tmp_path):
    backbone = build_encoder("r2plus1d_34_tsp").backbone
    _release(tmp_path / "e2e.pth.tar", encoder=backbone, prefix="module.")
    assert_backbone_released(tmp_path / "e2e.pth.tar", backbone)


def test_other_layouts_are_refused_with_the_known_ones(tmp_path):
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(
        UserError, match=r"not a checkpoint layout etad knows \(etad, etad-original, opentad\)"
    ):
        read_checkpoint(tmp_path / "other.pth")


def test_infer_runs_a_release_and_its_conversion_alike(trained, tmp_path):

    root = tmp_path / "space"
    shutil.copytree(trained, root)
    release = root / "release.pth.tar"
    _release(release, in_dim=8)
    config = root / "tiny.yaml"
    common = ["-c", config, "--set", "infer.classifier=none"]
    first = run_cli("infer", *common, "--checkpoint", release, "--set", "infer.output=results/a.json")
    assert first.returncode == 0, first.stderr
    info = run_cli("checkpoint", "info", release)
    assert info.returncode == 0 and "etad-original" in info.stdout
    converted = root / "converted.pt"
    assert run_cli("checkpoint", "convert", release, converted).returncode == 0
    before = snapshot(root)
    again = run_cli("checkpoint", "convert", release, converted)  # never over an existing file
    assert again.returncode == 2 and "exists" in again.stderr and snapshot(root) == before
    second = run_cli("infer", *common, "--checkpoint", converted, "--set", "infer.output=results/b.json")
    assert second.returncode == 0, second.stderr
    a, b = (json.loads((root / "work" / "results" / f"{n}.json").read_text())["results"] for n in "ab")
    assert a == b and sum(len(v) for v in a.values()) > 0


def _crafted_checkpoint(path: Path, **changes) -> Path:
    state = {
        "format": "etad-checkpoint-1",
        "kind": "[/]",
        "epoch": 1,
        "classes": ["a"],
        "model": {"w": torch.zeros(2)},
        "encoder": {"v": torch.zeros(3)},
        "settings": {
            "model": {"variant": "[link=https://evil.example]original[/link]", "encoder": {"name": 5}}
        },
    }
    state.update(changes)
    torch.save(state, path)
    return path


def test_checkpoint_info_shows_crafted_fields_as_text_and_convert_checks_first(tmp_path, monkeypatch):
    path = _crafted_checkpoint(tmp_path / "crafted.pt")
    result = run_cli("checkpoint", "info", path)
    assert result.returncode == 0, result.stderr
    shown = " ".join(result.stdout.split())
    assert "[/]" in shown and "[link=https://evil.example]original[/link]" in shown and "5" in shown
    malformed = _crafted_checkpoint(tmp_path / "malformed.pt", settings="abc")
    target = tmp_path / "out" / "converted.pt"
    result = run_cli("checkpoint", "convert", malformed, target)
    assert result.returncode == 2 and "malformed checkpoint: 'settings' is str" in result.stderr
    assert not target.exists() and not target.parent.exists()

    def full_disk(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 1472 vs 1376")

    monkeypatch.setattr(torch, "save", full_disk)
    result = run_cli("checkpoint", "convert", path, target)
    assert result.returncode == 2 and "is the disk full?" in result.stderr
    assert not target.exists() and not list(target.parent.iterdir())  # no temporary left either
