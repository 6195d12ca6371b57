"""Which videos of an annotation file a run processes: only the subsets the recipe needs, one shard
of them when many machines share the work, and what to do about videos that are not there.

- Subsets: by default the recipe's `data.train_subset`, `data.eval_subset` (and
  `encoder_train.subset` when set); `all` takes every video. The test subset of ActivityNet is a
  third of its videos and has no public labels: it is not processed unless asked for.
- Shards: `K/N` (1 <= K <= N) takes every N-th video of the sorted ids from the K-th on, so N
  shards run at once on one shared folder give exactly the files of one run. Under a Slurm array
  (`SLURM_ARRAY_TASK_ID`, `SLURM_ARRAY_TASK_COUNT`) the shard comes from the environment.
- Missing videos (`data.missing`): `error` stops before any work with one line; `skip` leaves them
  out, names them, and writes their ids to `missing.json` in the output folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from stages.core.errors import UserError
from stages.core.files import write_json

if TYPE_CHECKING:  # the settings models, for type hints only
    from stages.core.settings import Settings
    from stages.data.annotations import VideoRecord


@dataclass(frozen=True)
class Shard:
    index: int  # 1-based
    count: int

    @property
    def suffix(self) -> str:
        """What a shard adds to the names of the files it alone writes (failures, missing lists)."""
        return "" if self.count == 1 else f".shard{self.index}of{self.count}"

    def share(self, ids: Iterable[str]) -> list[str]:
        """This shard's videos: every N-th of the sorted ids, from the K-th (the one rule of every stage)."""
        return sorted(ids)[self.index - 1 :: self.count]


WHOLE = Shard(1, 1)


def parse_shard(text: str | None, env: Mapping[str, str] = os.environ) -> Shard:
    """`--shard K/N`, else the Slurm array's task, else the whole run."""
    if text is None:
        if "SLURM_ARRAY_TASK_ID" not in env or "SLURM_ARRAY_TASK_COUNT" not in env:
            return WHOLE
        names = tuple(f"SLURM_ARRAY_TASK_{n}" for n in ("ID", "COUNT", "MIN", "STEP"))
        task, count, first, step = (env.get(n, default) for n, default in zip(names, ("", "", "0", "1")))
        if not all(_whole(v) for v in (task, count, first, step)) or int(step) < 1:
            raise UserError(f"{', '.join(names)}: expected whole numbers (step >= 1)")
        # --array=0-6:2 runs tasks 0, 2, 4, 6: the shard is the task's place in that list
        offset, step = int(task) - int(first), int(step)
        if offset % step:
            raise UserError(f"the Slurm array: task {task} is not min {first} + a multiple of step {step}")
        index, count = offset // step + 1, int(count)
        source = f"the Slurm array (task {task}, shard {index} of {count})"
    else:
        parts = text.split("/")
        if len(parts) != 2 or not all(_whole(p.strip()) for p in parts):
            raise UserError(f"--shard {text}: expected K/N, e.g. --shard 2/8")
        index, count = int(parts[0]), int(parts[1])
        source = f"--shard {text}"
    if count < 1 or not 1 <= index <= count:
        raise UserError(f"{source}: shard {index} of {count} does not exist (expected 1 <= K <= N)")
    return Shard(index, count)


def _whole(text: str) -> bool:
    """Digits 0-9 only (str.isdigit() also takes superscripts such as '²', which int() refuses)."""
    return text.isascii() and text.isdigit()


class RecipeSubsets(list):
    """The subsets a recipe names (not --subset): one the annotation file lacks is passed over (a
    file without a pretraining subset serves a recipe that has one)."""


def default_subsets(settings: Settings) -> list[str]:
    """The subsets a recipe uses: training, evaluation, and the encoder's pretraining when set."""
    subsets = [settings.data.train_subset, settings.data.eval_subset, settings.encoder_train.subset]
    return RecipeSubsets(dict.fromkeys(s for s in subsets if s))


def parse_subsets(text: str | None, settings: Settings) -> list[str] | None:
    """`--subset a,b` -> [a, b]; `all`, alone or in the list -> None (every video); unset -> the
    recipe's subsets. Names are checked against the annotation file by `select`."""
    if text is None:
        return default_subsets(settings)
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise UserError("--subset: expected a subset name, a comma-separated list, or all")
    return None if "all" in (n.lower() for n in names) else names


@dataclass
class Selection:
    """The videos a run processes and the ones it left out because they are missing."""

    videos: list[str]
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def select(
    records: Mapping[str, VideoRecord], subsets: list[str] | None, shard: Shard, *, where: str
) -> list[str]:
    """The sorted ids of the chosen subsets (None: all), this shard's share of them; a subset given
    with --subset that the annotation file does not have is an error (a misspelled name must not
    drop its videos quietly)."""
    wanted = None if subsets is None else {s.lower() for s in subsets}
    held = {(r.subset or "").lower() for r in records.values()}
    unknown = [s for s in subsets or [] if s.lower() not in held]
    if unknown and not isinstance(subsets, RecipeSubsets):
        have = ", ".join(sorted(h for h in held if h)) or "no subset names"
        raise UserError(f"{where}: no subset named {', '.join(map(repr, unknown))} (the file has {have})")
    ids = sorted(v for v, r in records.items() if wanted is None or (r.subset or "").lower() in wanted)
    if not ids:
        raise UserError(f"{where}: no video in subset(s) {', '.join(subsets or [])}")
    return shard.share(ids)


def drop_missing(ids: list[str], present: Callable[[str], bool], policy: str, *, what: str) -> Selection:
    """Apply data.missing to the videos whose input is not there (`what` names that input)."""
    missing = [v for v in ids if not present(v)]
    chosen = Selection([v for v in ids if v not in set(missing)], missing)
    if missing and policy == "error":
        raise UserError(
            f"{len(missing)} of {len(ids)} videos have no {what} (first: {missing[0]!r}); set "
            "data.missing: skip to go on without them"
        )
    if missing:
        chosen.notes.append(
            f"{len(missing)} of {len(ids)} videos have no {what}, left out (first: {missing[0]})"
        )
    return chosen


def write_lists(folder: Path, shard: Shard, *, failures: list[dict], missing: list[str]) -> None:
    """failures.json ([{video_id, reason}]) and missing.json ([ids]) of this run (of this shard:
    failures.shard2of8.json, so that shards never write one file at once)."""
    write_json(folder / f"failures{shard.suffix}.json", failures)
    write_json(folder / f"missing{shard.suffix}.json", missing)
