"""The optional video-level classifier head (`model.classifier_head`) and its refit.

The head is etad's addition: the original ETAD labels its proposals with external video-level
scores (CUHK's for ActivityNet). It reads the detector's input features, mean- and max-pooled over
time, and its input is detached, so it never changes the detector (or, end to end, the encoder).

`refit` fits it again, alone, after the detector has trained (`model.classifier_refit_steps`).
While the detector trains, the head sees each training item once per epoch in batches of a few,
and end to end it chases features that keep changing under it; fitted on the final features it
labels videos more accurately and more steadily (docs/method.md, "The video classifier").
"""

from __future__ import annotations

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
