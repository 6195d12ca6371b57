"""End-to-end gradients: the sequential-forward / sampled-backward iteration computes exactly the
gradient of plain back-propagation (restricted to the sampled snippets), in float64."""

import pytest
import torch

from stages.model.backward import Backward, e2e_gradients
from stages.model.detector import ETAD
from stages.model.encoder import SnippetEncoder
from stages.model.losses import detector_loss
from stages.model.sampling import sample_snippets
from stages.model.targets import boundary_targets, match_ground_truth, proposal_map
from stages.train_e2e import augment

T, CHUNK = 8, 2


CLIPS = {"tiny": (4, 16), "videomae_tiny": (8, 32)}  # encoder -> (frames, crop) of its clips here


def _setup(name: str = "tiny"):
    torch.manual_seed(0)
    encoder = SnippetEncoder(name, frozen_stages=-1, norm_eval=True).double()
    detector = ETAD(64, 64, 8, 0.5, n_stages=3).double()
    frames, crop = CLIPS[name]
    snippets = torch.randint(0, 255, (2, T, frames, crop, crop, 3), dtype=torch.uint8)
    anchors = proposal_map(T, T)[None].expand(2, -1, -1).double()
    gt = torch.tensor([[0.25, 0.5]])
    start, end = boundary_targets(gt, T)
    batch = {
        "gt_box": match_ground_truth(anchors[0], gt.double())[None].expand(2, -1, -1),
        "gt_start": start.double()[None].expand(2, -1),
        "gt_end": end.double()[None].expand(2, -1),
    }
    return encoder, detector, snippets, anchors, batch


def _grads(mode, ratio=1.0, seed=0, restrict=None, name="tiny"):
    encoder, detector, snippets, anchors, batch = _setup(name)
    encoder.train()

    def loss_fn(out):
        torch.manual_seed(123)  # the same negative sampling in every mode
        return detector_loss(out, batch, [0.7, 0.8, 0.9])

    if restrict is None:
        gen = torch.Generator().manual_seed(seed)
        e2e_gradients(
            mode,
            Backward(
                encoder,
                detector,
                snippets,
                loss_fn,
                anchors=anchors,
                chunk_size=CHUNK,
                ratio=ratio,
                sampling="random",
                generator=gen,
            ),
        )
    else:  # full back-propagation through the sampled snippets only (reference)
        feats = encoder(snippets.flatten(0, 1)).view(2, T, -1)
        mask = torch.zeros(2, T, 1, dtype=torch.bool)
        for v, picked in enumerate(restrict):
            mask[v, picked[picked >= 0]] = True
        feats = torch.where(mask, feats, feats.detach()).transpose(1, 2)
        loss_fn(detector(feats, anchors))["total"].backward()
    enc = torch.cat([p.grad.flatten() for p in encoder.parameters() if p.grad is not None])
    det = torch.cat([p.grad.flatten() for p in detector.parameters() if p.grad is not None])
    return enc, det


def test_sampled_ratio_one_equals_full_backprop():
    full_enc, full_det = _grads("full")
    enc, det = _grads("sampled", 1.0)
    assert full_enc.abs().sum() > 0
    torch.testing.assert_close(enc, full_enc, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(det, full_det, rtol=1e-9, atol=1e-12)


def test_checkpoint_mode_equals_full_backprop():
    full_enc, _ = _grads("full")
    enc, _ = _grads("checkpoint")
    torch.testing.assert_close(enc, full_enc, rtol=1e-9, atol=1e-12)


def test_frozen_mode_gives_the_detector_gradient_and_none_to_the_encoder():
    _, full_det = _grads("full")
    encoder, detector, snippets, anchors, batch = _setup()
    encoder.train()

    def loss_fn(out):
        torch.manual_seed(123)
        return detector_loss(out, batch, [0.7, 0.8, 0.9])

    e2e_gradients("frozen", Backward(encoder, detector, snippets, loss_fn, anchors=anchors, chunk_size=CHUNK))
    assert all(p.grad is None for p in encoder.parameters())
    det = torch.cat([p.grad.flatten() for p in detector.parameters() if p.grad is not None])
    torch.testing.assert_close(det, full_det, rtol=1e-9, atol=1e-12)


def test_sampled_ratio_below_one_equals_restricted_full_gradient():
    gen = torch.Generator().manual_seed(5)
    picks = [sample_snippets(T, 0.5, CHUNK, "random", generator=gen).flatten() for _ in range(2)]
    enc, _ = _grads("sampled", 0.5, seed=5)
    ref, _ = _grads("full", restrict=picks)
    full, _ = _grads("full")
    torch.testing.assert_close(enc, ref, rtol=1e-9, atol=1e-12)
    assert not torch.allclose(enc, full)  # the other snippets really are left out


def test_partial_backward_is_exact_for_a_transformer_encoder():
    """VideoMAE (LayerNorm, attention; the `hf` extra): sampled backward at ratio 1 is plain
    back-propagation, and below 1 it is back-propagation restricted to the sampled snippets."""
    pytest.importorskip("transformers", reason="the hf extra (transformers) is not installed")
    full, _ = _grads("full", name="videomae_tiny")
    enc, _ = _grads("sampled", 1.0, name="videomae_tiny")
    assert full.abs().sum() > 0
    torch.testing.assert_close(enc, full, rtol=1e-9, atol=1e-12)
    gen = torch.Generator().manual_seed(5)
    picks = [sample_snippets(T, 0.5, CHUNK, "random", generator=gen).flatten() for _ in range(2)]
    enc, _ = _grads("sampled", 0.5, seed=5, name="videomae_tiny")
    ref, _ = _grads("full", restrict=picks, name="videomae_tiny")
    torch.testing.assert_close(enc, ref, rtol=1e-9, atol=1e-12)
    assert not torch.allclose(enc, full)


def test_augment_draws_once_per_video():
    frame = torch.randint(
        0, 255, (1, 1, 24, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    clips = frame.expand(3, 4, -1, -1, -1).contiguous()  # 12 identical frames
    a = augment(clips, 16, torch.Generator().manual_seed(0))
    b = augment(clips, 16, torch.Generator().manual_seed(0))
    assert a.shape == (3, 4, 16, 16, 3) and a.dtype == torch.uint8 and torch.equal(a, b)
    assert all(
        torch.equal(a[i, j], a[0, 0]) for i in range(3) for j in range(4)
    )  # the same ops on every frame
    others = [augment(clips, 16, torch.Generator().manual_seed(s)) for s in range(1, 6)]
    assert all(not torch.equal(o[0, 0], a[0, 0]) for o in others)  # other videos, other draws
    assert len({tuple(o[0, 0].float().mean(dim=(0, 1)).tolist()) for o in others}) == 5
    with pytest.raises(Exception, match="crop size"):
        augment(clips, 40, torch.Generator())
