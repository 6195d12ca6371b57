"""The detector's pure pieces against hand-computed values (spec sections 1.6, 3, 4, 5)."""

import math

import pytest
import torch

from stages.core.errors import TrainingDiverged
from stages.data.protocols import resize_features
from stages.model.classifier import VideoClassifier, refit
from stages.model.detector import ETAD, refine
from stages.model.losses import (
    balanced_bce,
    regression_targets,
    sampled_bce,
    sampled_l2,
    stage_loss,
)
from stages.model.roi import extend_anchors, roi_features
from stages.model.sampling import chunks_to_backprop, sample_proposals, sample_snippets
from stages.model.targets import aligned_iou, boundary_targets, match_ground_truth, pairwise_iou, proposal_map


def test_parameter_count_of_the_anet_recipe():
    # From the spec's layer list: temporal module 1,284,096 + TEM 49,922 + 3 stages x 3,003,144
    assert (
        ETAD(512, 256, 24, 0.5, n_stages=3).detector_parameters()
        == 1_284_096 + 49_922 + 3 * 3_003_144
        == 10_343_450
    )


def test_classifier_head_does_not_change_detector_outputs():
    torch.manual_seed(0)
    plain = ETAD(64, 64, 8, 0.5, n_stages=3)
    torch.manual_seed(0)
    with_head = ETAD(64, 64, 8, 0.5, n_stages=3, n_classes=5)
    with_head.load_state_dict(plain.state_dict(), strict=False)
    x, a = torch.randn(2, 64, 16), proposal_map(16, 16)[None].expand(2, -1, -1)
    a_out, b_out = plain(x, a), with_head(x, a)
    assert torch.equal(a_out["iou"][2], b_out["iou"][2]) and b_out["classes"].shape == (2, 5)


def test_proposal_map_counts_and_order():
    assert len(proposal_map(128, 128)) == 8256 and len(proposal_map(128, 64)) == 6176
    m = proposal_map(4, 4)
    assert m[0].tolist() == [0.0, 0.25] and m[4].tolist() == [0.0, 0.5] and m[-1].tolist() == [0.0, 1.0]


def test_boundary_targets_hand_values():
    start, end = boundary_targets(torch.tensor([[0.5, 0.75]]), 8)
    # start region [0.3125, 0.6875]: snippets 2 and 5 half covered, 3 and 4 fully
    assert start.tolist() == pytest.approx([0, 0, 0.5, 1, 1, 0.5, 0, 0])
    assert end.tolist() == pytest.approx([0, 0, 0, 0, 0.5, 1, 1, 0.5])
    assert boundary_targets(torch.zeros(0, 2), 4)[0].tolist() == [0, 0, 0, 0]


def test_iou_and_matching():
    a = torch.tensor([[0.0, 0.5], [0.5, 1.0]])
    g = torch.tensor([[0.25, 0.5], [0.5, 0.9]])
    assert pairwise_iou(a, g)[0].tolist() == pytest.approx([0.5, 0.0], abs=1e-5)
    assert aligned_iou(a, g).tolist() == pytest.approx([0.5, 0.8], abs=1e-5)
    assert match_ground_truth(a, g).tolist() == g.tolist()


def test_proposal_sampling_strategies():
    g = torch.Generator().manual_seed(0)
    random = sample_proposals(128, 128, "random", 0.06, generator=g)
    assert len(random) == 495 and len(set(random.tolist())) == 495
    assert len(sample_proposals(128, 128, "grid", 0.06)) == 496  # the spec's lattice count
    block = sample_proposals(128, 128, "block", 0.06, generator=g)
    assert len(block) == 495 and len(set(block.tolist())) == 495
    again = sample_proposals(128, 128, "random", 0.06, generator=torch.Generator().manual_seed(0))
    assert torch.equal(random, again)


def test_snippet_sampling_counts():
    assert [chunks_to_backprop(128, r, 4) for r in (0.1, 0.2, 0.3, 0.5, 1.0)] == [4, 7, 10, 16, 32]
    picked = sample_snippets(128, 0.3, 4, "random", generator=torch.Generator().manual_seed(1))
    assert picked.shape == (10, 4) and len(set(picked.flatten().tolist())) == 40
    assert sample_snippets(8, 1.0, 4, "uniform").flatten().tolist() == list(range(8))
    block = sample_snippets(128, 0.3, 4, "block", generator=torch.Generator().manual_seed(1)).flatten()
    assert torch.equal(block, torch.arange(block[0], block[0] + 40))


def test_extend_refine_and_roi_align():
    assert extend_anchors(torch.tensor([0.2, 0.6]), 0.5).tolist() == pytest.approx([0.0, 0.8], abs=1e-6)
    reg = torch.tensor([0.1, -0.1, 0.05, math.log(1.5), 0.0, 0.0])
    # s1 .24 e1 .56; centre .42 width .6 -> s2 .12 e2 .72; mean -> .18 .64
    assert refine(torch.tensor([0.2, 0.6]), reg).tolist() == pytest.approx([0.18, 0.64])
    feat = torch.arange(8.0).view(1, 1, 8)  # feature i sits at coordinate i (aligned=False)
    rois = roi_features(feat, torch.tensor([[[0.25, 0.5]]]), 2, 0.0)
    assert rois.flatten().tolist() == pytest.approx([2.5, 3.5])


def test_feature_resize_rule():
    x = torch.arange(4.0).repeat(3, 1).T.numpy()  # [T_orig=4, C=3]
    same = resize_features(x, 4)
    assert same[0].tolist() == pytest.approx([0, 1, 2, 3])  # T_orig == T: identity
    half = resize_features(torch.arange(8.0)[:, None].numpy(), 4)
    assert half[0].tolist() == pytest.approx([0.5, 2.5, 4.5, 6.5])  # mean of 2 samples per bin


def test_balanced_bce_hand_values():
    eps = 1e-6
    p, y = torch.tensor([0.8, 0.2]), torch.tensor([1.0, 0.0])
    assert float(balanced_bce(p, y)) == pytest.approx(-math.log(0.8 + eps))
    neg_only = balanced_bce(torch.tensor([0.2, 0.4]), torch.zeros(2))
    assert float(neg_only) == pytest.approx(-(math.log(0.8 + eps) + math.log(0.6 + eps)) / 2)
    pos_only = balanced_bce(torch.tensor([0.5, 0.25]), torch.ones(2))
    assert float(pos_only) == pytest.approx(-(math.log(0.5 + eps) + math.log(0.25 + eps)) / 2)


def test_sampled_losses_edge_cases():
    p = torch.tensor([0.1, 0.3, 0.6])
    # no positives: plain mean of log(1 - p)
    assert float(sampled_bce(p, torch.zeros(3), 0.9)) == pytest.approx(-torch.log(1 - p + 1e-6).mean().item())
    # no negatives: as the original (r = inf), every entry also takes the negative term
    both = torch.log(p + 1e-6).sum() + torch.log(1 - p + 1e-6).sum()
    assert float(sampled_bce(p, torch.ones(3), 0.5)) == pytest.approx(-both.item() / 6)
    # no high-IoU entries: plain MSE
    y = torch.tensor([0.2, 0.5, 0.1])
    assert float(sampled_l2(p, y)) == pytest.approx(((p - y) ** 2).mean().item())
    # all high: plain MSE over all of them
    y = torch.tensor([0.8, 0.9, 0.95])
    assert float(sampled_l2(p, y)) == pytest.approx(((p - y) ** 2).mean().item())


def test_regression_targets_and_stage_loss_without_positives():
    anchors, gt = torch.tensor([[0.2, 0.6]]), torch.tensor([[0.3, 0.7]])
    assert regression_targets(anchors, gt)[0].tolist() == pytest.approx([0.25, 0.25, 0.25, 0.0], abs=1e-5)
    iou, reg = torch.full((1, 1, 2), 0.5), torch.zeros(1, 1, 6, requires_grad=True)
    far = torch.tensor([[[0.0, 0.1]]])
    terms = stage_loss(
        iou,
        torch.sigmoid(reg),
        far,
        torch.tensor([[[0.8, 0.9]]]),
        gt_start=torch.zeros(1, 8),
        gt_end=torch.zeros(1, 8),
        positive_iou=0.7,
    )
    assert float(terms["bnd_reg"].detach()) == 0.0 and torch.isfinite(terms["total"])


def test_sampled_losses_with_mixed_positives_and_negatives_by_hand():
    eps = 1e-6
    # as many negatives as positives: every negative is kept (the keep threshold is 1 - 2/2 = 0)
    p, y = torch.tensor([0.9, 0.2, 0.4, 0.7]), torch.tensor([1.0, 0.0, 0.0, 1.0])
    by_hand = -(math.log(0.9 + eps) + math.log(0.8 + eps) + math.log(0.6 + eps) + math.log(0.7 + eps)) / 4
    assert float(sampled_bce(p, y, 0.5)) == pytest.approx(by_hand, rel=1e-6)
    # more positives than negatives: as the original, every entry (positives too) takes the negative term
    p, y = torch.tensor([0.9, 0.2, 0.6]), torch.tensor([1.0, 0.0, 1.0])
    pos = math.log(0.9 + eps) + math.log(0.6 + eps)
    neg = math.log(0.1 + eps) + math.log(0.8 + eps) + math.log(0.4 + eps)
    assert float(sampled_bce(p, y, 0.5)) == pytest.approx(-(pos + neg) / (2 + 3), rel=1e-6)
    # one entry per IoU bin (high > 0.7, mid, low <= 0.3): every entry kept, squared errors averaged
    p, y = torch.tensor([0.5, 0.5, 0.5]), torch.tensor([0.9, 0.5, 0.1])
    assert float(sampled_l2(p, y)) == pytest.approx((0.16 + 0.0 + 0.16) / 3, rel=1e-6)
    # two high, one mid, one low: r = 2 for both small bins, so (as the original) both masks cover
    # every entry and add up: weights 3, 3, 2, 2 on the errors 0.01, 0, 0.01, 0.04
    p, y = torch.tensor([1.0, 0.8, 0.4, 0.0]), torch.tensor([0.9, 0.8, 0.5, 0.2])
    assert float(sampled_l2(p, y)) == pytest.approx((3 * 0.01 + 0 + 2 * 0.01 + 2 * 0.04) / 10, rel=1e-5)


def test_forward_and_backward_lstm_branches_look_the_right_way():
    """The forward branch sees only the past, the backward branch only the future: swapping the
    LSTMs or the branches breaks this. (layer1, whose GroupNorm mixes time steps, is bypassed.)"""
    torch.manual_seed(0)
    temporal = ETAD(32, 32, 4, 0.5, n_stages=1).temporal.eval()
    temporal.layer1 = torch.nn.Identity()
    seen = {}
    temporal.layer2_f.register_forward_hook(lambda m, i, o: seen.__setitem__("f", i[0]))
    temporal.layer2_b.register_forward_hook(lambda m, i, o: seen.__setitem__("b", i[0]))
    x = torch.randn(1, 32, 20)
    with torch.no_grad():
        temporal(x)
        before = dict(seen)
        changed = x.clone()
        changed[:, :, 15:] += 1.0  # the future of t < 15
        temporal(changed)
    assert torch.equal(seen["f"][..., :15], before["f"][..., :15])
    assert not torch.allclose(seen["b"][..., :15], before["b"][..., :15])
    with torch.no_grad():
        changed = x.clone()
        changed[:, :, :5] += 1.0  # the past of t >= 5
        temporal(changed)
    assert torch.equal(seen["b"][..., 5:], before["b"][..., 5:])
    assert not torch.allclose(seen["f"][..., 5:], before["f"][..., 5:])


def test_start_and_end_heads_read_their_own_context():
    """reg[..., 0] (start) reads the RoI bins around the start, reg[..., 1] (end) those around the
    end: changing features near the start moves the first and not the second."""
    torch.manual_seed(0)
    stage = ETAD(8, 32, 8, 0.5, n_stages=1).stages[0].eval()
    anchors = torch.tensor([[[0.4, 0.6]]])  # extended to [0.3, 0.7]; the context is 2 of 8 bins each side
    x = torch.randn(1, 32, 100)
    changed = x.clone()
    changed[:, :, 31:34] += 3.0  # inside the start context [30, 35], far from the end context [65, 70]
    with torch.no_grad():
        _, reg, _ = stage(x, anchors)
        _, reg2, _ = stage(changed, anchors)
    assert not torch.allclose(reg[..., 0], reg2[..., 0])
    assert torch.allclose(reg[..., 1], reg2[..., 1])


def test_classifier_refit_fits_from_fresh_weights_reproducibly():
    torch.manual_seed(0)
    y = torch.arange(12) % 3
    x = torch.randn(12, 8, 5) + 3.0 * torch.nn.functional.one_hot(y, 8)[:, :, None]  # class k: channel k
    targets = torch.nn.functional.one_hot(y, 3).float()
    a, b = VideoClassifier(8, 16, 3), VideoClassifier(8, 16, 3)
    with torch.no_grad():
        b.net[0].weight.add_(1.0)  # other starting weights: the refit starts afresh anyway
    fit = refit(a, x, targets, 300, seed=5)
    assert fit["train_accuracy"] == 1.0 and fit["loss"] < 0.1
    refit(b, x, targets, 300, seed=5)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    refit(b, x, targets, 300, seed=6)
    assert not torch.equal(a.net[0].weight, b.net[0].weight)
    x[0, 0, 0] = float("nan")
    with pytest.raises(TrainingDiverged, match="classifier refit, step 1"):
        refit(a, x, targets, 10, seed=5)
