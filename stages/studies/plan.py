"""A study's plan: its points (the grid or pairing of the --vary values, plus --also points), each
point's job for the point runner and its folder."""

from __future__ import annotations

import hashlib
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from stages.core.errors import UserError

if TYPE_CHECKING:  # the settings models, for type hints only
    from stages.core.settings import Settings

# what a point trains: frozen features, end to end, or both (end to end from the point's own detector)

# what a point trains: frozen features, end to end, or both (end to end from the point's own detector)
STAGES = ("train", "e2e", "train,e2e")


@dataclass
class Point:
    """One setting of the study: its overrides (in order) and its folder name."""

    overrides: list[tuple[str, str]]

    @property
    def name(self) -> str:
        """The overrides as text; where characters had to be replaced or the text cut, a hash of the
        whole text follows, so two points never share a folder."""
        text = ",".join(f"{k}={v}" for k, v in self.overrides) or "base"
        safe = re.sub(r"[^A-Za-z0-9_.,=+-]", "_", text)
        if safe == text and len(text) <= 180:
            return text
        return f"{safe[:160]}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


@dataclass
class Study:
    settings: Settings  # the base settings (config file and base overrides)
    config: Path
    out_dir: Path
    points: list[Point]
    seeds: int = 1
    stage: str = "e2e"
    jobs: int = 1
    base_overrides: list[str] = field(default_factory=list)
    varied: list[str] = field(default_factory=list)
    truth_labels: bool = False  # also the average mAP with the annotation file's video labels


# what the study sets in every point itself: varying them would run one seed twice (`seed`: use
# --seeds) or train inside another run's folder and report its results (`work_dir`)
OWNED = {"seed": "use --seeds", "work_dir": "each point has its own folder under --out"}


def parse_vary(values: list[str], option: str = "--vary") -> list[tuple[str, list[str]]]:
    """`KEY=V1,V2,...` -> (key, [values]); brackets keep a list value whole (`k=[1,2],[3,4]`)."""
    out = []
    for text in values:
        key, sep, rest = text.partition("=")
        key = key.strip()
        items = [v.strip() for v in re.split(r",(?![^\[]*\])", rest) if v.strip()]
        if not sep or not key or not items:
            raise UserError(f"{option} {text}: expected KEY=V1,V2,... e.g. --vary e2e.snippet_ratio=0.1,0.3")
        if key in OWNED:
            raise UserError(f"{option} {text}: the study sets {key} in every point itself; {OWNED[key]}")
        out.append((key, items))
    return out


def plan(vary: list[str], also: list[str], zip_values: bool) -> tuple[list[Point], list[str]]:
    """The points of a study: the grid (or zip) of the varied values, then the extra points."""
    axes = parse_vary(vary)
    keys = [k for k, _ in axes]
    if zip_values:
        lengths = {len(v) for _, v in axes}
        if len(lengths) > 1:
            raise UserError("--zip: every --vary needs the same number of values")
        combos = list(zip(*[v for _, v in axes]))
    else:
        combos = list(itertools.product(*[v for _, v in axes])) if axes else []
    points = [Point(list(zip(keys, combo))) for combo in combos]
    for text in also:
        points += [Point([(k, vs[0])]) for k, vs in parse_vary([text], "--also")]
    if not points:
        points = [Point([])]
    names = [p.name for p in points]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(f"point {twice[0]} is given twice (--vary / --also)")
    return points, keys


@dataclass
class PointJob:
    """What one point runs, for the point runner (etad_cli/study_points.py `ChildPoints`): the settings
    (file and overrides), the training runs in order ("train", "e2e"; end to end from the point's
    own detector when both), and the scorings of `infer --eval` (results/<name>.json, each with
    its overrides). The runner's output goes to `log`."""

    config: Path
    overrides: list[str]
    trains: tuple[str, ...]
    scorings: dict[str, list[str]]
    log: Path


def point_job(study: Study, point: Point, seed: int, cache_sets: list[str]) -> PointJob:
    """The job of one point and seed, in its own work folder under the study folder."""
    folder = point_folder(study, point, seed)
    sets = [*study.base_overrides, *cache_sets, f"work_dir={folder / 'work'}", f"seed={seed}"]
    sets += ["train.log_every=1", "e2e.log_every=1", *(f"{k}={v}" for k, v in point.overrides)]
    scorings = {"detections": [], "proposals": ["infer.classifier=none"]}
    if study.truth_labels:
        scorings["truth_labels"] = ["infer.classifier=truth"]
    trains = {"train": ("train",), "e2e": ("e2e",), "train,e2e": ("train", "e2e")}[study.stage]
    return PointJob(study.config, sets, trains, scorings, log=folder / "log.txt")


def point_folder(study: Study, point: Point, seed: int) -> Path:
    return study.out_dir / "points" / point.name / f"seed{seed}"
