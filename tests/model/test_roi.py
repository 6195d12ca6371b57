"""The proposal head without the RoI tensor equals the torchvision RoIAlign reference: taps,
outputs and gradients, on random proposals that reach outside the video or have zero length."""

from __future__ import annotations

import copy

import pytest
import torch

from stages.model.detector import ETAD
from stages.model.roi import extend_anchors, roi_features, roi_taps
from stages.model.targets import proposal_map


def _random_anchors(b: int, k: int, generator: torch.Generator) -> torch.Tensor:
    start = torch.rand(b, k, generator=generator) * 1.6 - 0.3  # some start before 0 or after 1
    length = torch.rand(b, k, generator=generator) * 0.9
    length[:, : k // 8] = 0.0  # zero-length proposals
    return torch.stack([start, start + length], dim=-1)


@pytest.mark.parametrize("aligned", [False, True], ids=["original", "aligned"])
@pytest.mark.parametrize("t", [16, 100, 128])
def test_taps_rebuild_roi_align(t, aligned):
    generator = torch.Generator().manual_seed(t)
    features = torch.randn(1, 5, t, generator=generator)
    anchors = _random_anchors(1, 300, generator)
    anchors[0, 1] = anchors[0, 1].flip(0)  # one reversed proposal
    reference = roi_features(features, anchors, 24, 0.5, aligned=aligned)  # [K, C, R]
    taps = roi_taps(extend_anchors(anchors[0], 0.5) * t, t, 24, aligned=aligned)
    torch.testing.assert_close(
        torch.einsum("krt,ct->kcr", taps.as_dense(), features[0]), reference, atol=2e-6, rtol=1e-5
    )
    part = taps.bins(18, 6)  # the end bins
    torch.testing.assert_close(
        torch.einsum("krt,ct->kcr", part.as_dense(), features[0]), reference[..., 18:], atol=2e-6, rtol=1e-5
    )


def _pair(variant: str = "original") -> tuple[ETAD, ETAD]:
    torch.manual_seed(0)
    fast = ETAD(16, 32, 8, 0.5, n_stages=3, n_classes=0, variant=variant)
    reference = copy.deepcopy(fast)
    for stage in reference.stages:
        stage.roi_mode = "roialign"
    return fast, reference


def _run(model: ETAD, features: torch.Tensor, anchors: torch.Tensor) -> tuple[dict, dict]:
    features = features.clone().requires_grad_(True)
    out = model(features, anchors)
    loss = sum(
        (o.double() * (i + 1) / 7).sin().sum() for i, o in enumerate([out["tem"], *out["iou"], *out["reg"]])
    )
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    grads["features"] = features.grad
    return out, grads


@pytest.mark.parametrize("variant", ["original", "opentad"])
def test_fast_head_outputs_and_gradients_equal_the_reference(variant):
    fast, reference = _pair(variant)
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(3, 16, 40, generator=generator)
    anchors = _random_anchors(3, 200, generator)
    out_f, grad_f = _run(fast, features, anchors)
    out_r, grad_r = _run(reference, features, anchors)
    for key in ("iou", "reg", "anchors"):
        for a, b in zip(out_f[key], out_r[key]):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert grad_f.keys() == grad_r.keys() and len(grad_f) > 30
    for name in grad_f:
        torch.testing.assert_close(grad_f[name], grad_r[name], atol=1e-4, rtol=1e-3, msg=name)


@pytest.mark.parametrize("variant", ["original", "opentad"])
def test_shared_test_time_proposals_are_computed_once_and_give_the_same_outputs(variant):
    fast, reference = _pair(variant)
    features = torch.randn(4, 16, 32)
    grid = proposal_map(32, 32)[None].expand(4, -1, -1)  # as `etad infer` passes them
    with torch.no_grad():
        out_f, out_r = fast(features, grid), reference(features, grid)
        again = fast(features, grid)
    assert len(fast.stages[0].taps_cache.entries) == 1  # stage 1: the fixed map, cached (all heads)
    assert not fast.stages[1].taps_cache.entries  # refined proposals differ per video
    for a, b, c in zip(out_f["iou"], out_r["iou"], again["iou"]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
        assert torch.equal(a, c)
