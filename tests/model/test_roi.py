"""The proposal head without the RoI tensor equals the torchvision RoIAlign reference: taps,
outputs and gradients, on random proposals that reach outside the video or have zero length."""

from __future__ import annotations

import copy

import pytest
import torch

from stages.model import roi
from stages.model.detector import ETAD
from stages.model.layers import mlp, parallel_mlps
from stages.model.roi import TapCache, binned_layers, extend_anchors, proposal_taps, roi_features, roi_taps
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


def test_reused_taps_and_proposals_a_chunk_at_a_time_give_the_same_sums_bit_for_bit():
    """The fixed map's taps, cached: laid out in the proposals' order; fresh taps: in the groups'
    order; at inference both without the taps of zero weight (training keeps every tap). All at once
    and in the proposals' order (training), or a chunk of proposals at a time with the results put
    back after (inference, `rows`): every way gives the same sums to the last bit."""
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(2, 16, 64, generator=generator)
    fc = torch.nn.Sequential(torch.nn.Linear(16 * 8, 24), torch.nn.ReLU())
    context = torch.nn.Sequential(torch.nn.Linear(16 * 2, 5))  # the last two bins (as the end head)
    grid = proposal_map(64, 64)[None].expand(2, -1, -1)
    reused = proposal_taps(grid, 64, 8, 0.5, cache=TapCache())
    fresh, every = (proposal_taps(grid.contiguous(), 64, 8, 0.5) for _ in range(2))
    assert reused.bags.order is None and every.bags.order is not None  # every: laid out with gradients

    def run(taps, rows: int | None) -> list[torch.Tensor]:
        return binned_layers(features, [taps, taps.bins(6, 2)], [fc, context], lambda z, c: [z, c], rows=rows)

    with torch.no_grad():
        assert len(fresh.bags.rows) == len(reused.bags.rows) < 0.9 * len(every.bags.rows)  # zeros left out
        assert fresh.bags.rows.dtype == reused.bags.offsets.dtype == torch.int32
        expected = run(every, None)
        for taps in (reused, fresh, every):
            for rows in (None, 7, 1000, 10**6):
                assert all(torch.equal(a, b) for a, b in zip(run(taps, rows), expected)), rows
    trained = run(every, None)
    assert trained[0].requires_grad and all(torch.equal(a, b) for a, b in zip(trained, expected))


@pytest.mark.parametrize("variant", ["original", "opentad"])
def test_inference_skips_the_boundary_head_and_takes_proposals_a_chunk_at_a_time(variant, monkeypatch):
    """At test time (`boundaries=False`, no gradients) the boundary-classification columns, which
    post-processing never reads, are not computed; the rest, a few proposals at a time, is the
    training path's numbers (all at once, each head alone) to float rounding (bit for bit at the
    recipe's widths here: infer_speed's detections; at these small ones the matrix products take
    other kernels)."""
    fast, _ = _pair(variant)
    generator = torch.Generator().manual_seed(5)
    features = torch.randn(3, 16, 40, generator=generator)
    anchors = _random_anchors(3, 200, generator)
    with torch.no_grad():
        full = fast(features, anchors)
        monkeypatch.setattr(roi, "INFERENCE_ROWS", 37)  # 600 proposals: 17 chunks
        lean = fast(features, anchors, boundaries=False)
    trained = fast(features, anchors)
    assert [tuple(r.shape) for r in lean["reg"]] == [(3, 200, 4)] * 3
    for key in ("iou", "reg", "anchors"):
        for a, b, c in zip(full[key], lean[key], trained[key]):
            torch.testing.assert_close(a[..., : b.shape[-1]], b, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(c[..., : b.shape[-1]].detach(), b, rtol=1e-5, atol=1e-5)


def test_heads_run_together_at_inference_and_alone_in_training_with_the_same_outputs():
    """Together: one matrix product of another width, so the same sums to float rounding (bit for
    bit at the recipe's widths on the development machine: docs/benchmarks.md); alone in training,
    the very same calls as each head by itself."""
    torch.manual_seed(0)
    heads = [mlp([20, 8, 8, 2]), mlp([20, 8, 8, 8, 1]), mlp([20, 6, 3])]
    x = torch.randn(50, 20)
    alone = [head(x) for head in heads]
    with torch.no_grad():
        together = parallel_mlps(x, heads)
    for a, b in zip(alone, together):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    trained = parallel_mlps(x, heads)  # with gradients: each head alone (their backward as ever)
    assert all(torch.equal(a, b) for a, b in zip(alone, trained)) and trained[0].requires_grad


@pytest.mark.parametrize("variant", ["original", "opentad"])
def test_no_proposals_give_empty_outputs_in_training_and_at_inference(variant):
    fast, _ = _pair(variant)
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            out = fast(torch.randn(1, 16, 20), torch.zeros(1, 0, 2))
        assert [tuple(o.shape) for o in out["iou"]] == [(1, 0, 2)] * 3
        assert [tuple(o.shape) for o in out["reg"]] == [(1, 0, 6)] * 3
