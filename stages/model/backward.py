"""How an end-to-end iteration gets the encoder's gradients (docs/method.md, "sampled backward").

Every grad mode is a function with the same arguments; `e2e.grad_mode` names one of GRAD_MODES.
- sampled (ETAD): every snippet through the encoder without gradients -> F; detector and loss on F
  (a leaf); backward gives dL/dF; then a subset of snippets is re-encoded chunk by chunk with
  gradients and dL/dF of exactly those snippets is back-propagated. Activation memory: one chunk.
- checkpoint (OpenTAD's temporal checkpointing): every snippet gets a gradient, activations are
  recomputed chunk by chunk in the backward pass.
- full: plain back-propagation through every snippet (the reference; memory grows with length).
- frozen: no encoder gradient at all; every snippet without gradients, the detector's backward
  alone (what `etad train --e2e` runs when the encoder does not train, e.g. e2e.encoder_lr: 0).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from stages.model.encoder import center_crop, encode_chunks
from stages.model.sampling import sample_snippets


@dataclass
class Backward:
    """The arguments every grad mode takes."""

    encoder: torch.nn.Module
    detector: torch.nn.Module
    snippets: torch.Tensor  # uint8 [B, T, L, S, S, 3], already cropped to the encoder's input size
    loss_fn: Callable[[dict], dict]  # detector output -> loss terms with "total"
    anchors: torch.Tensor
    chunk_size: int
    ratio: float = 1.0
    sampling: str = "random"
    generator: torch.Generator | None = None  # the snippet draws of every video, or
    seeds: list[int] | None = None  # one seed per video (training: from the sample's own draws)
    scale: torch.Tensor | float = 1.0  # backward passes take scale x loss (fp16's gradient scaler)
    device: torch.device | None = None
    phase: Callable[[str], contextlib.AbstractContextManager] = lambda name: contextlib.nullcontext()  # noqa: E731

    def backward(self, terms: dict) -> dict:
        (terms["total"] * self.scale).backward()
        return terms

    def picks(self, t: int) -> list[torch.Tensor]:
        """The snippets each video re-encodes with gradients, [chunks, chunk_size] (-1: none)."""
        if self.seeds is not None:
            generators = [torch.Generator().manual_seed(int(s)) for s in self.seeds]
        else:
            generators = [self.generator] * self.snippets.shape[0]
        return [
            sample_snippets(t, self.ratio, self.chunk_size, self.sampling, generator=g) for g in generators
        ]


def sampled(job: Backward) -> dict:
    device = job.device or job.snippets.device
    t, size = job.snippets.shape[1], job.snippets.shape[-2]
    with job.phase("encoder forward"):
        features = encode_chunks(job.encoder, job.snippets, job.chunk_size, size, device=device)
    features.requires_grad_(True)
    with job.phase("detector"):
        terms = job.backward(job.loss_fn(job.detector(features, job.anchors)))
    grad = features.grad  # dL/dF [B, D, T] (times the scale)
    picks = job.picks(t)
    with job.phase("sampled backward"):
        _reencode(job, picks, grad, device)
    return terms


def _reencode(job: Backward, picks: list[torch.Tensor], grad: torch.Tensor, device: torch.device) -> None:
    """The sampled snippets again, chunk by chunk with gradients, each taking its dL/dF."""
    b, n_chunks = len(picks), picks[0].shape[0]
    for j in range(n_chunks):  # chunk j of every video at once
        pairs = [(v, int(s)) for v in range(b) for s in picks[v][j] if s >= 0]
        videos = torch.tensor([v for v, _ in pairs])
        index = torch.tensor([s for _, s in pairs])
        clips = job.snippets[videos, index].to(device, non_blocking=True)
        feats = job.encoder(clips)  # [n, D], with gradients
        feats.backward(grad[videos.to(device), :, index.to(device)])


def _every_snippet(job: Backward, encode: Callable[[torch.Tensor], torch.Tensor]) -> dict:
    device = job.device or job.snippets.device
    b, t = job.snippets.shape[:2]
    size = job.snippets.shape[-2]
    chunks = []
    with job.phase("encoder forward"):
        for start in range(0, t, job.chunk_size):
            clips = center_crop(job.snippets[:, start : start + job.chunk_size], size).to(device)
            n = clips.shape[1]
            chunks.append(encode(clips.flatten(0, 1)).view(b, n, -1))
    features = torch.cat(chunks, dim=1).transpose(1, 2)
    with job.phase("detector and encoder backward"):
        return job.backward(job.loss_fn(job.detector(features, job.anchors)))


def frozen(job: Backward) -> dict:
    device = job.device or job.snippets.device
    size = job.snippets.shape[-2]
    features = encode_chunks(job.encoder, job.snippets, job.chunk_size, size, device=device)
    return job.backward(job.loss_fn(job.detector(features, job.anchors)))


def checkpoint(job: Backward) -> dict:
    return _every_snippet(job, lambda x: activation_checkpoint(job.encoder, x, use_reentrant=False))


def full(job: Backward) -> dict:
    return _every_snippet(job, job.encoder)


# The grad modes (`e2e.grad_mode`): Backward -> loss terms, leaving .grad in both networks.
GRAD_MODES: dict[str, Callable[[Backward], dict]] = {
    "sampled": sampled,
    "checkpoint": checkpoint,
    "full": full,
    "frozen": frozen,
}


def e2e_gradients(mode: str, job: Backward) -> dict:
    """One end-to-end iteration's gradients (no optimizer step) with the named grad mode."""
    if mode not in GRAD_MODES:
        raise ValueError(f"unknown grad mode {mode!r}")
    return GRAD_MODES[mode](job)
