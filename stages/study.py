"""`etad study`: sweep settings and measure each point (ETAD's sampling study, on any data).

A study is the grid (or, with `zip`, the pairing) of the `--vary KEY=V1,V2,...` values, plus single
`--also KEY=V` points (references such as `e2e.grad_mode=checkpoint`), each run for every seed. A
point is a `PointJob` in its own work folder under the study folder
(`points/<key>=<value>,.../seed<k>/`), sharing the base settings' caches: `train` (or `train --e2e`),
then `infer --eval` twice (detections, and class-agnostic proposals for the AUC), and with
`truth_labels` a third time with `infer.classifier: truth` (localisation alone). The point runner
the caller hands in (the CLI's runs each point in a fresh process: etad_cli/runner.py) returns its
figures: average mAP and mAP per tIoU, proposal AUC, peak memory (GPU: torch's
max_memory_allocated; CPU: peak RSS), seconds per iteration and in all.

Resumable: a finished point has `result.json` and is skipped; an interrupted one continues
(`train --resume`). Outputs: `study.csv` (a row per point and seed), `study.md` (mean ± std per
point) and plots (mAP against each varied value; mAP against memory and against time per
iteration).
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import math
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from stages.core.errors import UserError
from stages.core.files import write_json
from stages.core.plots import pyplot
from stages.core.progress import SILENT, Progress
from stages.core.workdir import features_dir, snippets_dir, study_dir
from stages.data.annotations import read_json
from stages.data.fingerprints import Expected
from stages.data.hdf5_cache import VideoCache

if TYPE_CHECKING:  # the settings models, for type hints only
    from stages.core.settings import Settings

# what a point trains: frozen features, end to end, or both (end to end from the point's own detector)
STAGES = ("train", "e2e", "train,e2e")
COLUMNS = [
    "point",
    "seed",
    "average_mAP",
    "truth_labels_mAP",
    "mAP_first_tiou",
    "proposal_AUC",
    "peak_memory_mib",
    "memory_kind",
    "seconds_per_iteration",
    "seconds",
]
# the figures summarised over seeds (mean ± std per point)
FIGURES = (
    "average_mAP",
    "truth_labels_mAP",
    "proposal_AUC",
    "peak_memory_mib",
    "seconds_per_iteration",
    "seconds",
)


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
    """What one point runs, for the point runner (etad_cli/runner.py `ChildPoints`): the settings
    (file and overrides), the training runs in order ("train", "e2e"; end to end from the point's
    own detector when both), and the scorings of `infer --eval` (results/<name>.json, each with
    its overrides). The runner's output goes to `log`."""

    config: Path
    overrides: list[str]
    trains: tuple[str, ...]
    scorings: dict[str, list[str]]
    log: Path


# what the point runner returns: the last training run's step seconds, peak_gpu_mib and
# peak_rss_mib, each scoring's metrics ("scores"), and the seconds of every run of the point
PointRunner = Callable[[PointJob], dict]


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


def run_point(study: Study, point: Point, seed: int, cache_sets: list[str], *, runner: PointRunner) -> dict:
    """Run (or finish) one point for one seed and return its figures (result.json)."""
    result_file = point_folder(study, point, seed) / "result.json"
    done = finished(result_file)
    if done is not None:
        return done
    figures = runner(point_job(study, point, seed, cache_sets))
    detection, scores = figures["scores"]["detections"], figures["scores"]
    steps = figures["step_seconds"][1:] or figures["step_seconds"]  # the first step warms up
    gpu = figures["peak_gpu_mib"] or 0.0
    result = {
        "point": point.name,
        "overrides": dict(point.overrides),
        "seed": seed,
        "average_mAP": detection["average_mAP"],
        "truth_labels_mAP": scores["truth_labels"]["average_mAP"] if "truth_labels" in scores else None,
        "mAP": detection["mAP"],
        "tiou_thresholds": detection["tiou_thresholds"],
        "mAP_first_tiou": detection["mAP"][0],
        "proposal_AUC": scores["proposals"]["auc"],
        "peak_memory_mib": gpu if gpu else figures["peak_rss_mib"],
        "memory_kind": "GPU max allocated" if gpu else "peak RSS",
        "seconds_per_iteration": sum(steps) / len(steps) if steps else math.nan,
        "seconds": figures["seconds"],
    }
    result_file.parent.mkdir(parents=True, exist_ok=True)
    write_json(result_file, result)
    return result


def finished(result_file: Path) -> dict | None:
    """A point's figures, or None when it has not finished (no result.json, or one a crash or a full
    disk left unreadable: the point runs again, its training resumed)."""
    if not result_file.is_file():
        return None
    try:
        result = read_json(result_file, "point result")
    except UserError:
        return None
    return result if result_problem(result) is None else None


def result_problem(result: object) -> str | None:
    """What is wrong with a result.json's content (edited, or of another etad), or None."""
    if not isinstance(result, dict):
        return "not a JSON object"
    for key, kind in RESULT_FIELDS.items():
        value = result.get(key)
        if kind == "number":
            ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        elif kind == "seconds":  # NaN: a point without timed steps
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        elif kind == "numbers":
            ok = (
                isinstance(value, list)
                and bool(value)
                and all(
                    isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value
                )
            )
        elif kind == "optional number":
            ok = value is None or (isinstance(value, int | float) and not isinstance(value, bool))
        else:
            ok = isinstance(value, kind)
        if not ok:
            return f"{key}: {'missing' if key not in result else f'unexpected value {str(value)[:40]!r}'}"
    return None


RESULT_FIELDS = {
    "point": str,
    "overrides": dict,
    "seed": int,
    "average_mAP": "number",
    "truth_labels_mAP": "optional number",
    "mAP": "numbers",
    "tiou_thresholds": "numbers",
    "mAP_first_tiou": "number",
    "proposal_AUC": "number",
    "peak_memory_mib": "number",
    "memory_kind": str,
    "seconds_per_iteration": "seconds",
    "seconds": "number",
}


def check_caches(settings: Settings, stage: str) -> None:
    """Before the first point: the caches the points read exist and are current for the study's
    settings (one line naming what is missing or stale, and the command that builds it), instead
    of every point failing the same way."""
    kinds = {"train": ["features"], "e2e": ["snippets"], "train,e2e": ["features", "snippets"]}[stage]
    for kind in kinds:
        folder = snippets_dir(settings) if kind == "snippets" else features_dir(settings)
        cache = VideoCache(folder, kind, Expected.of(settings, kind))  # refuses a missing folder
        ids = cache.ids()
        if not ids:
            raise UserError(f"{folder}: the {kind} cache is empty; run `etad cache --what {kind}` first")
        cache.length(ids[0])  # refuses a stale file, naming the setting that differs


def run(study: Study, *, runner: PointRunner, progress: Progress = SILENT) -> list[dict]:
    """Run every point and seed not finished yet (`jobs` at a time, each through `runner`), then
    write the outputs. Returns every result, finished earlier or now."""
    if study.stage not in STAGES:
        raise UserError(f"--stages {study.stage}: expected one of {', '.join(STAGES)}")
    base = study.settings
    cache_sets = [f"cache.snippets_dir={snippets_dir(base)}", f"cache.features_dir={features_dir(base)}"]
    tasks = [(p, s) for p in study.points for s in range(study.seeds)]
    if any(finished(point_folder(study, p, base.seed + s) / "result.json") is None for p, s in tasks):
        check_caches(base, study.stage)  # before study.json: a refused study leaves no folder behind
    study.out_dir.mkdir(parents=True, exist_ok=True)
    write_json(
        study.out_dir / "study.json",
        identity(study)
        | {"seeds": study.seeds, "varied": study.varied, "base_overrides": study.base_overrides},
    )
    progress.start(len(tasks))

    def one(task: tuple[Point, int]) -> dict:
        point, seed = task
        result = run_point(study, point, base.seed + seed, cache_sets, runner=runner)
        progress.advance(info=point.name)
        return result

    pool = ThreadPoolExecutor(max(1, study.jobs))
    try:
        results = list(pool.map(one, tasks))
    finally:  # on Ctrl-C, return at once: the runner's owner stops the points still running
        pool.shutdown(wait=False, cancel_futures=True)
    write_outputs(study.out_dir, results, study.varied)
    return results


def read_results(out_dir: Path) -> tuple[list[dict], list[str]]:
    """Every finished point of a study folder (finished or still running) and the varied keys."""
    meta = out_dir / "study.json"
    if not meta.is_file():
        raise UserError(f"{out_dir}: not a study folder (no study.json)")
    held = read_json(meta, "study file")
    varied = held.get("varied", []) if isinstance(held, dict) else []
    results = [finished(p) for p in sorted(out_dir.glob("points/*/seed*/result.json"))]
    return [r for r in results if r is not None], varied


def unusable_results(out_dir: Path) -> list[str]:
    """The result.json files of a study folder that cannot be read or do not hold a point's
    figures (edited by hand, cut by a full disk), each with its problem: a rerun redoes them."""
    out = []
    for path in sorted(out_dir.glob("points/*/seed*/result.json")):
        try:
            problem = result_problem(read_json(path, "point result"))
        except UserError as exc:
            problem = str(exc).removeprefix(f"{path}: ")
        if problem is not None:
            out.append(f"{path}: {problem}")
    return out


def summary(results: list[dict]) -> list[dict]:
    """Mean and standard deviation over seeds, per point, in the order points first appear."""
    rows = []
    for name in dict.fromkeys(r["point"] for r in results):
        mine = [r for r in results if r["point"] == name]
        row = {"point": name, "seeds": len(mine), "overrides": mine[0]["overrides"]}
        for key in FIGURES:
            values = [r.get(key) for r in mine]
            row[key] = None if None in values else mean_std([float(v) for v in values])
        row["memory_kind"] = mine[0]["memory_kind"]
        rows.append(row)
    return rows


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value); NaN (a point without timed steps) stays
    NaN, where the statistics module would raise."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def markdown(rows: list[dict]) -> str:
    """The mean ± std table; a column for the truth-label mAP when every point measured it."""
    truth = bool(rows) and all(r["truth_labels_mAP"] is not None for r in rows)
    head = "| point | seeds | average mAP (%) |" + (" mAP, truth labels (%) |" if truth else "")
    head += " proposal AUC | peak memory (MiB) | s / iteration | s in all |"
    lines = [head, "|---" * (7 + truth) + "|"]
    for r in rows:
        m, t, a, mem, it, sec = (r[k] for k in FIGURES)
        lines.append(
            f"| {r['point']} | {r['seeds']} | {100 * m[0]:.2f} ± {100 * m[1]:.2f} |"
            + (f" {100 * t[0]:.2f} ± {100 * t[1]:.2f} |" if truth else "")
            + f" {a[0]:.2f} ± {a[1]:.2f} | {mem[0]:,.0f} | {it[0]:.2f} | {sec[0]:.0f} |"
        )
    kind = rows[0]["memory_kind"] if rows else ""
    note = " Truth labels: each video labelled with its own classes (localisation alone)." if truth else ""
    return (
        "\n".join(lines)
        + f"\n\nMemory: {kind} of the training process. Mean ± standard deviation over seeds.{note}\n"
    )


def write_outputs(out_dir: Path, results: list[dict], varied: list[str]) -> None:
    """study.csv, study.md and the plots."""
    from stages.core.files import atomic_output

    with atomic_output(out_dir / "study.csv") as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            COLUMNS + [f"mAP@{t:.2f}" for t in (results[0]["tiou_thresholds"] if results else [])]
        )
        for r in results:
            writer.writerow([r.get(c) for c in COLUMNS] + list(r["mAP"]))
    rows = summary(results)
    with atomic_output(out_dir / "study.md") as tmp:
        tmp.write_text(markdown(rows))
    plot(out_dir, rows, varied)


def plot(out_dir: Path, rows: list[dict], varied: list[str]) -> None:
    plt = pyplot()

    from stages.core.files import atomic_output

    for key in varied:  # mAP against this value, one line per setting of the other varied keys
        fig, ax = plt.subplots(figsize=(5, 3.5))
        groups: dict[str, list] = {}
        for r in rows:
            if key not in r["overrides"]:
                continue
            rest = ",".join(f"{k}={v}" for k, v in r["overrides"].items() if k != key) or "mAP"
            groups.setdefault(rest, []).append((r["overrides"][key], r["average_mAP"]))
        for label, pts in groups.items():
            xs = [_number(x) for x, _ in pts]
            xs = xs if all(isinstance(x, float) for x in xs) else [str(x) for x, _ in pts]
            means, stds = [100 * m for _, (m, _) in pts], [100 * s for _, (_, s) in pts]
            ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=label)
        ax.set(xlabel=key, ylabel="average mAP (%)")
        ax.legend(fontsize=6)
        fig.tight_layout()
        with atomic_output(out_dir / f"map_vs_{key}.png") as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in (
        (axes[0], "peak_memory_mib", "peak memory (MiB)"),
        (axes[1], "seconds_per_iteration", "seconds per iteration"),
    ):
        for r in rows:
            ax.scatter(r[key][0], 100 * r["average_mAP"][0])
            ax.annotate(_label(r["overrides"], varied), (r[key][0], 100 * r["average_mAP"][0]), fontsize=6)
        ax.set(xlabel=label, ylabel="average mAP (%)")
    fig.tight_layout()
    with atomic_output(out_dir / "map_vs_cost.png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def _label(overrides: dict, varied: list[str]) -> str:
    """A short name for a point on a plot: its varied values ('0.3/random'), or 'key=value' for an
    extra point."""
    if overrides and all(k in varied for k in overrides):
        return "/".join(str(v) for v in overrides.values())
    return ",".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in overrides.items()) or "base"


def _number(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def prepare(
    settings: Settings,
    *,
    config: Path,
    overrides: list[str],
    vary: list[str],
    also: list[str],
    zip_values: bool = False,
    seeds: int = 1,
    stage: str = "e2e",
    jobs: int = 1,
    out: Path | None = None,
    truth_labels: bool = False,
    check: Callable[[list[str]], object] | None = None,
) -> Study:
    """The study the command line describes; its folder defaults to <work_dir>/study. A folder that
    holds a study of another settings file or other points is refused (never mixed). `check`
    validates a point's overrides (the CLI's settings loader): every point is checked before the
    first runs, so an unknown key or a bad value stops the study at once, not minutes in."""
    folder = Path(out or study_dir(settings)).resolve()
    points, varied = plan(vary, also, zip_values)
    for point in points if check is not None else []:
        try:
            check([*overrides, *(f"{k}={v}" for k, v in point.overrides)])
        except UserError as exc:
            raise UserError(f"point {point.name}: {exc}") from None
    study = Study(
        settings,
        config.resolve(),
        folder,
        points,
        seeds=seeds,
        stage=stage,
        jobs=jobs,
        base_overrides=list(overrides),
        varied=varied,
        truth_labels=truth_labels,
    )
    meta = folder / "study.json"
    if meta.is_file():
        held, now = read_json(meta, "study file"), identity(study)
        if not isinstance(held, dict):
            raise UserError(f"{meta}: not a study file (expected a JSON object)")
        differs = [IDENTITY[k] for k in now if k in held and held[k] != now[k]]  # older files lack some
        if differs:
            raise UserError(
                f"{folder}: holds another study (other {', '.join(differs)}); its results "
                "would be reused for these settings: choose another --out"
            )
    return study


# what makes two studies the same (a rerun reuses the finished points), as the refusal names it
IDENTITY = {
    "config": "settings file",
    "points": "points",
    "stage": "--stages",
    "truth_labels": "--truth-labels",
    "settings": "settings values (--set or the file's content)",
}


def identity(study: Study) -> dict:
    """The study's identity as study.json records it: settings file, points, stages, scorings, and a
    digest of the base settings' values."""
    values = json.dumps(study.settings.model_dump(mode="json"), sort_keys=True)
    return {
        "config": str(study.config),
        "points": [[list(o) for o in p.overrides] for p in study.points],
        "stage": study.stage,
        "truth_labels": study.truth_labels,
        "settings": hashlib.sha256(values.encode()).hexdigest()[:16],
    }


def table(out_dir: Path) -> str:
    """The markdown table of a finished or running study, and where its files are."""
    results, _ = read_results(out_dir)
    unusable = unusable_results(out_dir)
    skipped = (
        (
            f"\n{len(unusable)} result file(s) left out, as unfinished (a rerun of the study redoes "
            f"them): {unusable[0]}\n"
        )
        if unusable
        else ""
    )
    if not results:
        return f"{out_dir}: no point has finished yet{skipped}"
    return markdown(summary(results)) + f"\n{out_dir}: study.csv, study.md, map_vs_*.png\n" + skipped
