"""`etad train --e2e`: train encoder and detector end to end (docs/method.md, original ETAD).

One iteration with `grad_mode: sampled` (the default): the encoder runs over every snippet without
gradients, the detector and its loss run on those features, and only a sampled share of the
snippets is re-encoded with gradients (stages/model/backward.py has the grad modes). Activation
memory is one chunk's, however long the videos are.

Reads the snippet cache (<work_dir>/cache/snippets); writes <work_dir>/e2e/ like `etad train`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stages.core.checkpoints import load_weights, read_checkpoint
from stages.core.errors import UserError
from stages.core.progress import SILENT, Progress
from stages.core.runtime import PhaseMemory, autocast
from stages.core.settings import Settings
from stages.core.workdir import snippets_dir
from stages.data.datasets import CacheReader
from stages.data.fingerprints import ExpectedFingerprint
from stages.data.hdf5_cache import VideoCache
from stages.model.backward import Backward, e2e_gradients
from stages.model.detector import VARIANTS, build_detector
from stages.model.encoder import build_encoder, center_crop, encode_chunks, encoder_spec
from stages.model.losses import as_float, detector_loss
from stages.training.loop import Job, TrainSummary, classifier_refit, fit, start_run
from stages.training.optimisation import make_optimizer
from stages.training.samples import training_dataset


def augment(snippets: torch.Tensor, crop: int, generator: torch.Generator) -> torch.Tensor:
    """`augment_seeded` with the video's seed drawn from its sample generator (in the loader)."""
    return augment_seeded(snippets, crop, augment_seed(generator))


def augment_seed(generator: torch.Generator) -> int:
    """The one draw a video's augmentation takes from its sample generator."""
    return int(torch.randint(0, 2**62, (1,), generator=generator))


def augment_seeded(snippets: torch.Tensor, crop: int, seed: int) -> torch.Tensor:
    """The original's training augmentation, one draw per video applied to every frame of it:
    random crop to `crop`, horizontal flip (p 0.5), RandAugment (2 ops at magnitude 9 of 10, the
    original's imgaug "default"), colour jitter (brightness, contrast, saturation in [0.5, 1.5],
    hue in [-0.1, 0.1], in a random order). uint8 [T, L, H, W, 3] in, [T, L, crop, crop, 3] out, on
    the tensor's device (the parameters are drawn on the CPU from `seed`, so a video gets the same
    draws wherever it runs)."""
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    t, length, h, w, _ = snippets.shape
    if crop > min(h, w):
        raise UserError(f"crop size {crop} is larger than the frames ({w}x{h})")
    pipeline = v2.Compose(
        [
            v2.RandomCrop(crop),
            v2.RandomHorizontalFlip(0.5),
            v2.RandAugment(num_ops=2, magnitude=9, num_magnitude_bins=11),
            v2.ColorJitter(brightness=0.5, contrast=0.5, saturation=0.5, hue=0.1),
        ]
    )
    video = tv_tensors.Video(snippets.reshape(t * length, h, w, 3).permute(0, 3, 1, 2))  # all frames
    with torch.random.fork_rng(devices=[]):  # v2 draws from torch's generator: make it this video's
        torch.manual_seed(seed)
        out = pipeline(video)
    return out.permute(0, 2, 3, 1).reshape(t, length, crop, crop, 3).contiguous()


def augments_on_device(settings: Settings, device: torch.device) -> bool:
    """Whether the training step augments (on the training device) instead of the loader."""
    e2e = settings.e2e
    return e2e.augment and (
        e2e.augment_on == "device" or (e2e.augment_on == "auto" and device.type == "cuda")
    )


@dataclass(frozen=True)
class SnippetTransform:
    """What the loader does to a video's uint8 snippets: augment (or centre-crop) them, or with
    `on_device` only draw the video's augmentation seed for the training step. A class, not a
    closure, so that loader workers started by spawn (macOS, a study's child) can receive it."""

    crop: int
    augment: bool
    on_device: bool

    def __call__(self, snippets: torch.Tensor, generator: torch.Generator) -> dict:
        """The sample's inputs and its `snippet_seed`: the sampled backward's draw of snippets, from
        the sample's generator like every other draw of it (so it does not depend on the rank)."""
        seed = {"snippet_seed": int(torch.randint(0, 2**62, (1,), generator=generator))}
        if self.on_device:
            return {"inputs": snippets, "augment_seed": augment_seed(generator), **seed}
        if self.augment:
            return {"inputs": augment(snippets, self.crop, generator), **seed}
        return {"inputs": center_crop(snippets, self.crop).contiguous(), **seed}


def snippet_dataset(settings: Settings, crop: int, *, on_device: bool = False):
    """(the training items' dataset, classes, notes). The loader crops (and augments, unless
    `on_device`: then it only draws each video's augmentation seed for the step)."""
    if settings.data.annotations is None:
        raise UserError("data.annotations is not set")
    cache = VideoCache(snippets_dir(settings), "snippets", ExpectedFingerprint.of(settings, "snippets"))
    transform = SnippetTransform(crop, settings.e2e.augment, on_device)
    load = CacheReader(cache, settings)
    return training_dataset(settings, settings.data.train_subset, load, mode="train", transform=transform)


def check(settings: Settings) -> None:
    """Settings end-to-end training refuses before any work."""
    e2e, enc = settings.e2e, settings.model.encoder
    batchnorm = encoder_spec(enc.name).batchnorm  # LayerNorm encoders have no batch statistics
    if e2e.grad_mode == "sampled" and not enc.norm_eval and e2e.encoder_lr > 0 and batchnorm:
        raise UserError(
            "model.encoder.norm_eval: false does not work with e2e.grad_mode 'sampled': the no-grad pass "
            "and the re-forward would see different BatchNorm statistics (use norm_eval: true, or "
            "grad_mode checkpoint or full)"
        )


def build_models(settings: Settings, classes: list[str], device: torch.device, notes: list[str]):
    """(encoder, detector, the model settings as run): the encoder from model.encoder, the detector
    as wide as its features, both started from e2e.init_from when set."""
    e2e, enc = settings.e2e, settings.model.encoder
    encoder = build_encoder(enc.name, enc.checkpoint, enc.frozen_stages, enc.norm_eval).to(device)
    width = settings.model.in_channels
    if width is not None and encoder.out_dim != width:
        raise UserError(f"model.in_channels is {width}; encoder {enc.name!r} gives {encoder.out_dim}")
    model_settings = settings.model.model_copy(update={"in_channels": encoder.out_dim})
    detector = build_detector(model_settings, len(classes)).to(device)
    if e2e.init_from is not None:
        state = read_checkpoint(e2e.init_from)  # etad's, or a released layout
        if state.get("kind") == "encoder":
            raise UserError(
                f"{e2e.init_from}: an encoder checkpoint (`etad train --encoder`), not a "
                "detector's; give its exported encoder as model.encoder.checkpoint, and to "
                "--init-from a checkpoint of `etad train` or `etad train --e2e`"
            )
        theirs = ((state.get("settings") or {}).get("model") or {}).get("variant", "original")
        if theirs != model_settings.variant:
            raise UserError(
                f"{e2e.init_from}: holds the {theirs!r} variant of the detector; "
                f"set model.variant: {theirs} to start from it"
            )
        load_weights(detector, state, e2e.init_from, "model")
        if "encoder" in state:
            load_weights(encoder, state, e2e.init_from, "encoder")
        notes.append(f"detector initialised from {e2e.init_from}")
    return encoder, detector, model_settings


def optimiser(settings: Settings, encoder, detector, notes: list[str]) -> tuple[torch.optim.Optimizer, str]:
    """The optimizer (detector at e2e.lr, the encoder's trainable stages at e2e.encoder_lr) and the
    grad mode: 'frozen' when nothing in the encoder trains (its backward is skipped)."""
    e2e = settings.e2e
    groups = [{"params": list(detector.parameters()), "lr": e2e.lr}]
    trainable = [p for p in encoder.parameters() if p.requires_grad]
    if e2e.encoder_lr > 0 and trainable:
        groups.append({"params": trainable, "lr": e2e.encoder_lr})
    grad_mode = e2e.grad_mode
    if len(groups) == 1 and grad_mode != "frozen":
        grad_mode = "frozen"
        notes.append("the encoder does not train (e2e.encoder_lr 0 or every stage frozen): grad mode frozen")
    return make_optimizer(groups, e2e.optimizer, e2e.weight_decay), grad_mode


def run(
    settings: Settings, *, resume: bool = False, restart: bool = False, progress: Progress = SILENT
) -> TrainSummary:
    """Train end to end for e2e.epochs epochs (continuing from last.pt with `resume`)."""
    check(settings)
    e2e, enc = settings.e2e, settings.model.encoder
    device, dist = start_run(settings, e2e)
    on_device = augments_on_device(settings, device)
    train_set, classes, notes = snippet_dataset(settings, enc.crop_size, on_device=on_device)
    encoder, detector, model_settings = build_models(settings, classes, device, notes)
    optimizer, grad_mode = optimiser(settings, encoder, detector, notes)
    thresholds = settings.model.stage_iou_thresholds
    tem_loss = VARIANTS[settings.model.variant].tem_loss
    memory = PhaseMemory(device)  # CUDA: peak memory per phase of the step, in metrics.jsonl

    def step(batch: dict, scale) -> dict:
        detector.train()
        encoder.train()
        if on_device:  # each video with the seed its loader drew, on the training device
            videos = zip(batch["inputs"], batch["augment_seed"].tolist())
            batch = {**batch, "inputs": torch.stack([augment_seeded(v, enc.crop_size, s) for v, s in videos])}

        def loss(out: dict) -> dict:
            return detector_loss(as_float(out), batch, thresholds, tem_loss)

        sampling = dict(chunk_size=e2e.chunk_size, ratio=e2e.snippet_ratio, sampling=e2e.snippet_sampling)
        seeds = batch["snippet_seed"].tolist()
        where = dict(anchors=batch["anchors"], seeds=seeds, scale=scale, device=device, phase=memory)
        job = Backward(encoder, detector, batch["inputs"], loss, **sampling, **where)
        with autocast(device, e2e.amp):
            return e2e_gradients(grad_mode, job)

    def final_features(snippets: torch.Tensor) -> torch.Tensor:
        """Features of the trained encoder (evaluation mode, centre crop), as `etad infer` sees them."""
        encoder.eval()
        return encode_chunks(encoder, snippets, e2e.chunk_size, enc.crop_size, device=device)

    schedule = torch.optim.lr_scheduler.StepLR(optimizer, e2e.lr_step, e2e.lr_gamma)
    refit = classifier_refit(detector, train_set, settings, device, encode=final_features)
    described = dict(
        classes=classes, parameters=detector.detector_parameters(), model_settings=model_settings
    )
    checks = dict(memory=memory, inputs=train_set.load.cache.expected, finish=refit)
    modules = {"model": detector, "encoder": encoder}
    loop = dict(train_set=train_set, step=step, validate=lambda: None)
    job = Job("e2e", modules, optimizer, schedule, **loop, **described, **checks)
    options = dict(device=device, resume=resume, restart=restart, progress=progress, notes=notes)
    return fit(job, settings, e2e, dist, **options)
