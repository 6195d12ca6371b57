"""What tests share besides fixtures: paths, ways to run `etad`, config writers, and file helpers.
Fixtures live in the conftest.py of the level that uses them (tests/conftest.py: the synthetic
dataset and the tiny trained workspaces most levels start from)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from etad_cli.app import app

if TYPE_CHECKING:  # torch loads only in the tests that need it
    import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
FILES = REPO / "tests" / "files"  # small fixture files written by hand
# the demo refits its classifier head for 3,000 steps (3 s a run here); tests that check the refit
# set their own count, the others need a head, not a good one
REFIT_STEPS = 50


def cpu_share() -> int:
    """The cores this test process may use: 1 on an xdist worker (tests/conftest.py pins each)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run_etad(
    *args: str, cwd: Path | None = None, preexec_fn: Callable[[], None] | None = None
) -> subprocess.CompletedProcess:
    """Run the real `etad` entry point in a subprocess (to see exit codes and tracebacks as a user
    does); `preexec_fn` runs in the child first (a resource limit, a signal's default)."""
    command = [sys.executable, "-m", "etad_cli", *map(str, args)]
    return subprocess.run(
        command, capture_output=True, text=True, cwd=cwd, timeout=300, preexec_fn=preexec_fn
    )


def start_etad(*args: str, quiet: bool = False, env: dict | None = None) -> subprocess.Popen:
    """Start the real `etad` in the background (a test that interrupts or kills it, or runs several
    at once), Ctrl-C at its default as a terminal delivers it; `quiet`: its output discarded, else
    piped (read it with communicate())."""
    out = subprocess.DEVNULL if quiet else subprocess.PIPE
    command = [sys.executable, "-m", "etad_cli", *map(str, args)]
    return subprocess.Popen(
        command, cwd=REPO, stdout=out, stderr=out, text=True, env=env, preexec_fn=default_sigint
    )


class CliResult(subprocess.CompletedProcess):
    """run_etad's result (returncode, stdout, stderr), and both streams together as `output`."""

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_cli(*args: str, width: int | None = None) -> CliResult:
    """Run `etad ARGS...` in this process (fast: torch is imported once): the one in-process runner
    of the tests, with run_etad's result. An exception that escapes a command is raised here: a
    user would have seen its traceback. `width`: the terminal's columns (help texts)."""
    result = CliRunner().invoke(app, [str(a) for a in args], terminal_width=width)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return CliResult(list(args), result.exit_code, result.stdout, result.stderr)


def assert_clean_failure(result: subprocess.CompletedProcess, *expected: str) -> list[str]:
    """The one check of a refusal: exit code 2, no traceback, each `expected` text on a line of
    stderr (the one-line error a user sees); returns those lines."""
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    for text in expected:
        assert any(text in line for line in lines), (text, lines)
    return lines


def make(target: str, **variables: str | Path) -> subprocess.CompletedProcess:
    """`make TARGET VAR=value...` in the checkout; asserts it succeeded."""
    args = ["make", "--no-print-directory", target, *(f"{k}={v}" for k, v in variables.items())]
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def default_sigint() -> None:
    """In the child: Ctrl-C as a terminal delivers it, whatever the test process inherited (a
    child inherits an ignored SIGINT, and then Python never raises KeyboardInterrupt)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def shared_file(*parts: str) -> Path:
    """A file under ../shared/data, or skip the test when that folder is absent (a user's clone)."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"reference data {path} is absent (it lives in ../shared beside the checkout)")
    return path


def write_config(path: Path, config: dict, **sections) -> Path:
    """The one settings writer of the tests: `config` with each of `sections` updating its top-level
    section (e.g. train={"epochs": 2}), written as YAML to `path`."""
    config = {**config}
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    path.write_text(yaml.safe_dump(config))
    return path


def tiny_data(synth: Path, **data) -> dict:
    """A data section for the synthetic videos at a small extraction (32x40, a resize from 64x48),
    4-frame snippets, 12 a video; `data` updates it."""
    base = {"annotations": str(synth / "anet.json"), "video_dir": str(synth / "videos")}
    return base | {"frame_height": 32, "frame_width": 40, "snippet_length": 4, "temporal_scale": 12} | data


def demo_config(folder: Path, synth: Path, **sections) -> Path:
    """A copy of examples/demo.yaml pointing at `synth` and writing under `folder` (config.yaml);
    `sections` update top-level sections, e.g. train={"epochs": 2}."""
    config = yaml.safe_load((REPO / "examples" / "demo.yaml").read_text())
    config["work_dir"] = str(folder / "work")
    config["data"].update(annotations=str(synth / "anet.json"), video_dir=str(synth / "videos"))
    config["model"]["encoder"]["checkpoint"] = None  # a random tiny encoder unless a test gives one
    config["model"]["classifier_refit_steps"] = REFIT_STEPS
    config["threads"] = cpu_share()  # the demo's 2 threads on a test worker's one core: 14% slower
    return write_config(folder / "config.yaml", config, **sections)


def cached_config(folder: Path, synth: Path, feature_work: Path, **sections) -> Path:
    """demo_config with its own work folder that reads the shared snippet and feature caches."""
    cache = {
        "features_dir": str(feature_work / "work" / "cache" / "features"),
        "snippets_dir": str(feature_work / "work" / "cache" / "snippets"),
    }
    return demo_config(folder, synth, cache=cache, **sections)


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under a folder and a hash of its content."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "logs" not in p.parts
    }


def write_features(folder: Path, annotations: Path, width: int = 8) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for video_id in json.loads(annotations.read_text())["database"]:
        np.save(folder / f"{video_id}.npy", rng.standard_normal((20, width)).astype(np.float32))


def write_anet_diagnosis_case(shared: Path, folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """ActivityNet validation as `etad diagnose` reads it: the reconstructed ground truth with each
    video's duration (TSP's metadata; never shorter than its last instance, as TSP's 30 fps re-encodes
    run a frame short), and the official sample submission perturbed (seeded): each instance three
    times, jittered by 15% of its length, 15% relabelled, scored at random, plus four random
    detections per video. Returns (ground truth, predictions)."""
    import csv

    gt = json.loads((shared / "anet" / "anet1.3_val_gt_reconstructed.json").read_text())
    with (shared / "anet" / "tsp_activitynet_v1-3_valid_metadata.csv").open() as f:
        durations = {r["filename"][2:-4]: float(r["video-duration"]) for r in csv.DictReader(f)}
    for video_id, entry in gt["database"].items():
        ends = [a["segment"][1] for a in entry["annotations"]]
        entry["duration"] = max([durations[video_id], *ends])
    submission = json.loads((shared / "anet" / "sample_detection_prediction.json").read_text())
    rng = np.random.default_rng(seed)
    labels = sorted({d["label"] for dets in submission["results"].values() for d in dets})
    results = {}
    for video_id, detections in submission["results"].items():
        duration, out = gt["database"][video_id]["duration"], []
        for d in detections:
            (start, end), length = d["segment"], d["segment"][1] - d["segment"][0]
            for _ in range(3):
                jitter = rng.normal(0, 0.15 * length, 2)
                s, e = max(0.0, start + jitter[0]), min(duration, end + jitter[1])
                label = d["label"] if rng.random() > 0.15 else labels[rng.integers(len(labels))]
                out.append({"label": label, "score": float(rng.random()), "segment": [s, max(e, s + 0.5)]})
        for _ in range(4):
            s = rng.random() * duration
            e = min(duration, s + rng.random() * duration * 0.3) + 0.1
            out.append(
                {
                    "label": labels[rng.integers(len(labels))],
                    "score": float(rng.random() * 0.5),
                    "segment": [s, e],
                }
            )
        results[video_id] = out
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "gt.json").write_text(json.dumps(gt))
    (folder / "predictions.json").write_text(json.dumps({"version": "VERSION 1.3", "results": results}))
    return folder / "gt.json", folder / "predictions.json"


def with_detad_characteristics(gt: Path, out: Path) -> Path:
    """The ground truth with DETAD's characteristics on every instance (length, coverage against the
    file's durations, instances in its video), as DETAD's code reads them."""
    data = json.loads(gt.read_text())
    data.setdefault("version", "VERSION 1.3")
    data.setdefault("taxonomy", [])
    for entry in data["database"].values():
        for a in entry["annotations"]:
            a["length"] = a["segment"][1] - a["segment"][0]
            a["coverage"] = a["length"] / entry["duration"]
            a["num-instances"] = len(entry["annotations"])
    out.write_text(json.dumps(data))
    return out


def jittered_predictions(database: dict, duration: Callable[[dict], float], seed: int = 1) -> dict:
    """Seeded predictions around a ground truth's instances (video id -> detections): each instance
    three times (jitter 30% of its length, 15% relabelled), twenty random detections per video;
    `duration(entry)` is a video's length in seconds."""
    rng, results = np.random.default_rng(seed), {}
    labels = sorted({a["label"] for e in database.values() for a in e["annotations"]})
    for video_id, entry in database.items():
        length_s, dets = duration(entry), []
        for a in entry["annotations"]:
            (s, t), length = a["segment"], a["segment"][1] - a["segment"][0]
            for _ in range(3):
                js, je = rng.normal(0, 0.3 * length, 2)
                ns, ne = max(0.0, s + js), min(length_s, t + je)
                label = a["label"] if rng.random() > 0.15 else labels[rng.integers(len(labels))]
                dets.append(
                    {"label": label, "score": float(rng.random()), "segment": [ns, max(ne, ns + 0.2)]}
                )
        for _ in range(20):
            x = rng.random() * length_s
            label, score = labels[rng.integers(len(labels))], float(rng.random() * 0.5)
            dets.append({"label": label, "score": score, "segment": [x, x + rng.random() * 10 + 0.2]})
        results[video_id] = dets
    return results


def write_tied_cases(shared: Path, folder: Path) -> dict[str, tuple[Path, Path, str]]:
    """Diagnosis cases with tied scores (four decimals, as many submissions write them), on the real
    ground truth, for the comparisons with DETAD's and the official code (benchmarks/official.py
    `ties`; their numbers in tests/files/official_ties.json): dataset -> (ground truth, predictions,
    subset). ActivityNet validation with the videos' own durations (TSP's), so that some instances
    end past their video (coverage > 1: left out, and videos left without ground truth); THUMOS-14
    test (ActionFormer's file), each instance three times jittered, 15% relabelled, 20 random
    detections per video."""
    import csv

    gt, pred = write_anet_diagnosis_case(shared, folder / "anet")
    data = json.loads(gt.read_text())
    with (shared / "anet" / "tsp_activitynet_v1-3_valid_metadata.csv").open() as f:
        durations = {r["filename"][2:-4]: float(r["video-duration"]) for r in csv.DictReader(f)}
    for video_id, entry in data["database"].items():
        entry["duration"] = durations[video_id]
    gt.write_text(json.dumps(data))
    cases = {"anet": (with_detad_characteristics(gt, folder / "anet" / "gt_detad.json"), pred, "validation")}
    thumos = json.loads((shared / "thumos" / "thumos14.json").read_text())
    thumos["database"] = {v: e for v, e in thumos["database"].items() if e["subset"] == "Test"}
    (folder / "thumos").mkdir(parents=True, exist_ok=True)
    (folder / "thumos" / "gt.json").write_text(json.dumps(thumos))
    truth = with_detad_characteristics(folder / "thumos" / "gt.json", folder / "thumos" / "gt_detad.json")
    results = jittered_predictions(thumos["database"], lambda entry: entry["duration"])
    thumos_pred = folder / "thumos" / "predictions.json"
    thumos_pred.write_text(json.dumps({"version": "THUMOS14", "results": results}))
    cases["thumos"] = (truth, thumos_pred, "Test")
    for _, predictions, _ in cases.values():  # four decimals: ties; DETAD's reader wants external_data
        data = json.loads(predictions.read_text())
        for dets in data["results"].values():
            for d in dets:
                d["score"] = round(d["score"], 4)
        predictions.write_text(json.dumps({**data, "external_data": {}}))
    return cases


def largest_difference(theirs: object, ours: object) -> float:
    """The largest |a - b| over the numbers `theirs` holds (dicts by key, lists by place); a text
    that differs (a label) is infinitely different."""
    if isinstance(theirs, str):
        return 0.0 if theirs == ours else float("inf")
    if isinstance(theirs, dict):
        return max((largest_difference(v, ours[k]) for k, v in theirs.items()), default=0.0)
    if isinstance(theirs, list):
        return max((largest_difference(a, b) for a, b in zip(theirs, ours, strict=True)), default=0.0)
    if theirs is None or ours is None:
        assert theirs == ours, (theirs, ours)
        return 0.0
    return abs(float(theirs) - float(ours))


def assert_backbone_released(path: Path, backbone: torch.nn.Module) -> None:
    """The release at `path` reads as an end-to-end checkpoint whose encoder is `backbone`, every
    weight equal."""
    import torch

    from stages.core.checkpoints import read_checkpoint
    from stages.model.encoder import build_encoder

    state = read_checkpoint(path)
    assert state["kind"] == "e2e"
    encoder = build_encoder("r2plus1d_34_tsp")
    encoder.load_state_dict(state["encoder"])
    theirs = backbone.state_dict()
    for name, weight in encoder.backbone.state_dict().items():
        assert torch.equal(weight, theirs[name]), name


def one_instance_truth(video: str, duration: float, segment: list[float], label: str) -> dict:
    """ActivityNet-layout ground truth: one validation video with one instance."""
    annotations = [{"segment": segment, "label": label}]
    return {"database": {video: {"subset": "validation", "duration": duration, "annotations": annotations}}}
