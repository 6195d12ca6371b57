"""The per-proposal classifier head (`model.classifier: proposal`): targets, loss, head, settings."""

import pytest
import torch
import torch.nn.functional as F

from stages.core.errors import UserError
from stages.core.settings_file import load_settings
from stages.model.classifier import ProposalClassifier, VideoClassifier
from stages.model.detector import ETAD
from stages.model.losses import detector_loss, proposal_class_loss
from stages.model.targets import CLASS_SLOTS, proposal_classes, proposal_map


def test_proposal_classes_are_those_of_the_instances_it_overlaps_best_first():
    anchors = torch.tensor([[0.0, 0.5], [0.1, 0.4], [0.6, 1.0], [0.45, 0.55]])
    gt = torch.tensor([[0.0, 0.4], [0.0, 0.5], [0.6, 0.9]])
    classes = torch.tensor([2, 5, 1])
    slots = proposal_classes(anchors, gt, classes)
    assert slots.shape == (4, CLASS_SLOTS)
    # [0, 0.5]: IoU 1.0 with class 5, 0.8 with class 2 (both >= 0.5), 0 with class 1
    assert slots[0].tolist() == [5, 2, -1, -1]
    # [0.1, 0.4]: 0.75 with class 2, 0.6 with class 5
    assert slots[1].tolist() == [2, 5, -1, -1]
    assert slots[2].tolist() == [1, -1, -1, -1]  # IoU 0.75
    assert slots[3].tolist() == [-1] * CLASS_SLOTS  # background: overlaps nothing by half
    assert proposal_classes(anchors, torch.zeros(0, 2), torch.zeros(0, dtype=torch.long)).eq(-1).all()


def test_proposal_class_loss_is_the_bce_of_the_positive_anchors_only():
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 4)
    slots = torch.tensor([[[1, 3, -1, -1], [-1, -1, -1, -1], [0, -1, -1, -1]]])
    target = torch.tensor([[0.0, 1.0, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    expected = F.binary_cross_entropy_with_logits(logits[0, [0, 2]], target, reduction="sum") / 2
    assert proposal_class_loss(logits, slots) == pytest.approx(float(expected))
    # anchor 1 is background: its logits take no gradient
    logits.requires_grad_(True)
    proposal_class_loss(logits, slots).backward()
    assert logits.grad[0, 1].abs().sum() == 0 and logits.grad[0, 0].abs().sum() > 0
    none = torch.full((1, 3, CLASS_SLOTS), -1)
    assert proposal_class_loss(logits, none) == 0


def test_the_proposal_head_reads_the_first_stages_pooled_features_and_trains_them():
    torch.manual_seed(0)
    model = ETAD(16, 32, 8, 0.5, n_stages=2, n_classes=5, classifier="proposal")
    assert isinstance(model.classifier, ProposalClassifier) and model.classifier.net[0].in_features == 64
    # prior 1/5 per class at the start, not 1/2
    assert torch.sigmoid(model.classifier.net[-1].bias).tolist() == pytest.approx([0.2] * 5)
    features, anchors = torch.randn(2, 16, 12), proposal_map(12, 12)[None].expand(2, -1, -1)
    out = model(features, anchors)
    assert "classes" not in out and out["proposal_classes"].shape == (2, len(anchors[0]), 5)
    # a proposal's classes depend on its own RoI: another anchor order gives the same rows reordered
    flipped = model(features, anchors.flip(1))["proposal_classes"]
    torch.testing.assert_close(flipped, out["proposal_classes"].flip(1))
    # its loss reaches the temporal module (unlike the video head, whose input is detached)
    slots = torch.full((2, len(anchors[0]), CLASS_SLOTS), -1)
    slots[:, :10, 0] = 3
    proposal_class_loss(out["proposal_classes"], slots).backward()
    assert model.temporal.layer1[0].weight.grad.abs().sum() > 0
    # the detector itself is the same size with either head (the head is extra)
    video = ETAD(16, 32, 8, 0.5, n_stages=2, n_classes=5)
    assert isinstance(video.classifier, VideoClassifier)
    assert model.detector_parameters() == video.detector_parameters()


def test_detector_loss_adds_the_proposal_term_under_the_classifier_name():
    torch.manual_seed(0)
    model = ETAD(16, 32, 8, 0.5, n_stages=1, n_classes=3, classifier="proposal")
    anchors = proposal_map(8, 8)[None]
    out = model(torch.randn(1, 16, 8), anchors)
    gt = torch.tensor([[0.25, 0.75]])
    batch = {
        "gt_start": torch.zeros(1, 8),
        "gt_end": torch.zeros(1, 8),
        "gt_box": gt.expand(1, len(anchors[0]), 2),
        "proposal_classes": proposal_classes(anchors[0], gt, torch.tensor([2]))[None],
    }
    with torch.no_grad():
        terms = detector_loss(out, batch, [0.7])
        alone = proposal_class_loss(out["proposal_classes"], batch["proposal_classes"])
    assert float(terms["classifier"]) == pytest.approx(float(alone))
    assert float(terms["classifier"]) > 0 and "classes" not in out


def test_a_proposal_head_learns_two_classes_in_one_video_that_a_video_label_cannot_split():
    """Two instances of different classes in one video, told apart only by their features: after
    training, each proposal on an instance ranks that instance's class first."""
    torch.manual_seed(0)
    t, c = 16, 16
    features = torch.zeros(1, c, t)
    features[0, :8, 2:6] = 1.0  # class 0 shows in channels 0-7
    features[0, 8:, 10:14] = 1.0  # class 1 in channels 8-15
    gt, gt_classes = torch.tensor([[2 / t, 6 / t], [10 / t, 14 / t]]), torch.tensor([0, 1])
    anchors = proposal_map(t, t)
    slots = proposal_classes(anchors, gt, gt_classes)[None]
    model = ETAD(c, 32, 8, 0.5, n_stages=1, n_classes=2, classifier="proposal")
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        optimizer.zero_grad()
        proposal_class_loss(model(features, anchors[None])["proposal_classes"], slots).backward()
        optimizer.step()
    with torch.no_grad():
        probs = torch.sigmoid(model(features, anchors[None])["proposal_classes"][0])
    on_first = slots[0, :, 0] == 0
    on_second = slots[0, :, 0] == 1
    assert on_first.any() and on_second.any()
    assert (probs[on_first].argmax(dim=1) == 0).all() and (probs[on_second].argmax(dim=1) == 1).all()


def test_settings_ask_for_the_head_to_be_on():
    with pytest.raises(UserError, match="classifier_head: true"):
        load_settings(None, ["model.classifier=proposal"])
    settings = load_settings(None, ["model.classifier=proposal", "model.classifier_head=true"])
    assert settings.model.classifier == "proposal"
    with pytest.raises(UserError, match="model.classifier"):
        load_settings(None, ["model.classifier=segment", "model.classifier_head=true"])
