"""`etad train --e2e`: fine-tune encoder and detector end to end (spec 2.3, original ETAD).

One iteration, `grad_mode: sampled` (the default):
1. every snippet goes through the encoder in chunks of `chunk_size`, without gradients -> F [B, D, T];
2. the detector and its loss run on F (a leaf); backward gives the detector's gradients and dL/dF;
3. a subset of snippets (`snippet_ratio`, strategy `snippet_sampling`) is re-encoded, chunk by
   chunk, with gradients, and dL/dF of exactly those snippets is back-propagated into the encoder.
Activation memory is one chunk's, however long the videos are. `checkpoint` (OpenTAD's temporal
checkpointing: every snippet gets a gradient, activations recomputed) and `full` (plain
back-propagation through every snippet) exist to compare.

Reads the snippet cache (<work_dir>/cache/snippets); writes <work_dir>/finetune/ like `etad train`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from stages.cache import snippets_dir
from stages.datasets import DetectionDataset, build_items, window_reader
from stages.errors import UserError
from stages.model.detector import build_detector
from stages.model.encoder import build_encoder, center_crop, encode_chunks
from stages.model.losses import detector_loss
from stages.model.sampling import sample_snippets
from stages.pretrain import as_float
from stages.store import VideoCache
from stages.training import (
    Distributed,
    Job,
    TrainSummary,
    autocast,
    fit,
    load_checkpoint,
    make_optimizer,
    pick_device,
    seed_everything,
)


def augment(snippets: torch.Tensor, crop: int, generator: torch.Generator) -> torch.Tensor:
    """Training augmentation drawn once per video (spec 2.1): random crop, horizontal flip, and
    brightness / contrast / saturation jitter (factors in [0.5, 1.5]). uint8 [T, L, H, W, 3] in
    and out, cropped to crop x crop."""
    h, w = snippets.shape[-3], snippets.shape[-2]
    if crop > min(h, w):
        raise UserError(f"crop size {crop} is larger than the frames ({w}x{h})")
    top = int(torch.randint(0, h - crop + 1, (1,), generator=generator))
    left = int(torch.randint(0, w - crop + 1, (1,), generator=generator))
    x = snippets[..., top : top + crop, left : left + crop, :]
    if torch.rand(1, generator=generator) < 0.5:
        x = x.flip(-2)
    b, c, s = (0.5 + torch.rand(3, generator=generator)).tolist()
    x = x.float() * b
    x = x.mean() + (x - x.mean()) * c
    gray = (x * torch.tensor([0.299, 0.587, 0.114])).sum(-1, keepdim=True)
    x = gray + (x - gray) * s
    return x.clamp(0, 255).round().to(torch.uint8)


def e2e_gradients(
    encoder: torch.nn.Module,
    detector: torch.nn.Module,
    snippets: torch.Tensor,
    loss_fn: Callable[[dict], dict],
    anchors: torch.Tensor,
    mode: str,
    chunk_size: int,
    ratio: float = 1.0,
    sampling: str = "random",
    generator: torch.Generator | None = None,
    device: torch.device | None = None,
) -> dict:
    """One end-to-end iteration's gradients (no optimizer step): leaves .grad in the detector's and
    the encoder's parameters and returns the loss terms. snippets: uint8 [B, T, L, S, S, 3],
    already cropped to the encoder's input size."""
    device = device or snippets.device
    b, t = snippets.shape[:2]
    size = snippets.shape[-2]
    if mode == "sampled":
        features = encode_chunks(encoder, snippets, chunk_size, size, device).requires_grad_(True)
        terms = loss_fn(detector(features, anchors))
        terms["total"].backward()
        grad = features.grad  # dL/dF [B, D, T]
        picks = [sample_snippets(t, ratio, chunk_size, sampling, generator) for _ in range(b)]
        n_chunks = picks[0].shape[0]
        for j in range(n_chunks):  # chunk j of every video at once
            pairs = [(v, int(s)) for v in range(b) for s in picks[v][j] if s >= 0]
            videos = torch.tensor([v for v, _ in pairs])
            index = torch.tensor([s for _, s in pairs])
            clips = snippets[videos, index].to(device, non_blocking=True)
            # under DDP, gradients are averaged across ranks once, after the last chunk
            last = j == n_chunks - 1 or not hasattr(encoder, "no_sync")
            with contextlib.nullcontext() if last else encoder.no_sync():
                feats = encoder(clips)  # [n, D], with gradients
                feats.backward(grad[videos.to(device), :, index.to(device)])
        return terms
    chunks = []
    for start in range(0, t, chunk_size):
        clips = center_crop(snippets[:, start : start + chunk_size], size).to(device)
        n = clips.shape[1]
        flat = clips.flatten(0, 1)
        if mode == "checkpoint":
            feats = activation_checkpoint(encoder, flat, use_reentrant=False)
        elif mode == "full":
            feats = encoder(flat)
        else:
            raise ValueError(f"unknown grad mode {mode!r}")
        chunks.append(feats.view(b, n, -1))
    features = torch.cat(chunks, dim=1).transpose(1, 2)
    terms = loss_fn(detector(features, anchors))
    terms["total"].backward()
    return terms


def snippet_datasets(settings, crop: int) -> tuple[DetectionDataset, list[str], list[str]]:
    cache = VideoCache(snippets_dir(settings), "snippets")
    if settings.data.annotations is None:
        raise UserError("data.annotations is not set")
    load = window_reader(cache, settings.data.temporal_scale)

    def transform(snippets: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if settings.e2e.augment:
            return augment(snippets, crop, generator)
        return center_crop(snippets, crop).contiguous()

    items, classes, notes = build_items(settings, settings.data.train_subset, cache.length, training=True)
    return DetectionDataset(items, classes, settings, load, "train", transform), classes, notes


def run(
    settings,
    resume: bool = False,
    on_start: Callable[[int, int], None] | None = None,
    on_step: Callable[[dict], None] | None = None,
) -> TrainSummary:
    """Fine-tune end to end for settings.e2e.epochs epochs (continuing from last.pt with `resume`)."""
    e2e, enc = settings.e2e, settings.model.encoder
    if e2e.amp == "fp16":
        raise UserError(
            "e2e.amp: fp16 is not supported end to end (the cached feature gradient needs a scaler); use bf16"
        )
    device = pick_device(e2e.device)
    dist = Distributed.setup(device)
    device = dist.device(device)
    seed_everything(settings.seed)
    train_set, classes, notes = snippet_datasets(settings, enc.crop_size)
    encoder = build_encoder(enc.name, enc.checkpoint, enc.frozen_stages, enc.norm_eval).to(device)
    if encoder.out_dim != settings.model.in_channels:
        raise UserError(
            f"model.in_channels is {settings.model.in_channels}; encoder {enc.name!r} gives {encoder.out_dim}"
        )
    detector = build_detector(settings.model, len(classes)).to(device)
    if e2e.init_from is not None:
        state = load_checkpoint(e2e.init_from)
        try:
            detector.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise UserError(
                f"{e2e.init_from}: does not fit this detector: {str(exc).splitlines()[0]}"
            ) from None
        if "encoder" in state:
            encoder.load_state_dict(state["encoder"])
        notes.append(f"detector initialised from {e2e.init_from}")
    groups = [{"params": list(detector.parameters()), "lr": e2e.lr}]
    trainable = [p for p in encoder.parameters() if p.requires_grad]
    if e2e.encoder_lr > 0 and trainable:
        groups.append({"params": trainable, "lr": e2e.encoder_lr})
    optimizer = make_optimizer(groups, settings.train.optimizer, e2e.weight_decay)
    det_net, enc_net = detector, encoder
    if dist.world > 1:
        ids = [device.index] if device.type == "cuda" else None
        det_net = torch.nn.parallel.DistributedDataParallel(detector, device_ids=ids)
        enc_net = torch.nn.parallel.DistributedDataParallel(encoder, device_ids=ids)
    generator = torch.Generator().manual_seed(settings.seed + 1000 * dist.rank)
    thresholds = settings.model.stage_iou_thresholds

    def step(batch: dict) -> dict:
        det_net.train()
        enc_net.train()
        with autocast(device, e2e.amp):
            return e2e_gradients(
                enc_net, det_net, batch["inputs"], lambda o: detector_loss(as_float(o), batch, thresholds),
                batch["anchors"], e2e.grad_mode, e2e.chunk_size, e2e.snippet_ratio, e2e.snippet_sampling,
                generator, device,
            )  # fmt: skip

    job = Job(
        "finetune",
        {"model": detector, "encoder": encoder},
        optimizer,
        torch.optim.lr_scheduler.StepLR(optimizer, e2e.lr_step, e2e.lr_gamma),
        train_set,
        step,
        lambda: None,
        classes,
        detector.detector_parameters(),
    )
    try:
        return fit(job, settings, e2e, dist, device, resume, on_start, on_step, notes)
    finally:
        dist.close()
