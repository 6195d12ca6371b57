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
    generator: torch.Generator | None = None
    device: torch.device | None = None


def sampled(job: Backward) -> dict:
    device = job.device or job.snippets.device
    b, t = job.snippets.shape[:2]
    size = job.snippets.shape[-2]
    features = encode_chunks(job.encoder, job.snippets, job.chunk_size, size, device=device).requires_grad_(
        True
    )
    terms = job.loss_fn(job.detector(features, job.anchors))
    terms["total"].backward()
    grad = features.grad  # dL/dF [B, D, T]
    picks = [
        sample_snippets(t, job.ratio, job.chunk_size, job.sampling, generator=job.generator) for _ in range(b)
    ]
    n_chunks = picks[0].shape[0]
    for j in range(n_chunks):  # chunk j of every video at once
        pairs = [(v, int(s)) for v in range(b) for s in picks[v][j] if s >= 0]
        videos = torch.tensor([v for v, _ in pairs])
        index = torch.tensor([s for _, s in pairs])
        clips = job.snippets[videos, index].to(device, non_blocking=True)
        # under DDP, gradients are averaged across ranks once, after the last chunk
        last = j == n_chunks - 1 or not hasattr(job.encoder, "no_sync")
        with contextlib.nullcontext() if last else job.encoder.no_sync():
            feats = job.encoder(clips)  # [n, D], with gradients
            feats.backward(grad[videos.to(device), :, index.to(device)])
    return terms


def _every_snippet(job: Backward, encode: Callable[[torch.Tensor], torch.Tensor]) -> dict:
    device = job.device or job.snippets.device
    b, t = job.snippets.shape[:2]
    size = job.snippets.shape[-2]
    chunks = []
    for start in range(0, t, job.chunk_size):
        clips = center_crop(job.snippets[:, start : start + job.chunk_size], size).to(device)
        n = clips.shape[1]
        chunks.append(encode(clips.flatten(0, 1)).view(b, n, -1))
    features = torch.cat(chunks, dim=1).transpose(1, 2)
    terms = job.loss_fn(job.detector(features, job.anchors))
    terms["total"].backward()
    return terms


def frozen(job: Backward) -> dict:
    device = job.device or job.snippets.device
    size = job.snippets.shape[-2]
    features = encode_chunks(job.encoder, job.snippets, job.chunk_size, size, device=device)
    terms = job.loss_fn(job.detector(features, job.anchors))
    terms["total"].backward()
    return terms


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
