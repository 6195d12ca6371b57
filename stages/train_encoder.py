"""`etad train --encoder`: temporally sensitive pretraining of the video encoder (TSP).

TSP (Alwassel, Giancola and Ghanem, "TSP: Temporally-Sensitive Pretraining of Video Encoders for
Localization Tasks", ICCVW 2021) is how ETAD's encoder was pretrained on ActivityNet. Each clip (a
snippet of the cache) of the training subset is labelled with the action class it lies in, and as
foreground (its centre inside an action) or background. Two heads sit on the encoder's clip feature:
a class head (cross-entropy on foreground clips only) and a foreground/background head that also
sees a global video feature (GVF: the max-pooled features of every clip of the video, without
gradient). The loss is the sum of both cross-entropies; each epoch draws as many foreground clips as
background ones. TSP computes the GVF once with a pretrained encoder; here it is recomputed with the
current encoder at the start of every epoch, so that training can also start from random weights.

Writes <work_dir>/encoder/ (checkpoints, metrics, as `etad train`) and the encoder in TSP's own
layout (encoder_train.output): {"model": {"features.<backbone key>": ..., "fc_*": heads}}, which
`model.encoder.checkpoint` loads for `etad cache --what features` and `etad train --e2e`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stages.core.checkpoints import export_tsp
from stages.core.errors import UserError
from stages.core.progress import SILENT, Progress
from stages.core.settings import Settings
from stages.core.workdir import encoder_output, snippets_dir
from stages.data.annotations import load_annotations
from stages.data.datasets import class_names
from stages.data.fingerprints import ExpectedFingerprint
from stages.data.hdf5_cache import VideoCache
from stages.model.encoder import build_encoder, center_crop
from stages.training.loop import Job, TrainSummary, fit, start_run
from stages.training.optimisation import make_optimizer

KIND = "encoder"  # the run folder under work_dir and the checkpoint kind


class TSPHeads(nn.Module):
    """The class head on a clip feature, the foreground head on [clip feature, GVF]."""

    def __init__(self, width: int, n_classes: int) -> None:
        super().__init__()
        self.fc_action = nn.Linear(width, n_classes)
        self.fc_region = nn.Linear(2 * width, 2)

    def forward(self, features: torch.Tensor, gvf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.fc_action(features), self.fc_region(torch.cat([features, gvf], dim=1))


def clip_labels(
    frame_indices: np.ndarray, fps: float, segments: list[tuple[float, float, int]]
) -> np.ndarray:
    """The class of every snippet whose centre lies inside an action, -1 for the others.
    frame_indices [T, L] are frames at `fps`; segments are (start s, end s, class)."""
    centres = (frame_indices.mean(axis=1) + 0.5) / fps
    labels = np.full(len(centres), -1, dtype=np.int64)
    for start, end, label in segments:
        labels[(centres >= start) & (centres < end)] = label
    return labels


class ClipDataset(torch.utils.data.Dataset):
    """Balanced clips of the chosen subset: each epoch draws `clips_per_epoch / 2` foreground and as
    many background clips (with replacement when a kind has fewer), from a generator seeded by
    (seed, epoch)."""

    def __init__(self, settings: Settings, crop: int) -> None:
        d, et = settings.data, settings.encoder_train
        if d.annotations is None:
            raise UserError("data.annotations is not set")
        subset = et.subset or d.train_subset
        self.cache = VideoCache(
            snippets_dir(settings), "snippets", ExpectedFingerprint.of(settings, "snippets")
        )
        records = load_annotations(d.annotations)
        self.classes = class_names(records)
        index = {c: i for i, c in enumerate(self.classes)}
        self.videos: list[str] = []
        where, labels, self.notes = [], [], []
        for r in records.values():
            if (r.subset or "").lower() != subset.lower() or r.unusable() is not None:
                continue
            if self.cache.length(r.video_id) is None:
                self.notes.append(f"video {r.video_id!r} is not in the snippet cache, left out")
                continue
            segments = [(s.start, s.end, index[s.label]) for s in r.segments]
            fps = float(self.cache.attrs(r.video_id).get("fps", d.fps))
            per_clip = clip_labels(self.cache.frame_indices(r.video_id), fps, segments)
            v = len(self.videos)
            self.videos.append(r.video_id)
            where += [(v, row) for row in range(len(per_clip))]
            labels.append(per_clip)
        if not self.videos:
            raise UserError(f"{d.annotations}: no cached video in subset {subset!r} to train the encoder on")
        self.where = np.array(where, dtype=np.int64)
        self.labels = np.concatenate(labels)
        self.foreground = np.flatnonzero(self.labels >= 0)
        self.background = np.flatnonzero(self.labels < 0)
        if not len(self.foreground) or not len(self.background):
            raise UserError(
                f"subset {subset!r}: the encoder needs clips inside and outside actions; "
                f"found {len(self.foreground)} inside and {len(self.background)} outside"
            )
        self.crop, self.augment, self.seed = crop, et.augment, settings.seed
        self.half = et.clips_per_epoch // 2
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        generator = np.random.default_rng([self.seed, epoch, 7])
        draw = [
            generator.choice(pool, self.half, replace=len(pool) < self.half)
            for pool in (self.foreground, self.background)
        ]
        self.order = np.concatenate(draw)

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        if epoch != self.epoch:  # a persistent loader worker meets the next epoch
            self.set_epoch(epoch)
        clip_id = int(self.order[index])
        video, row = (int(x) for x in self.where[clip_id])
        clip = torch.from_numpy(self.cache.read(self.videos[video], row))  # [L, H, W, 3] uint8
        if self.augment:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch * 10_007 + index)
            clip = random_crop_flip(clip, self.crop, generator)
        else:
            clip = center_crop(clip, self.crop)
        label = int(self.labels[clip_id])
        return {
            "inputs": clip.contiguous(),
            "label": max(label, 0),
            "foreground": int(label >= 0),
            "video": video,
            "epoch": self.epoch,
            "index": index,
        }


def random_crop_flip(clip: torch.Tensor, crop: int, generator: torch.Generator) -> torch.Tensor:
    """A random crop x crop window and a horizontal flip (p 0.5), the same for every frame."""
    h, w = clip.shape[1:3]
    if crop > min(h, w):
        raise UserError(f"crop size {crop} is larger than the frames ({w}x{h})")
    top = int(torch.randint(0, h - crop + 1, (1,), generator=generator))
    left = int(torch.randint(0, w - crop + 1, (1,), generator=generator))
    clip = clip[:, top : top + crop, left : left + crop]
    return clip.flip(2) if bool(torch.rand(1, generator=generator) < 0.5) else clip


@torch.no_grad()
def global_video_features(encoder, dataset: ClipDataset, chunk: int, device: torch.device) -> torch.Tensor:
    """[videos, D]: every clip of every video encoded (centre crop), max-pooled over the video."""
    was_training = encoder.training
    encoder.eval()
    out = []
    for video_id in dataset.videos:
        snippets = torch.from_numpy(dataset.cache.read(video_id))
        features = [
            encoder(center_crop(snippets[i : i + chunk], dataset.crop).to(device))
            for i in range(0, len(snippets), chunk)
        ]
        out.append(torch.cat(features).amax(dim=0))
    encoder.train(was_training)
    return torch.stack(out)


def tsp_loss(action: torch.Tensor, region: torch.Tensor, batch: dict) -> dict:
    """TSP's two terms: the action class of foreground clips, foreground vs background of all."""
    foreground = batch["foreground"].bool()
    region_loss = F.cross_entropy(region, batch["foreground"])
    if foreground.any():
        action_loss = F.cross_entropy(action[foreground], batch["label"][foreground])
    else:
        action_loss = action.sum() * 0.0
    with torch.no_grad():
        hits = (action[foreground].argmax(1) == batch["label"][foreground]).float()
        accuracy = hits.mean() if foreground.any() else torch.zeros(())
    return {
        "total": action_loss + region_loss,
        "action": action_loss,
        "region": region_loss,
        "action_acc": accuracy,
    }


def run(
    settings: Settings, *, resume: bool = False, restart: bool = False, progress: Progress = SILENT
) -> TrainSummary:
    """Pretrain the encoder for encoder_train.epochs epochs, then write it in TSP's layout."""
    et, enc = settings.encoder_train, settings.model.encoder
    device, dist = start_run(settings, et)
    dataset = ClipDataset(settings, enc.crop_size)
    # model.encoder.checkpoint is what the detector uses (this run's output, typically)
    encoder = build_encoder(enc.name, et.init_from, enc.frozen_stages, enc.norm_eval).to(device)
    heads = TSPHeads(encoder.out_dim, len(dataset.classes)).to(device)
    trainable = [p for p in encoder.parameters() if p.requires_grad] + list(heads.parameters())
    optimizer = make_optimizer([{"params": trainable, "lr": et.lr}], et.optimizer, et.weight_decay)
    gvf: dict[int, torch.Tensor] = {}

    def step(batch: dict, scale) -> dict:
        epoch = int(batch["epoch"][0])
        if epoch not in gvf:  # once per epoch, with the encoder as it is then
            gvf.clear()
            gvf[epoch] = global_video_features(encoder, dataset, settings.cache.batch_size, device)
        encoder.train()
        action, region = heads(encoder(batch["inputs"]), gvf[epoch][batch["video"]])
        terms = tsp_loss(action, region, batch)
        (terms["total"] * scale).backward()
        return terms

    schedule = torch.optim.lr_scheduler.StepLR(optimizer, et.lr_step, et.lr_gamma)
    size = sum(p.numel() for p in encoder.parameters()) + sum(p.numel() for p in heads.parameters())
    modules = {"model": heads, "encoder": encoder}
    loop = dict(train_set=dataset, step=step, validate=lambda: None)
    job = Job(KIND, modules, optimizer, schedule, **loop, classes=dataset.classes, parameters=size)
    summary = fit(
        job,
        settings,
        et,
        dist,
        device=device,
        resume=resume,
        restart=restart,
        progress=progress,
        notes=dataset.notes,
    )
    output = encoder_output(settings)
    if dist.main and (summary.epochs or not output.is_file()):  # a finished run is not rewritten
        export_tsp(encoder.backbone, heads, output)
        summary.notes.append(f"encoder written in TSP's layout to {output}")
    return summary
