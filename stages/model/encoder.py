"""Video encoders: a snippet of frames in, one feature vector out (docs/method.md §2).

- `r2plus1d_34_tsp`: TSP's R(2+1)D-34 (torchvision VideoResNet blocks, layers [3,4,6,3], BatchNorm
  eps 1e-3 / momentum 0.9, fc removed, mean-pooled 512-d), loading the public TSP checkpoint layout.
- `r2plus1d_18`: torchvision's R(2+1)D-18 (512-d), random init (no downloads here).
- `tiny`: a 3-stage (2+1)D network with 16/32/64 channels (64-d) for CPU runs: the demo and tests.

All take uint8 clips [N, L, H, W, 3] (already cropped), normalise with the TSP statistics on the
0-255 scale (docs/method.md §2) and return [N, D]. `frozen_stages` freezes the stem plus the first k
residual stages; `norm_eval` keeps every BatchNorm in eval mode (running statistics frozen).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision.models.video.resnet import BasicBlock, Conv2Plus1D, R2Plus1dStem, VideoResNet, r2plus1d_18

from stages.core.checkpoints import load_encoder_weights
from stages.core.errors import UserError

MEAN = (110.2008, 100.63983, 95.99475)  # TSP [0,1] statistics x 255 (docs/method.md §2)
STD = (58.14765, 56.46975, 55.332195)


def _r2plus1d_34() -> VideoResNet:
    net = VideoResNet(block=BasicBlock, conv_makers=[Conv2Plus1D] * 4, layers=[3, 4, 6, 3], stem=R2Plus1dStem)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm3d):  # TSP's "Caffe2" BatchNorm settings
            module.eps, module.momentum = 1e-3, 0.9
    net.fc = nn.Identity()
    return net


def _r2plus1d_18() -> VideoResNet:
    net = r2plus1d_18(weights=None)
    net.fc = nn.Identity()
    return net


def _downsample(inplanes: int, planes: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(inplanes, planes, 1, stride=2, bias=False), nn.BatchNorm3d(planes))


class TinyR2Plus1D(nn.Module):
    """A small R(2+1)D (stem + 3 residual stages of one block, 16/32/64 channels) for CPU runs."""

    def __init__(self) -> None:
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


def residual_stages(backbone: nn.Module, frozen_stages: int) -> list[nn.Module]:
    """The freezing rule of ResNet-like backbones: the stem and the first `frozen_stages` of
    layer1..layer4 (nothing when frozen_stages < 0)."""
    if frozen_stages < 0:
        return []
    names = ["stem"] + [f"layer{i}" for i in range(1, frozen_stages + 1)]
    return [getattr(backbone, n) for n in names if hasattr(backbone, n)]


@dataclass(frozen=True)
class EncoderSpec:
    """Everything etad needs to know about one encoder."""

    build: Callable[[], nn.Module]  # a backbone: float clips [N, 3, L, H, W] (normalised) -> [N, out_dim]
    out_dim: int  # feature width: model.in_channels when that is unset
    mean: tuple[float, float, float] = MEAN  # per-channel normalisation on the 0-255 scale
    std: tuple[float, float, float] = STD
    frozen: Callable[[nn.Module, int], list[nn.Module]] = residual_stages  # (backbone, frozen_stages)
    checkpoint_format: str | None = "tsp"  # its weight files: a key of ENCODER_FORMATS (core/checkpoints.py)


# The encoder registry: `model.encoder.name` is a key of this dict. To add an encoder, add an entry
# (docs/architecture.md has a worked example).
ENCODERS: dict[str, EncoderSpec] = {
    "r2plus1d_34_tsp": EncoderSpec(_r2plus1d_34, 512),
    "r2plus1d_18": EncoderSpec(_r2plus1d_18, 512),
    "tiny": EncoderSpec(TinyR2Plus1D, 64),
}


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
        return self.spec.frozen(self.backbone, self.frozen_stages)

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
        load_encoder_weights(encoder.backbone, encoder.spec.checkpoint_format, checkpoint)
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


def clips_that_fit(encoder: SnippetEncoder, clip_shape: tuple[int, int], device: torch.device, *,
                   share: float = 0.5, cpu_default: int = 32) -> int:  # fmt: skip
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
