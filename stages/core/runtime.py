"""What every command that runs a model sets up first: CPU threads, the device, seeds, and
torchrun's process group (DDP), plus the mixed-precision context and moving a batch to the device."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch

from stages.core.errors import UserError


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device is 'cuda' but no CUDA device is available")
    return torch.device(name)


def cores() -> int:
    """The CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def loader_workers(workers: int | None, device: torch.device) -> int:
    """DataLoader workers: the setting; unset, min(cores - 1, 8) feeding a GPU, none on the CPU
    (there the training step already uses every core: measured on 2 cores, a worker made an
    end-to-end epoch of the demo 1.5x slower)."""
    if workers is not None:
        return workers
    return max(0, min(cores() - 1, 8)) if device.type == "cuda" else 0


def use_threads(threads: int | None) -> int:
    """Set torch's CPU threads: `threads`, or every core this process may use."""
    if threads is None:
        threads = cores()
    torch.set_num_threads(threads)
    return threads


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


def autocast(device: torch.device, amp: str):
    """Mixed precision on GPU only (bf16 or fp16); a no-op context elsewhere."""
    enabled = amp != "none" and device.type == "cuda"
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype, enabled=enabled)


def to_device(batch: dict, device: torch.device) -> dict:
    non_blocking = device.type == "cuda"
    return {k: v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v for k, v in batch.items()}
