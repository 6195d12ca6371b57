"""What frozen-feature pretraining and end-to-end fine-tuning share: devices, seeding, DDP setup,
optimizers, the step schedule, atomic checkpoints with `last`/`best` pointers, the metrics log.

Reproducibility: every random draw is derived from (seed, epoch[, index, rank]) at the start of an
epoch, so a run resumed from an epoch checkpoint continues exactly as an uninterrupted run would.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stages.errors import UserError

CHECKPOINT_FORMAT = "etad-checkpoint-1"


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device is 'cuda' but no CUDA device is available")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    return seed * 1_000_003 + epoch * 7919 + rank * 104_729 + 17


@dataclass
class Distributed:
    """torchrun's environment: rank, world size, local rank; a single process when absent."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def setup(cls, device: torch.device) -> Distributed:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if device.type == "cuda":
            torch.cuda.set_device(local)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(rank, world, local)

    def device(self, device: torch.device) -> torch.device:
        return torch.device("cuda", self.local_rank) if device.type == "cuda" and self.world > 1 else device

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def mean(self, value: float) -> float:
        """The mean of a number over all ranks (every rank gets it)."""
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return float(t.item()) / self.world

    def gather(self, value: float) -> list[float]:
        """One number from every rank, in rank order (a check that replicas agree)."""
        if self.world == 1:
            return [value]
        t = torch.tensor([value], dtype=torch.float64)
        out = [torch.zeros_like(t) for _ in range(self.world)]
        torch.distributed.all_gather(out, t)
        return [float(x.item()) for x in out]

    def close(self) -> None:
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def weights_checksum(model: torch.nn.Module) -> float:
    """A number that differs when any weight differs (to check that DDP replicas agree)."""
    with torch.no_grad():
        return float(sum((p.double() * (i + 1)).sum() for i, p in enumerate(model.parameters())))


def make_optimizer(groups: list[dict], kind: str, weight_decay: float) -> torch.optim.Optimizer:
    cls = torch.optim.AdamW if kind == "adamw" else torch.optim.Adam
    return cls(groups, weight_decay=weight_decay)


def autocast(device: torch.device, amp: str):
    """Mixed precision on GPU only (bf16 or fp16); a no-op context elsewhere."""
    enabled = amp != "none" and device.type == "cuda"
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype, enabled=enabled)


def save_checkpoint(folder: Path, epoch: int, state: dict, best: bool) -> Path:
    """Write checkpoints/epoch_NNN.pt atomically, then point last.pt (and best.pt) at it (hard links,
    so each pointer is a complete checkpoint that survives the epoch file being deleted)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"epoch_{epoch:03d}.pt"
    tmp = folder / f".{path.name}.tmp{os.getpid()}"
    torch.save({"format": CHECKPOINT_FORMAT, **state}, tmp)
    os.replace(tmp, path)
    for name in ("last.pt", "best.pt") if best else ("last.pt",):
        pointer = folder / name
        link_tmp = folder / f".{name}.tmp{os.getpid()}"
        link_tmp.unlink(missing_ok=True)
        try:
            os.link(path, link_tmp)
        except OSError:
            import shutil

            shutil.copyfile(path, link_tmp)
        os.replace(link_tmp, pointer)
    return path


def load_checkpoint(path: Path) -> dict:
    """A checkpoint written by etad (weights only: no code is unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a truncated or foreign file
        raise UserError(f"{path}: not a loadable checkpoint ({exc.__class__.__name__})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path}: not an etad checkpoint (no '{CHECKPOINT_FORMAT}' format tag)")
    return state


class MetricsLog:
    """JSON lines, one per logged iteration or epoch; appended to on resume."""

    def __init__(self, path: Path, fresh: bool, enabled: bool = True) -> None:
        self.path, self.enabled = path, enabled
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)
            if fresh:
                path.write_text("")

    def write(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


def to_device(batch: dict, device: torch.device) -> dict:
    non_blocking = device.type == "cuda"
    return {k: v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v for k, v in batch.items()}


def loader(
    dataset, batch_size: int, workers: int, shuffle: bool, seed: int, dist: Distributed, device: torch.device
):
    """A DataLoader whose order depends only on (seed, epoch): call `.sampler.set_epoch(e)` or rebuild."""
    sampler = None
    if dist.world > 1:
        sampler = torch.utils.data.DistributedSampler(
            dataset, dist.world, dist.rank, shuffle=shuffle, seed=seed
        )
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        generator=generator,
        persistent_workers=False,
    )
