"""`etad study`: sweep settings and measure each point (ETAD's sampling study, on any data).

A study is the grid (or, with `zip`, the pairing) of the `--vary KEY=V1,V2,...` values, plus single
`--also KEY=V` points (references such as `e2e.grad_mode=checkpoint`), each run for every seed. A
point is a `PointJob` in its own work folder under the study folder
(`points/<key>=<value>,.../seed<k>/`), sharing the base settings' caches: `train` (or `train --e2e`),
then `infer --eval` twice (detections, and class-agnostic proposals for the AUC), and with
`truth_labels` a third time with `infer.classifier: truth` (localisation alone). The point runner
the caller hands in (the CLI's runs each point in a fresh process: etad_cli/study_points.py) returns its
figures: average mAP and mAP per tIoU, proposal AUC, peak memory (GPU: torch's
max_memory_allocated; CPU: peak RSS), seconds per iteration and in all.

Resumable: a finished point has `result.json` and is skipped; an interrupted one continues
(`train --resume`). Outputs: `study.csv` (a row per point and seed), `study.md` (mean ± std per
point) and plots (mAP against each varied value; mAP against memory and against time per
iteration).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from stages.core.errors import UserError
from stages.core.files import write_json
from stages.core.progress import SILENT, Progress
from stages.core.workdir import features_dir, snippets_dir, study_dir
from stages.data.annotations import read_json
from stages.data.fingerprints import ExpectedFingerprint
from stages.data.hdf5_cache import VideoCache
from stages.studies.plan import STAGES, Point, PointJob, Study, plan, point_folder, point_job
from stages.studies.report import write_outputs
from stages.studies.results import finished

if TYPE_CHECKING:  # the settings models, for type hints only
    from stages.core.settings import Settings

# what a point trains: frozen features, end to end, or both (end to end from the point's own detector)


# what the point runner returns: the last training run's step seconds, peak_gpu_mib and
# peak_rss_mib, each scoring's metrics ("scores"), and the seconds of every run of the point
PointRunner = Callable[[PointJob], dict]


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


def check_caches(settings: Settings, stage: str) -> None:
    """Before the first point: the caches the points read exist and are current for the study's
    settings (one line naming what is missing or stale, and the command that builds it), instead
    of every point failing the same way."""
    kinds = {"train": ["features"], "e2e": ["snippets"], "train,e2e": ["features", "snippets"]}[stage]
    for kind in kinds:
        folder = snippets_dir(settings) if kind == "snippets" else features_dir(settings)
        cache = VideoCache(folder, kind, ExpectedFingerprint.of(settings, kind))  # refuses a missing folder
        ids = cache.ids()
        if not ids:
            raise UserError(f"{folder}: the {kind} cache is empty; run `etad cache --what {kind}` first")
        cache.length(ids[0])  # refuses a stale file, naming the setting that differs


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
