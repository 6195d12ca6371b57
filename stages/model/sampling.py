"""Random choices made during training, as pure functions of a torch.Generator:
which proposals of the dense map a video trains on (spec 4) and which snippets an end-to-end
iteration back-propagates into the encoder (spec 2.3)."""

from __future__ import annotations

import math

import torch


def sample_proposals(
    t: int, max_duration: int, strategy: str, ratio: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Indices into `proposal_map(t, max_duration)` (map order) of the proposals to train on.

    random: int(N * ratio) cells without replacement, then shuffled;
    grid:   a fixed lattice with step sqrt(1 / ratio) over (duration, start);
    block:  the valid cells of a random square block of side int(sqrt(K)), topped up with random
            other cells so that every video trains on exactly K proposals (the batch stays square).
    """
    d_max = min(max_duration, t)
    d, s = torch.meshgrid(torch.arange(d_max), torch.arange(t), indexing="ij")
    valid = ((s + d) < t).flatten()
    cell_to_index = torch.full((d_max * t,), -1, dtype=torch.long)
    cell_to_index[valid] = torch.arange(int(valid.sum()))
    n = int(valid.sum())
    k = max(1, int(n * ratio))
    if strategy == "random":
        chosen = torch.randperm(n, generator=generator)[:k]
        chosen = chosen.sort().values  # map order, then shuffled (as the original)
        return chosen[torch.randperm(k, generator=generator)]
    if strategy == "grid":
        step = math.sqrt(1 / ratio)
        rows = torch.arange(1, d_max, step).round().long().unique()
        cols = torch.arange(1, t, step).round().long().unique()
        rows, cols = rows[rows < d_max], cols[cols < t]  # the last lattice value can round to T
        cells = (rows[:, None] * t + cols[None, :]).flatten()
        picked = cell_to_index[cells]
        return picked[picked >= 0]
    if strategy == "block":
        side = max(1, int(math.sqrt(k)))
        d0 = int(torch.randint(0, max(1, d_max - side + 1), (1,), generator=generator))
        t0 = int(torch.randint(0, max(1, t - side + 1), (1,), generator=generator))
        dd, tt = torch.meshgrid(
            torch.arange(d0, min(d0 + side, d_max)), torch.arange(t0, min(t0 + side, t)), indexing="ij"
        )
        picked = cell_to_index[(dd * t + tt).flatten()]
        picked = picked[picked >= 0][:k]
        if len(picked) < k:
            rest = torch.ones(n, dtype=torch.bool)
            rest[picked] = False
            others = rest.nonzero().squeeze(1)
            others = others[torch.randperm(len(others), generator=generator)[: k - len(picked)]]
            picked = torch.cat([picked, others])
        return picked
    raise ValueError(f"unknown proposal sampling {strategy!r}")


def chunks_to_backprop(n_snippets: int, ratio: float, chunk_size: int) -> int:
    """How many chunks of `chunk_size` snippets get a gradient: int(N * ratio / chunk + 0.99), as
    the original (ratio 0.3 of 128 snippets in chunks of 4 -> 10 chunks = 40 snippets)."""
    return min(math.ceil(n_snippets / chunk_size), int(n_snippets * ratio / chunk_size + 0.99))


def sample_snippets(
    n_snippets: int, ratio: float, chunk_size: int, strategy: str, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Snippet indices [n_chunks, chunk_size] that are re-forwarded with gradients.

    random:  a random permutation, cut into consecutive groups (the original);
    uniform: evenly spaced snippets over the video;
    block:   one random run of consecutive snippets.
    Indices past the end (when chunk_size does not divide n) are dropped by the caller via -1.
    """
    n_chunks = chunks_to_backprop(n_snippets, ratio, chunk_size)
    m = min(n_chunks * chunk_size, n_snippets)
    if strategy == "random":
        picked = torch.randperm(n_snippets, generator=generator)[:m]
    elif strategy == "uniform":
        picked = torch.linspace(0, n_snippets - 1, m).round().long().unique()
        picked = torch.cat([picked, torch.full((m - len(picked),), -1, dtype=torch.long)])
    elif strategy == "block":
        start = int(torch.randint(0, n_snippets - m + 1, (1,), generator=generator))
        picked = torch.arange(start, start + m)
    else:
        raise ValueError(f"unknown snippet sampling {strategy!r}")
    pad = n_chunks * chunk_size - m
    picked = torch.cat([picked, torch.full((pad,), -1, dtype=torch.long)])
    return picked.view(n_chunks, chunk_size)
