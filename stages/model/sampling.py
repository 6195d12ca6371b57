"""Random choices made during training, as pure functions of a torch.Generator:
which proposals of the dense map a video trains on (docs/method.md §4) and which snippets an end-to-end
iteration back-propagates into the encoder (docs/method.md §2)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def _proposal_cells(t: int, max_duration: int) -> tuple[int, int, torch.Tensor]:
    """(rows of the map, valid proposals n, map cell -> proposal index or -1) of the dense map."""
    d_max = min(max_duration, t)
    d, s = torch.meshgrid(torch.arange(d_max), torch.arange(t), indexing="ij")
    valid = ((s + d) < t).flatten()
    cell_to_index = torch.full((d_max * t,), -1, dtype=torch.long)
    cell_to_index[valid] = torch.arange(int(valid.sum()))
    return d_max, int(valid.sum()), cell_to_index


def _count(n: int, ratio: float) -> int:
    return max(1, int(n * ratio))


def random_proposals(
    t: int, max_duration: int, ratio: float, generator: torch.Generator | None
) -> torch.Tensor:
    """int(n * ratio) cells without replacement, put in map order, then shuffled (as the original)."""
    _, n, _ = _proposal_cells(t, max_duration)
    k = _count(n, ratio)
    chosen = torch.randperm(n, generator=generator)[:k].sort().values
    return chosen[torch.randperm(k, generator=generator)]


def grid_proposals(
    t: int, max_duration: int, ratio: float, generator: torch.Generator | None
) -> torch.Tensor:
    """A fixed lattice with step sqrt(1 / ratio) over (duration, start): the same cells every time."""
    d_max, n, cell_to_index = _proposal_cells(t, max_duration)
    step = math.sqrt(1 / ratio)
    rows = torch.arange(1, d_max, step).round().long().unique()
    cols = torch.arange(1, t, step).round().long().unique()
    rows, cols = rows[rows < d_max], cols[cols < t]  # the last lattice value can round to T
    picked = cell_to_index[(rows[:, None] * t + cols[None, :]).flatten()]
    return picked[picked >= 0]


def block_proposals(
    t: int, max_duration: int, ratio: float, generator: torch.Generator | None
) -> torch.Tensor:
    """The valid cells of a random square block of side int(sqrt(k)), topped up with random other
    cells so that every video trains on exactly k = int(n * ratio) proposals (the batch stays square)."""
    d_max, n, cell_to_index = _proposal_cells(t, max_duration)
    k = _count(n, ratio)
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


# Proposal sampling strategies (`model.proposal_sampling`): (T, max_duration, ratio, generator) -> indices
# into proposal_map(T, max_duration). To add one, add a function and an entry here.
PROPOSAL_SAMPLERS: dict[str, Callable[[int, int, int, torch.Generator | None], torch.Tensor]] = {
    "random": random_proposals,
    "grid": grid_proposals,
    "block": block_proposals,
}


def sample_proposals(
    t: int, max_duration: int, strategy: str, ratio: float, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Indices into `proposal_map(t, max_duration)` of the proposals to train on, chosen by the
    named strategy."""
    if strategy not in PROPOSAL_SAMPLERS:
        raise ValueError(f"unknown proposal sampling {strategy!r}")
    return PROPOSAL_SAMPLERS[strategy](t, max_duration, ratio, generator)


def chunks_to_backprop(n_snippets: int, ratio: float, chunk_size: int) -> int:
    """How many chunks of `chunk_size` snippets get a gradient: int(N * ratio / chunk + 0.99), as
    the original (ratio 0.3 of 128 snippets in chunks of 4 -> 10 chunks = 40 snippets)."""
    return min(math.ceil(n_snippets / chunk_size), int(n_snippets * ratio / chunk_size + 0.99))


def random_snippets(n: int, m: int, generator: torch.Generator | None) -> torch.Tensor:
    """A random permutation's first m (the original)."""
    return torch.randperm(n, generator=generator)[:m]


def uniform_snippets(n: int, m: int, generator: torch.Generator | None) -> torch.Tensor:
    """m evenly spaced snippets over the video (duplicates after rounding become -1)."""
    picked = torch.linspace(0, n - 1, m).round().long().unique()
    return torch.cat([picked, torch.full((m - len(picked),), -1, dtype=torch.long)])


def block_snippets(n: int, m: int, generator: torch.Generator | None) -> torch.Tensor:
    """One random run of m consecutive snippets."""
    start = int(torch.randint(0, n - m + 1, (1,), generator=generator))
    return torch.arange(start, start + m)


# Snippet sampling strategies (`e2e.snippet_sampling`): (N snippets, m wanted, generator) -> m indices
# (-1 for none). To add one, add a function and an entry here.
SNIPPET_SAMPLERS: dict[str, Callable[[int, int, torch.Generator | None], torch.Tensor]] = {
    "random": random_snippets,
    "uniform": uniform_snippets,
    "block": block_snippets,
}


def sample_snippets(
    n_snippets: int, ratio: float, chunk_size: int, strategy: str, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Snippet indices [n_chunks, chunk_size] that are re-forwarded with gradients, chosen by the
    named strategy; -1 marks an empty place (when chunk_size does not divide the count)."""
    if strategy not in SNIPPET_SAMPLERS:
        raise ValueError(f"unknown snippet sampling {strategy!r}")
    n_chunks = chunks_to_backprop(n_snippets, ratio, chunk_size)
    m = min(n_chunks * chunk_size, n_snippets)
    picked = SNIPPET_SAMPLERS[strategy](n_snippets, m, generator)
    pad = n_chunks * chunk_size - m
    picked = torch.cat([picked, torch.full((pad,), -1, dtype=torch.long)])
    return picked.view(n_chunks, chunk_size)
