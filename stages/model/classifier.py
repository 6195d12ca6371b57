"""The optional classifier heads (`model.classifier_head`, `model.classifier`) and the video head's refit.

The heads are etad's addition: the original ETAD labels its proposals with external video-level
scores (CUHK's for ActivityNet). Two kinds:
- `video` (VideoClassifier): the classes of the whole video, which then label every proposal. It
  reads the detector's input features, mean- and max-pooled over time, and its input is detached,
  so it never changes the detector (or, end to end, the encoder). Right where a video holds one
  activity (ActivityNet, HACS, FineAction).
- `proposal` (ProposalClassifier): the classes of each proposal, from the RoI features the first
  cascade stage pools for it. Its gradient reaches the detector's features, which then learn to
  tell classes apart. For dense sets where instances of several classes share a video and overlap
  (EPIC-KITCHENS, MultiTHUMOS, Charades, Ego4D-MQ).

`refit` fits it again, alone, after the detector has trained (`model.classifier_refit_steps`).
While the detector trains, the head sees each training item once per epoch in batches of a few,
and end to end it chases features that keep changing under it; fitted on the final features it
labels videos more accurately and more steadily (docs/method.md, "The video classifier").
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from stages.core.errors import TrainingDiverged
from stages.model.layers import mlp

REFIT_LR = 1e-3  # Adam, full batch


class VideoClassifier(nn.Module):
    """Multi-label video classifier on mean+max pooled input features [B, C, T] -> logits [B, K]."""

    def __init__(self, in_channels: int, hidden: int, n_classes: int) -> None:
        super().__init__()
        self.net = mlp([2 * in_channels, hidden, n_classes])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach()
        return self.net(torch.cat([x.mean(dim=2), x.amax(dim=2)], dim=1))


class ProposalClassifier(nn.Module):
    """Multi-label classes of proposals from their pooled features [N, F] -> logits [N, K]. The last
    bias starts at the prior 1/K (sigmoid(-log(K - 1))), so that the first steps' loss is not
    dominated by every class being called present."""

    def __init__(self, in_features: int, hidden: int, n_classes: int) -> None:
        super().__init__()
        self.net = mlp([in_features, hidden, n_classes])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)

    def reset_prior(self) -> None:
        n = self.net[-1].out_features
        nn.init.constant_(self.net[-1].bias, -math.log(n - 1) if n > 1 else 0.0)


def refit(
    head: VideoClassifier, inputs: torch.Tensor, targets: torch.Tensor, steps: int, *, seed: int
) -> dict:
    """Fit `head` again from fresh weights (drawn from `seed`): `steps` full-batch Adam steps of
    binary cross-entropy on the training items' detector inputs [N, C, T] and multi-hot classes
    [N, K]. Returns the final loss and the training accuracy (the top class is one of the item's)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for layer in head.modules():
            if isinstance(layer, nn.Linear):
                layer.reset_parameters()
    optimizer = torch.optim.Adam(head.parameters(), lr=REFIT_LR)
    head.train()
    loss = torch.zeros(())
    with torch.enable_grad():
        for step in range(steps):
            optimizer.zero_grad(set_to_none=True)
            loss = F.binary_cross_entropy_with_logits(head(inputs), targets)
            if not torch.isfinite(loss):
                value = float(loss.detach())
                raise TrainingDiverged(f"classifier refit, step {step + 1}: the loss is {value}")
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        hits = targets.gather(1, head(inputs).argmax(dim=1, keepdim=True))
    return {"loss": float(loss.detach()), "train_accuracy": float(hits.mean())}
