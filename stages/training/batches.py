"""Which items each training process takes, step by step (docs/train.md, "Several GPUs").

Everything is drawn from (seed, epoch) alone, never from a process's own state: W ranks with
`batch` items per micro-batch and `accumulate` micro-batches per optimizer step take, at every
step, the same W x accumulate x batch items as one process with accumulate W x accumulate, cut
into the same micro-batches. With the per-item draws (seeded by (seed, epoch, item)) and the
per-micro-batch seed of the losses, a 2-rank run then equals a 1-rank run (a test).
"""

from __future__ import annotations

import numpy as np
import torch

from stages.core.runtime import epoch_seed


def rank_batches(
    n: int,
    batch: int,
    *,
    world: int = 1,
    rank: int = 0,
    accumulate: int = 1,
    seed: int = 0,
    epoch: int = 0,
    shuffle: bool = True,
) -> list[list[int]]:
    """This rank's micro-batches of one epoch, in order.

    Training (`shuffle`): a permutation of the n items from (seed, epoch), cut into blocks of
    `batch`; micro-batch i of rank r is block i * world + r. Only whole optimizer steps are taken
    (world x accumulate x batch items each, the rest of the epoch dropped, as the original drops
    its last incomplete batch); with fewer items than one step, items repeat to make one.
    Evaluation: the items in order, rank r taking every world-th (wrapping around so that every
    rank has as many), in batches of `batch`, the last one short."""
    if not shuffle:
        per_rank = -(-n // world)
        mine = [(rank + world * k) % n for k in range(per_rank)]
        return [mine[i : i + batch] for i in range(0, len(mine), batch)]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed(seed, epoch))).tolist()
    per_step = world * accumulate * batch
    steps = max(n // per_step, 1)
    order = (order * -(-per_step // n))[: steps * per_step] if n < per_step else order[: steps * per_step]
    blocks = [order[i : i + batch] for i in range(0, len(order), batch)]
    return blocks[rank::world]


def micro_batch_seed(seed: int, epoch: int, micro_batch: int) -> int:
    """The seed of torch's global generator for one micro-batch (the losses' negative sampling):
    micro-batch m of the epoch counts across ranks (m = (step x accumulate + a) x world + rank)."""
    return int(np.random.SeedSequence([seed, epoch, micro_batch, 29]).generate_state(1)[0])


class EpochBatches(torch.utils.data.Sampler):
    """A DataLoader batch sampler over `rank_batches` that yields (epoch, item) keys: the epoch
    travels with each item, so that persistent loader workers draw the right epoch's randomness."""

    def __init__(
        self, n: int, batch: int, *, world: int, rank: int, accumulate: int, seed: int, shuffle: bool
    ) -> None:
        self.args = dict(
            n=n, batch=batch, world=world, rank=rank, accumulate=accumulate, seed=seed, shuffle=shuffle
        )
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        for block in rank_batches(**self.args, epoch=self.epoch):
            yield [(self.epoch, item) for item in block]

    def __len__(self) -> int:
        return len(rank_batches(**self.args, epoch=0))
