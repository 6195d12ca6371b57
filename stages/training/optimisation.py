"""The optimiser of a training run."""

from __future__ import annotations

import torch


def make_optimizer(groups: list[dict], kind: str, weight_decay: float) -> torch.optim.Optimizer:
    cls = torch.optim.AdamW if kind == "adamw" else torch.optim.Adam
    return cls(groups, weight_decay=weight_decay)


class Precision:
    """The one optimizer step of every run and precision (`amp`: none, bf16, fp16).

    fp16 gradients underflow without loss scaling: with fp16 a GradScaler multiplies the loss
    (every backward pass takes `scale`), `step` unscales, clips, and skips the step when a gradient
    overflowed (the scale then shrinks). none and bf16 take the same path with the scaler off
    (scale 1, a plain step). The scaler also runs on the CPU, so tests exercise it."""

    def __init__(self, amp: str, device: torch.device) -> None:
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
        self.device = device

    @property
    def scale(self) -> torch.Tensor | float:
        """What every backward pass multiplies the loss by (a tensor on the device with fp16)."""
        if not self.scaler.is_enabled():
            return 1.0
        return self.scaler.scale(torch.ones((), device=self.device))  # also starts the scaler

    def step(self, optimizer: torch.optim.Optimizer, grad_clip: float) -> bool:
        """Unscale, clip (grad_clip > 0: max L2 norm), step, update the scale; whether it stepped."""
        self.scaler.unscale_(optimizer)
        if grad_clip > 0:
            params = [p for group in optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        before = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        return not self.scaler.is_enabled() or self.scaler.get_scale() >= before
