"""What every command that runs a model sets up first: CPU threads, the device, seeds, and
torchrun's process group (DDP), plus the mixed-precision context and moving a batch to the device."""

from __future__ import annotations

import contextlib
import math
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


def reuse_freed_memory() -> bool:
    """Keep large freed blocks in the process for the next allocation of the same size (glibc).

    By default glibc gives every block over 32 MiB back to the kernel when it is freed, and the next
    one faults each of its pages in again: at inference, whose [proposals, channels] tensors are
    135 MB a batch of 16 videos, those page faults were two thirds of `etad infer`'s time
    (benchmarks/laptop.py, infer_speed). Kept, the same blocks serve every batch: the peak is the
    same, the memory is returned when the process ends. True where the allocator took the setting."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):  # not glibc (macOS, musl): its own policy stays
        return False
    if mallopt is None:
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    largest = 2**31 - 1
    return all(
        mallopt(option, value) == 1
        for option, value in (
            (m_mmap_threshold, largest),
            (m_trim_threshold, largest),
            (m_top_pad, 64 * 2**20),
        )
    )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    return seed * 1_000_003 + epoch * 7919 + rank * 104_729 + 17


BUCKET = 1 << 24  # gradient elements per all-reduce: fewer calls, at most 64 MB more memory (fp32)


@dataclass
class Distributed:
    """torchrun's environment: rank, world size, local rank; a single process when absent.

    Collectives run on the backend's device (NCCL takes CUDA tensors only; gloo the CPU's). There is
    no DistributedDataParallel wrapper: each rank runs its step's backward passes (however many a
    grad mode takes), then `average_gradients` reduces every gradient once, which holds for every
    grad mode and for a model with nothing to train."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    on: torch.device = torch.device("cpu")  # where collectives put their tensors

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
        on = torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(local)
            on = torch.device("cuda", local)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(rank, world, local, on)

    def device(self, device: torch.device) -> torch.device:
        return torch.device("cuda", self.local_rank) if device.type == "cuda" and self.world > 1 else device

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def mean(self, value: float) -> float:
        """The mean of a number over all ranks (every rank gets it)."""
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.on)
        torch.distributed.all_reduce(t)
        return float(t.item()) / self.world

    def all_finite(self, value: float) -> bool:
        """Whether the number is finite on every rank (so that all stop together, none waits)."""
        return self.mean(0.0 if math.isfinite(value) else 1.0) == 0.0

    def gather(self, value: float) -> list[float]:
        """One number from every rank, in rank order (a check that replicas agree)."""
        if self.world == 1:
            return [value]
        t = torch.tensor([value], dtype=torch.float64, device=self.on)
        out = [torch.zeros_like(t) for _ in range(self.world)]
        torch.distributed.all_gather(out, t)
        return [float(x.item()) for x in out]

    def average_gradients(self, params: list[torch.Tensor], accumulate: int = 1) -> None:
        """Every gradient summed over the ranks and divided by world x accumulate: the mean over
        the step's micro-batches of all ranks. A parameter without a gradient on some rank counts
        zero there; one without a gradient anywhere keeps none (the optimizer skips it)."""
        if self.world > 1:
            has = torch.tensor([float(p.grad is not None) for p in params], device=self.on)
            torch.distributed.all_reduce(has)
            for p, held in zip(params, has.tolist()):
                if held and p.grad is None:
                    p.grad = torch.zeros_like(p)
            grads = [p.grad for p in params if p.grad is not None]
            for bucket in _buckets(grads):
                flat = torch.cat([g.reshape(-1) for g in bucket])
                torch.distributed.all_reduce(flat)
                for g, part in zip(bucket, flat.split([g.numel() for g in bucket])):
                    g.copy_(part.view_as(g))
        if self.world * accumulate > 1:
            for p in params:
                if p.grad is not None:
                    p.grad.div_(self.world * accumulate)

    def broadcast(self, modules, *, buffers_only: bool = False) -> None:
        """Rank 0's weights (and buffers: BatchNorm statistics) to every rank: the same start, and
        the same statistics as the checkpoint, which rank 0 writes."""
        if self.world == 1:
            return
        for module in modules:
            tensors = list(module.buffers()) + ([] if buffers_only else list(module.parameters()))
            for t in tensors:
                torch.distributed.broadcast(t.data, 0)

    def close(self) -> None:
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _buckets(grads: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Gradients grouped by dtype and device, about BUCKET elements a group, in order."""
    out: list[list[torch.Tensor]] = []
    size, key = 0, None
    for g in grads:
        if not out or (g.dtype, g.device) != key or size + g.numel() > BUCKET:
            out.append([])
            size, key = 0, (g.dtype, g.device)
        out[-1].append(g)
        size += g.numel()
    return out


def weights_checksum(model: torch.nn.Module) -> float:
    """A number that differs when any weight differs (to check that DDP replicas agree)."""
    with torch.no_grad():
        return float(sum((p.double() * (i + 1)).sum() for i, p in enumerate(model.parameters())))


class PhaseMemory:
    """Peak CUDA memory of each phase of a step (encoder forward, detector, sampled backward,
    refit), the peak statistics reset when a phase starts, so that a figure is that phase's own
    (allocated at its start plus what it added). Off CUDA it records nothing."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peaks_mib = device, {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        if self.device.type != "cuda":
            yield
            return
        torch.cuda.reset_peak_memory_stats(self.device)
        yield
        peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        self.peaks_mib[name] = max(self.peaks_mib.get(name, 0.0), peak)


def autocast(device: torch.device, amp: str):
    """Mixed precision on GPU only (bf16 or fp16); a no-op context elsewhere."""
    enabled = amp != "none" and device.type == "cuda"
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype, enabled=enabled)


def to_device(batch: dict, device: torch.device) -> dict:
    non_blocking = device.type == "cuda"
    return {k: v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v for k, v in batch.items()}
