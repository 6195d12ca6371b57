"""torchvision's video models as snippet encoders: each built without weights (nothing downloads;
`model.encoder.checkpoint` loads torchvision's own weight file), its classification head replaced
by the identity so it returns pooled features, and its trunk split into the stages `frozen_stages`
counts (docs/encoders.md). Also VideoMAE through Hugging Face `transformers` (the `hf` extra)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from stages.core.checkpoints import load_strictly, read_weights_file
from stages.core.errors import UserError


def torchvision_video(name: str, head: str) -> nn.Module:
    """torchvision.models.video.<name>(weights=None) with its `head` attribute made the identity."""
    from torchvision.models import video

    net = getattr(video, name)(weights=None)
    setattr(net, head, nn.Identity())
    return net


def resnet_stages(net: nn.Module) -> list[list[nn.Module]]:
    """VideoResNet (r3d_18, mc3_18, r2plus1d_18 and TSP's R(2+1)D-34): stem, layer1..layer4."""
    return [[getattr(net, n)] for n in ("stem", "layer1", "layer2", "layer3", "layer4") if hasattr(net, n)]


def s3d_stages(net: nn.Module) -> list[list[nn.Module]]:
    """S3D: the stem convolutions, then the inception blocks between its temporal poolings."""
    f = net.features
    return [list(f[0:5]), list(f[5:7]), list(f[7:13]), list(f[13:16])]


def mvit_stages(net: nn.Module) -> list[list[nn.Module]]:
    """MViT: the patch projection and positional encoding, then each of its 16 blocks."""
    return [[net.conv_proj, net.pos_encoding], *[[b] for b in net.blocks]]


def swin3d_stages(net: nn.Module) -> list[list[nn.Module]]:
    """Video Swin: the patch embedding, then its 4 stages (each after its patch merging)."""
    f = net.features
    return [[net.patch_embed], [f[0]], [f[1], f[2]], [f[3], f[4]], [f[5], f[6]]]


# VideoMAE sizes (Tong et al. 2022): ViT-S/B/L on 16 frames of 224 x 224, tubelets 2 x 16 x 16; the
# tiny one is etad's, for CPU tests and the demo's scale
VIDEOMAE_SIZES = {
    "videomae_s": {
        "hidden_size": 384,
        "num_hidden_layers": 12,
        "num_attention_heads": 6,
        "intermediate_size": 1536,
    },
    "videomae_b": {
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
    },
    "videomae_l": {
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "intermediate_size": 4096,
    },
    "videomae_tiny": {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 128,
        "image_size": 32,
        "patch_size": 8,
        "num_frames": 8,
    },
}


def _transformers():
    try:
        import transformers
    except ImportError:
        raise UserError("VideoMAE encoders need Hugging Face transformers: pip install 'etad[hf]'") from None
    return transformers


class VideoMAE(nn.Module):
    """A VideoMAE encoder: clips [N, 3, L, H, W] -> the mean of its last tokens [N, hidden]."""

    def __init__(self, size: str) -> None:
        super().__init__()
        t = _transformers()
        shape = {
            "image_size": 224,
            "patch_size": 16,
            "num_frames": 16,
            "tubelet_size": 2,
            "use_mean_pooling": True,
            **VIDEOMAE_SIZES[size],
        }
        if torch.get_default_device().type == "meta":  # shapes only (`etad encoders` counts parameters):
            # the sinusoid position table is no parameter, and transformers computes it in Python
            # (3 s at 16 x 224 x 224): made for the smallest clip, the parameters are the same
            shape.update(image_size=shape["patch_size"], num_frames=shape["tubelet_size"])
        self.model = t.VideoMAEModel(t.VideoMAEConfig(**shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.model(pixel_values=x.transpose(1, 2)).last_hidden_state  # HF takes [N, L, 3, H, W]
        return tokens.mean(dim=1)


def videomae_stages(net: VideoMAE) -> list[list[nn.Module]]:
    """VideoMAE: the patch embedding, then each transformer block."""
    return [[net.model.embeddings], *[[block] for block in net.model.encoder.layer]]


def load_videomae(backbone: nn.Module, path: Path) -> None:
    """A Hugging Face VideoMAE folder (config.json + weights, as `save_pretrained` writes it, e.g.
    MCG-NJU/videomae-base downloaded beforehand) or a single weight file of VideoMAEModel keys;
    the pretraining decoder and classifier keys are left out."""
    t = _transformers()
    t.utils.logging.disable_progress_bar()  # etad shows its own progress
    path = Path(path)
    if path.is_dir():
        try:
            loaded = t.VideoMAEModel.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise UserError(f"{path}: not a VideoMAE folder ({str(exc).splitlines()[0][:120]})") from None
        state = loaded.state_dict()
    else:
        state = read_weights_file(path)
        if not isinstance(state, dict):
            raise UserError(f"{path}: expected a state dict of VideoMAE weights")
    state = {
        k.removeprefix("videomae."): v
        for k, v in state.items()
        if not k.startswith(("decoder.", "encoder_to_decoder", "classifier.", "fc_norm."))
    }
    size = "; a folder of another size?"
    load_strictly(backbone.model, state, path, other="VideoMAE size", hint=size)
