"""The Makefile pipelines for real datasets, run end to end on small fake datasets written here in the
real layouts (ActivityNet JSON + v_<id>.npy TSP features, THUMOS-14 JSON + <id>.npy I3D features +
UntrimmedNet scores, v_<id>.mp4 videos + a TSP-layout checkpoint), so the chains cannot rot."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from stages import synth
from stages.model.encoder import build_encoder
from tests.helpers import REPO, make, run_cli

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed"),
]

THUMOS_CLASSES = [
    "BaseballPitch",
    "BasketballDunk",
    "Billiards",
    "CleanAndJerk",
    "CliffDiving",
    "CricketBowling",
    "CricketShot",
    "Diving",
    "FrisbeeCatch",
    "GolfSwing",
    "HammerThrow",
    "HighJump",
    "JavelinThrow",
    "LongJump",
    "PoleVault",
    "Shotput",
    "SoccerPenalty",
    "TennisSwing",
    "ThrowDiscus",
    "VolleyballSpiking",
]

# a detector small enough for seconds on a CPU; every pipeline gets these on top of its recipe
SMALL = (
    "--set model.hidden_channels=32 --set model.roi_size=4 --set model.proposal_ratio=0.3 "
    "--set train.epochs=2 --set train.lr_step=2 --set train.batch_size=4 --set train.device=cpu "
    "--set infer.device=cpu --set infer.batch_size=4 --set model.classifier_refit_steps=50"
)


def fake_features(
    n: int, segments: list[tuple[float, float, int]], duration: float, dim: int, rng
) -> np.ndarray:
    """[n, dim] features whose channel k is high where an action of class k runs (time (i+0.5)/n)."""
    x = rng.normal(0, 0.1, (n, dim)).astype(np.float32)
    t = (np.arange(n) + 0.5) / n * duration
    for start, end, k in segments:
        x[(t >= start) & (t <= end), k % dim] += 1.0
    return x


def stage_names(work: Path) -> list[str]:
    return [json.loads(line)["stage"] for line in (work / "logs" / "stages.jsonl").read_text().splitlines()]


def test_anet_features_pipeline(tmp_path):
    rng = np.random.default_rng(0)
    labels = ["Archery", "Bowling"]
    features, database = tmp_path / "tsp", {}
    features.mkdir()
    for i in range(12):
        video_id = f"vid{i:08d}ab"  # ActivityNet ids are 11 characters
        duration = float(rng.uniform(20, 60))
        k = i % 2
        start = float(rng.uniform(0, duration / 2))
        end = start + duration / 4
        database[video_id] = {
            "subset": "validation" if i >= 8 else "training",
            "duration": duration,
            "annotations": [{"segment": [start, end], "label": labels[k]}],
        }
        n = int(duration * 15 / 16)  # TSP: a feature per 16 frames at 15 fps
        np.save(features / f"v_{video_id}.npy", fake_features(n, [(start, end, k)], duration, 16, rng))
    annotations = tmp_path / "activity_net.v1-3.min.json"
    annotations.write_text(json.dumps({"version": "VERSION 1.3", "taxonomy": [], "database": database}))
    cuhk = tmp_path / "cuhk_val_simp_7.json"  # CUHK classifier layout: class list + scores per v_<id>
    scores = {
        f"v_{v}": [1.0 if r["annotations"][0]["label"] == c else 0.1 for c in labels]
        for v, r in database.items()
    }
    cuhk.write_text(json.dumps({"class": labels, "results": scores}))
    blocked = tmp_path / "blocked.json"
    blocked.write_text(json.dumps(["vid00000011ab"]))
    work = tmp_path / "work"
    shape = "--set model.in_channels=16 --set data.temporal_scale=16 --set model.max_duration=16"
    done = make(
        "anet-features",
        ANET_FEATURES=features,
        ANNOTATIONS=annotations,
        CLASSIFIER=cuhk,
        BLOCKED=blocked,
        ANET_FEATURES_WORK=work,
        SET=f"{SMALL} {shape}",
    )
    assert len(list((work / "cache" / "features").glob("*.h5"))) == 12
    assert (work / "pretrain" / "checkpoints" / "last.pt").is_file()
    results = json.loads((work / "results" / "detections.json").read_text())["results"]
    # the blocked video is detected but left out of evaluation (as the original does)
    assert sorted(results) == ["vid00000008ab", "vid00000009ab", "vid00000010ab", "vid00000011ab"]
    assert {d["label"] for dets in results.values() for d in dets} <= set(labels)
    metrics = json.loads((work / "results" / "detections.metrics.json").read_text())
    assert metrics["counts"]["ground_truth_videos"] == 3 and len(metrics["mAP"]) == 10
    assert stage_names(work) == ["cache features", "train", "infer"]
    assert "evaluated models" in done.stdout and "frozen features" in done.stdout


def test_thumos_features_pipeline(tmp_path):
    rng = np.random.default_rng(1)
    features, database = tmp_path / "i3d_features", {}
    features.mkdir()
    videos = [(f"video_validation_{i:07d}", "Validation", i % 20) for i in range(1, 21)]
    videos += [(f"video_test_{i:07d}", "Test", i % 20) for i in (4, 7, 26)]
    for video_id, subset, k in videos:
        duration = float(rng.uniform(40, 80))
        segments = []
        for start in np.sort(rng.uniform(0, duration - 10, 3)):
            segments.append((float(start), float(start) + float(rng.uniform(2, 6)), k))
        database[video_id] = {
            "subset": subset,
            "duration": duration,
            "fps": 30.0,
            "annotations": [
                {
                    "label": THUMOS_CLASSES[k],
                    "segment": [s, e],
                    "segment(frames)": [s * 30, e * 30],
                    "label_id": k,
                }
                for s, e, _ in segments
            ],
        }
        n = int(duration * 30 / 4)  # I3D: a feature every 4 frames at 30 fps
        np.save(features / f"{video_id}.npy", fake_features(n, segments, duration, 16, rng))
    annotations = tmp_path / "thumos14.json"
    annotations.write_text(json.dumps({"database": database}))
    unet = np.full((1574, 101), 0.01, dtype=np.float32)  # UntrimmedNet: row int(id[-4:]) - 1, UCF101 columns
    ucf101 = (7, 9, 12, 21, 22, 23, 24, 26, 31, 33, 36, 40, 45, 51, 68, 79, 85, 92, 93, 97)
    for video_id, subset, k in videos:
        if subset == "Test":
            unet[int(video_id[-4:]) - 1, ucf101[k] - 1] = 1.0
    np.save(tmp_path / "uNet_test.npy", unet)
    work = tmp_path / "work"
    shape = "--set model.in_channels=16 --set data.temporal_scale=64 --set model.max_duration=32"
    done = make(
        "thumos-features",
        THUMOS_FEATURES=features,
        ANNOTATIONS=annotations,
        CLASSIFIER=tmp_path / "uNet_test.npy",
        THUMOS_WORK=work,
        SET=f"{SMALL} {shape}",
    )
    results = json.loads((work / "results" / "detections.json").read_text())["results"]
    assert sorted(results) == ["video_test_0000004", "video_test_0000007", "video_test_0000026"]
    top = {vid: max(dets, key=lambda d: d["score"])["label"] for vid, dets in results.items()}
    assert top == {
        vid: THUMOS_CLASSES[k] for vid, subset, k in videos if subset == "Test"
    }  # from uNet scores
    metrics = json.loads((work / "results" / "detections.metrics.json").read_text())
    assert metrics["tiou_thresholds"] == pytest.approx([0.3, 0.4, 0.5, 0.6, 0.7])
    assert stage_names(work) == ["cache features", "train", "infer"]
    assert "evaluated models" in done.stdout


def test_anet_e2e_pipeline(tmp_path):
    data = tmp_path / "anet"
    synth.run(data, videos=6, classes=2, seed=3, width=64, height=48)
    videos = data / "Anet_videos_15fps_short256"
    videos.mkdir()
    for mp4 in (data / "videos").glob("*.mp4"):
        mp4.rename(videos / f"v_{mp4.name}")  # the ActivityNet layout: v_<id>.mp4
    lost = sorted(videos.glob("*.mp4"))[0]  # every ActivityNet user lacks some YouTube videos
    lost.unlink()
    torch.manual_seed(0)  # a TSP-layout checkpoint: {"model": {"features.<key>": ..., "fc.*": ...}}
    encoder = build_encoder("tiny")
    state = {f"features.{k}": v for k, v in encoder.backbone.state_dict().items()}
    state.update({"fc.weight": torch.zeros(2, encoder.out_dim), "fc.bias": torch.zeros(2)})
    torch.save({"model": state, "epoch": 5}, tmp_path / "tsp_tiny.pth")
    tiny = (
        "--set data.fps=15 --set data.frame_height=48 --set data.frame_width=64 --set data.snippet_length=8 "
        "--set data.temporal_scale=16 --set model.max_duration=16 --set model.encoder.name=tiny "
        "--set model.encoder.crop_size=40 --set model.encoder.frozen_stages=0 --set model.in_channels=64 "
        "--set cache.device=cpu --set e2e.device=cpu --set e2e.epochs=1 --set e2e.batch_size=2 "
        "--set e2e.augment=false --set data.blocked=null"
    )
    work = tmp_path / "work"
    done = make(
        "anet-e2e",
        ANET_VIDEOS=videos,
        ANNOTATIONS=data / "anet.json",
        TSP_CHECKPOINT=tmp_path / "tsp_tiny.pth",
        ANET_E2E_WORK=work,
        SET=f"{SMALL} {tiny}",
    )
    assert not (work / "frames").exists()  # cached straight from the videos
    assert len(list((work / "cache" / "snippets").glob("*.h5"))) == 5
    lost_id = lost.stem.removeprefix("v_")
    assert json.loads((work / "cache" / "snippets" / "missing.json").read_text()) == [lost_id]
    assert not (work / "cache" / "features").exists() and not (work / "pretrain").exists()  # from scratch
    state = torch.load(work / "e2e" / "checkpoints" / "last.pt", weights_only=True)
    assert "encoder" in state and state["kind"] == "e2e"
    metrics = json.loads((work / "results" / "detections.metrics.json").read_text())
    assert metrics["counts"]["ground_truth_videos"] >= 1
    assert stage_names(work) == ["cache snippets", "train --e2e", "infer"]
    assert "end to end" in done.stdout


def test_a_dense_benchmark_recipe_from_its_own_annotation_format(tmp_path):
    """MultiTHUMOS end to end with its recipe: its own annotation file converted, features imported,
    the per-proposal head trained, detections scored with MultiTHUMOS' protocol (`make features`)."""
    rng = np.random.default_rng(2)
    features, source = tmp_path / "i3d features", {}  # a space: one path through make
    features.mkdir()
    videos = [(f"video_validation_{i:07d}", "validation") for i in range(1, 13)]
    videos += [(f"video_test_{i:07d}", "testing") for i in (4, 7, 26)]
    for index, (video_id, subset) in enumerate(videos):
        duration = float(rng.uniform(30, 50))
        actions = []  # two classes per video, overlapping in time (MultiTHUMOS' dense labels)
        for k in (index % 3, (index + 1) % 3):
            start = float(rng.uniform(0, duration - 12))
            actions.append([k + 1, round(start, 1), round(start + float(rng.uniform(4, 10)), 1)])
        source[video_id] = {"subset": subset, "duration": duration, "actions": actions}
        segments = [(s, e, k - 1) for k, s, e in actions]
        n = int(duration * 30 / 4)  # the THUMOS I3D features: one every 4 frames at 30 fps
        np.save(features / f"{video_id}.npy", fake_features(n, segments, duration, 16, rng))
    (tmp_path / "multithumos.json").write_text(json.dumps(source))
    annotations = tmp_path / "multithumos_anet.json"
    done = run_cli(
        "annotations", "convert", tmp_path / "multithumos.json", "--from", "multithumos", "--out", annotations
    )
    assert done.returncode == 0, done.stderr
    work = tmp_path / "work"
    shape = "--set model.in_channels=16 --set data.temporal_scale=64 --set model.max_duration=32"
    done = make(
        "features",
        RECIPE=REPO / "examples" / "multithumos_i3d.yaml",
        FEATURES=features,
        ANNOTATIONS=annotations,
        FEATURES_WORK=work,
        SET=f"{SMALL} {shape} --set model.fc_channels=32",
    )
    state = torch.load(work / "pretrain" / "checkpoints" / "last.pt", weights_only=True)
    assert state["settings"]["model"]["classifier"] == "proposal"
    results = json.loads((work / "results" / "detections.json").read_text())["results"]
    assert sorted(results) == [v for v, subset in videos if subset == "testing"]
    assert all(len({d["label"] for d in found}) > 1 for found in results.values())
    metrics = json.loads((work / "results" / "detections.metrics.json").read_text())
    assert metrics["tiou_thresholds"] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    assert stage_names(work) == ["cache features", "train", "infer"]
    assert "evaluated models" in done.stdout
