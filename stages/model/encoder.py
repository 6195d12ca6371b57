"""Video encoders: a snippet of frames in, one feature vector out (docs/method.md §2,
docs/encoders.md).

ENCODERS is the registry: one EncoderSpec per name says everything etad needs about an encoder:
its builder, feature width, the clip shape it accepts, its normalisation, its stages (what
`frozen_stages` counts), its checkpoint formats and whether it has BatchNorm (`norm_eval`).
- `r2plus1d_34_tsp`: TSP's R(2+1)D-34 (torchvision VideoResNet blocks, layers [3,4,6,3], BatchNorm
  eps 1e-3 / momentum 0.9), loading the public TSP checkpoint layout.
- torchvision's video models under their builder names (r3d_18, mc3_18, r2plus1d_18, s3d,
  mvit_v1_b, mvit_v2_s, swin3d_t/s/b), loading torchvision's own weight files.
- `videomae_s/b/l` through Hugging Face transformers (`pip install 'etad[hf]'`), and
  `videomae_tiny`, etad's small one for CPU runs.
- `tiny`: a 3-stage (2+1)D network with 16/32/64 channels (64-d) for CPU runs: the demo and tests.

All take uint8 clips [N, L, H, W, 3] (already cropped), normalise with their statistics on the
0-255 scale and return [N, D]. `frozen_stages` k freezes the first part (the stem) plus the first
k stages (-1: nothing); `norm_eval` keeps every BatchNorm in eval mode (running statistics frozen).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from torch import nn

from stages.core.checkpoints import ENCODER_FORMATS, load_encoder_weights
from stages.core.errors import UserError
from stages.model import video_backbones as vb

MEAN = (110.2008, 100.63983, 95.99475)  # TSP [0,1] statistics x 255 (docs/method.md §2)
STD = (58.14765, 56.46975, 55.332195)
KINETICS = (MEAN, STD)  # torchvision's R(2+1)D, R3D, MC3 and S3D use TSP's Kinetics statistics
MVIT = ((114.75, 114.75, 114.75), (57.375, 57.375, 57.375))  # 0.45 / 0.225 x 255
IMAGENET = ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375))  # Swin3D and VideoMAE


def _r2plus1d_34() -> nn.Module:
    # torchvision is imported where a network is built: importing it costs 2-3 s (it loads
    # torch._dynamo), which commands that build no network (extract, cache snippets, eval) skip
    from torchvision.models.video.resnet import BasicBlock, Conv2Plus1D, R2Plus1dStem, VideoResNet

    net = VideoResNet(block=BasicBlock, conv_makers=[Conv2Plus1D] * 4, layers=[3, 4, 6, 3], stem=R2Plus1dStem)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm3d):  # TSP's "Caffe2" BatchNorm settings
            module.eps, module.momentum = 1e-3, 0.9
    net.fc = nn.Identity()
    return net


def _downsample(inplanes: int, planes: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(inplanes, planes, 1, stride=2, bias=False), nn.BatchNorm3d(planes))


class TinyR2Plus1D(nn.Module):
    """A small R(2+1)D (stem + 3 residual stages of one block, 16/32/64 channels) for CPU runs."""

    def __init__(self) -> None:
        from torchvision.models.video.resnet import BasicBlock, Conv2Plus1D

        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv3d(3, 16, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1), bias=False),
            nn.BatchNorm3d(16),
            nn.ReLU(inplace=True),
            nn.Conv3d(16, 16, (3, 1, 1), padding=(1, 0, 0), bias=False),
            nn.BatchNorm3d(16),
            nn.ReLU(inplace=True),
        )
        self.layer1 = BasicBlock(16, 16, Conv2Plus1D)
        self.layer2 = BasicBlock(16, 32, Conv2Plus1D, stride=2, downsample=_downsample(16, 32))
        self.layer3 = BasicBlock(32, 64, Conv2Plus1D, stride=2, downsample=_downsample(32, 64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return x.mean(dim=(2, 3, 4))


@dataclass(frozen=True)
class ClipShape:
    """The clips an encoder accepts: frames and square crop, each fixed or a minimum and a multiple."""

    frames: int | None = None  # exactly this many frames (fixed positional embeddings); None: any
    min_frames: int = 1
    frame_multiple: int = 1  # tubelets: frames divisible by the tubelet length
    crop: int | None = None
    min_crop: int = 16
    crop_multiple: int = 1
    example: tuple[int, int] = (8, 32)  # a small (frames, crop) it takes: the tests' shape

    def problem(self, frames: int, crop: int) -> str | None:
        """Why (frames, crop) does not fit, or None."""
        if (
            (self.frames is not None and frames != self.frames)
            or frames < self.min_frames
            or frames % self.frame_multiple
        ):
            return f"frames {self.describe_frames()}"
        if (self.crop is not None and crop != self.crop) or crop < self.min_crop or crop % self.crop_multiple:
            return f"crop {self.describe_crop()}"
        return None

    def describe_frames(self) -> str:
        if self.frames is not None:
            return str(self.frames)
        return f">= {self.min_frames}" + (
            f", a multiple of {self.frame_multiple}" if self.frame_multiple > 1 else ""
        )

    def describe_crop(self) -> str:
        if self.crop is not None:
            return str(self.crop)
        return f">= {self.min_crop}" + (
            f", a multiple of {self.crop_multiple}" if self.crop_multiple > 1 else ""
        )

    def describe(self) -> str:
        return f"frames {self.describe_frames()}, crop {self.describe_crop()}"

    def short(self) -> str:
        """'16 x 224' (fixed), '14+ x 224+' (at least), '2n x 32n' (multiples)."""

        def one(fixed: int | None, least: int, multiple: int) -> str:
            return str(fixed) if fixed is not None else f"{multiple}n" if multiple > 1 else f"{least}+"

        frames = one(self.frames, self.min_frames, self.frame_multiple)
        return f"{frames} x {one(self.crop, self.min_crop, self.crop_multiple)}"


@dataclass(frozen=True)
class EncoderSpec:
    """Everything etad needs to know about one encoder."""

    build: Callable[[], nn.Module]  # a backbone: float clips [N, 3, L, H, W] (normalised) -> [N, out_dim]
    out_dim: int  # feature width: model.in_channels when that is unset
    stages: Callable[[nn.Module], list[list[nn.Module]]] = vb.resnet_stages  # stem first, then the stages
    clip: ClipShape = field(default_factory=ClipShape)
    mean: tuple[float, float, float] = MEAN  # per-channel normalisation on the 0-255 scale
    std: tuple[float, float, float] = STD
    formats: tuple[str, ...] = ("tsp",)  # its weight files: keys of LOADERS, tried in order ("tsp" is
    # also the layout etad writes: `etad train --encoder`, so every encoder lists it)
    batchnorm: bool = True  # has BatchNorm (norm_eval matters; sampled backward needs it frozen)
    family: str = "cnn"  # for `etad encoders` and the memory benchmark: cnn or transformer
    n_stages: int = 4  # what frozen_stages may be at most (the stages after the stem)

    def frozen_problem(self, frozen_stages: int) -> str | None:
        if not -1 <= frozen_stages <= self.n_stages:
            return f"frozen_stages {frozen_stages}: expected -1 (none) to {self.n_stages} (all)"
        return None


LOADERS = {**ENCODER_FORMATS, "huggingface": vb.load_videomae}  # format name -> loader(backbone, path)


def _torchvision(
    name: str,
    head: str,
    width: int,
    *,
    stages,
    clip: ClipShape,
    norm,
    n_stages: int,
    transformer: bool = False,
) -> EncoderSpec:
    """A torchvision video model: its builder name, the head attribute it loses, its width."""
    build = partial(vb.torchvision_video, name, head)
    return EncoderSpec(
        build,
        width,
        stages=stages,
        clip=clip,
        mean=norm[0],
        std=norm[1],
        formats=("torchvision", "tsp"),
        batchnorm=not transformer,
        family="transformer" if transformer else "cnn",
        n_stages=n_stages,
    )


def _videomae(size: str, clip: ClipShape) -> EncoderSpec:
    config = vb.VIDEOMAE_SIZES[size]
    return EncoderSpec(
        partial(vb.VideoMAE, size),
        config["hidden_size"],
        stages=vb.videomae_stages,
        clip=clip,
        mean=IMAGENET[0],
        std=IMAGENET[1],
        formats=("huggingface", "tsp"),
        batchnorm=False,
        family="transformer",
        n_stages=config["num_hidden_layers"],
    )


RESNET_CLIP = ClipShape(min_frames=1, min_crop=16, example=(8, 32))
S3D_CLIP = ClipShape(min_frames=14, min_crop=224, example=(16, 224))  # its final 2x7x7 average pool
MVIT_CLIP = ClipShape(frames=16, crop=224, example=(16, 224))  # positional embeddings of 16 x 224 x 224
SWIN_CLIP = ClipShape(min_frames=2, frame_multiple=2, min_crop=32, crop_multiple=32, example=(4, 64))
VIDEOMAE_CLIP = ClipShape(frames=16, crop=224, frame_multiple=2, example=(16, 224))  # 2 x 16 x 16 tubelets
RESNET = {"stages": vb.resnet_stages, "clip": RESNET_CLIP, "norm": KINETICS, "n_stages": 4}
MVIT_ = {"stages": vb.mvit_stages, "clip": MVIT_CLIP, "norm": MVIT, "n_stages": 16, "transformer": True}
SWIN = {"stages": vb.swin3d_stages, "clip": SWIN_CLIP, "norm": IMAGENET, "n_stages": 4, "transformer": True}

# The encoder registry: `model.encoder.name` is a key of this dict. To add an encoder, add an
# entry (docs/encoders.md: one module + its test).
ENCODERS: dict[str, EncoderSpec] = {
    "r2plus1d_34_tsp": EncoderSpec(_r2plus1d_34, 512, clip=RESNET_CLIP, formats=("tsp", "torchvision")),
    "r2plus1d_18": _torchvision("r2plus1d_18", "fc", 512, **RESNET),
    "r3d_18": _torchvision("r3d_18", "fc", 512, **RESNET),
    "mc3_18": _torchvision("mc3_18", "fc", 512, **RESNET),
    "s3d": _torchvision(
        "s3d", "classifier", 1024, stages=vb.s3d_stages, clip=S3D_CLIP, norm=KINETICS, n_stages=3
    ),
    "mvit_v1_b": _torchvision("mvit_v1_b", "head", 768, **MVIT_),
    "mvit_v2_s": _torchvision("mvit_v2_s", "head", 768, **MVIT_),
    "swin3d_t": _torchvision("swin3d_t", "head", 768, **SWIN),
    "swin3d_s": _torchvision("swin3d_s", "head", 768, **SWIN),
    "swin3d_b": _torchvision("swin3d_b", "head", 1024, **SWIN),
    "videomae_s": _videomae("videomae_s", VIDEOMAE_CLIP),
    "videomae_b": _videomae("videomae_b", VIDEOMAE_CLIP),
    "videomae_l": _videomae("videomae_l", VIDEOMAE_CLIP),
    "videomae_tiny": _videomae(
        "videomae_tiny", ClipShape(frames=8, crop=32, frame_multiple=2, example=(8, 32))
    ),
    "tiny": EncoderSpec(TinyR2Plus1D, 64, clip=RESNET_CLIP, n_stages=3),
}


def describe_encoders() -> list[dict]:
    """The registry as `etad encoders` lists it: each encoder built once on the meta device (shapes
    only: no memory, no initialisation) to count its parameters; VideoMAE's count is None where
    transformers is not installed."""
    rows = []
    for name, spec in ENCODERS.items():
        try:
            with torch.device("meta"):
                parameters = sum(p.numel() for p in spec.build().parameters())
        except UserError:  # an optional extra that is not installed
            parameters = None
        rows.append(
            {
                "name": name,
                "family": spec.family,
                "parameters": parameters,
                "width": spec.out_dim,
                "clip": spec.clip.describe(),
                "clip_short": spec.clip.short(),
                "stages": spec.n_stages,
                "checkpoint_formats": list(spec.formats),
                "batchnorm": spec.batchnorm,
                "mean": list(spec.mean),
                "std": list(spec.std),
            }
        )
    return rows


def encoder_spec(name: str) -> EncoderSpec:
    if name not in ENCODERS:
        raise UserError(f"unknown encoder {name!r}; expected one of {', '.join(ENCODERS)}")
    return ENCODERS[name]


class SnippetEncoder(nn.Module):
    """Normalise uint8 clips [N, L, H, W, 3] and encode them to [N, D]."""

    def __init__(self, name: str, frozen_stages: int = -1, norm_eval: bool = False) -> None:
        super().__init__()
        self.spec = encoder_spec(name)
        self.name, self.out_dim = name, self.spec.out_dim
        self.backbone = self.spec.build()
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.register_buffer("mean", torch.tensor(self.spec.mean).view(1, 3, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.spec.std).view(1, 3, 1, 1, 1), persistent=False)
        for module in self.frozen_modules():
            for p in module.parameters():
                p.requires_grad_(False)

    def frozen_modules(self) -> list[nn.Module]:
        """The stem and the first `frozen_stages` stages (none for -1)."""
        if self.frozen_stages < 0:
            return []
        return [m for stage in self.spec.stages(self.backbone)[: self.frozen_stages + 1] for m in stage]

    def train(self, mode: bool = True) -> SnippetEncoder:
        """Train mode, except that frozen stages (and, with norm_eval, every BatchNorm) stay in eval mode."""
        super().train(mode)
        if mode:
            for module in self.frozen_modules():
                module.eval()
            if self.norm_eval:
                for module in self.modules():
                    if isinstance(module, nn.modules.batchnorm._BatchNorm):
                        module.eval()
        return self

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        x = clips.permute(0, 4, 1, 2, 3).to(self.mean.dtype if not clips.is_floating_point() else clips.dtype)
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return self.backbone(x)


def require_crop_fits(size: int, height: int, width: int, key: str = "model.encoder.crop_size") -> None:
    """A crop larger than the frames is a settings error, found before the first video (not one
    failure per video)."""
    if size > min(height, width):
        raise UserError(
            f"{key} {size} is larger than the frames (data.frame_height {height} x "
            f"data.frame_width {width}); lower it or raise the frame size"
        )


def center_crop(clips: torch.Tensor, size: int) -> torch.Tensor:
    """Centre crop the spatial dims of clips [..., H, W, 3] to size x size (test-time crop)."""
    height, width = clips.shape[-3], clips.shape[-2]
    if size > min(height, width):
        raise UserError(f"crop size {size} is larger than the frames ({width}x{height})")
    top, left = (height - size) // 2, (width - size) // 2
    return clips[..., top : top + size, left : left + size, :]


def build_encoder(
    name: str, checkpoint: Path | None = None, frozen_stages: int = -1, norm_eval: bool = False
) -> SnippetEncoder:
    encoder = SnippetEncoder(name, frozen_stages, norm_eval)
    if checkpoint is not None:
        load_encoder_weights(encoder.backbone, {f: LOADERS[f] for f in encoder.spec.formats}, checkpoint)
    return encoder


def encode_chunks(
    encoder: SnippetEncoder,
    snippets: torch.Tensor,
    chunk_size: int,
    crop: int,
    *,
    device: torch.device,
    max_clips: int | None = None,
) -> torch.Tensor:
    """Stage 1 of the ETAD iteration (and end-to-end inference): uint8 snippets [B, T, L, H, W, 3]
    -> features [B, D, T], `chunk_size` snippets of every video at a time, without
    gradients, so activation memory is that of one chunk however long the videos are; at most
    `max_clips` clips per encoder call (B x chunk_size otherwise: inference bounds its memory so)."""
    b, t = snippets.shape[:2]
    out = []
    with torch.no_grad():
        for start in range(0, t, chunk_size):
            clips = center_crop(snippets[:, start : start + chunk_size], crop).to(device, non_blocking=True)
            n = clips.shape[1]
            flat = clips.flatten(0, 1)
            parts = flat.split(max_clips) if max_clips else [flat]
            out.append(torch.cat([encoder(part) for part in parts]).view(b, n, -1))
    return torch.cat(out, dim=1).transpose(1, 2).contiguous()


def clips_that_fit(
    encoder: SnippetEncoder,
    clip_shape: tuple[int, int],
    device: torch.device,
    *,
    share: float = 0.5,
    cpu_default: int = 32,
) -> int:
    """Clips per no-grad encoder call that fit in `share` of the free GPU memory: the activation
    memory of 2 clips (frames, crop) measured once, then scaled; `cpu_default` off CUDA."""
    if device.type != "cuda":
        return cpu_default
    frames, crop = clip_shape
    probe = torch.zeros(2, frames, crop, crop, 3, dtype=torch.uint8, device=device)
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    with torch.no_grad():
        encoder(probe)
    per_clip = max((torch.cuda.max_memory_allocated(device) - base) / 2, 1.0)
    free, _ = torch.cuda.mem_get_info(device)
    return max(1, min(4096, int(share * free / per_clip)))
