"""Benchmarks of laptop scale (issue 50): the peak memory of `etad cache --what features` against a
video's length, and the whole `etad infer` on ActivityNet-shaped inputs, with where its time goes
(its forward against its floor, the refined proposals' tap layout).

    python benchmarks/run.py cache_memory        # 2 and 10 minutes (ETAD_MINUTES=2,10,30 for more)
    python benchmarks/run.py infer_speed         # 100 videos; ETAD_BEFORE=<checkout> beside it
    python benchmarks/run.py infer_floor         # the forward against its floor, in-process
    python benchmarks/run.py tap_layout          # the refined proposals' taps; ETAD_BEFORE too

Each measured command is a fresh `etad` process; its peak resident memory is the kernel's
(`/usr/bin/time -v`'s "Maximum resident set size").
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from benchmarks.common import REPO, checkouts

# THUMOS-14's recipe: 30 fps, a 16-frame snippet every 4 frames, at the 171x128 frames of ETAD
THUMOS_DATA = {"protocol": "thumos", "fps": 30, "snippet_length": 16, "snippet_stride": 4}
FRAME = {"frame_height": 128, "frame_width": 172}


def _peak_mib(command: list[str], cwd: Path) -> tuple[float, float]:
    """(peak resident MiB, seconds) of one process, as `/usr/bin/time -v` reports them."""
    began = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", *command], cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise RuntimeError(done.stdout[-2000:] + done.stderr[-2000:])
    kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    return kib / 1024, seconds


def _long_video(path: Path, minutes: float) -> float:
    """A 320x240 H.264 video at 30 fps of `minutes` (a moving pattern, written frame by frame)."""
    from stages.data.video_writer import write_video

    count = int(minutes * 60 * 30)
    ys, xs = np.mgrid[0:240, 0:320]

    def frames():
        for i in range(count):
            shade = ((xs + 3 * i) % 256).astype(np.uint8)
            yield np.stack([shade, ((ys + i) % 256).astype(np.uint8), np.full_like(shade, i % 256)], axis=-1)

    write_video(path, frames(), 30, crf=30)
    return count / 30


def _one_video_run(folder: Path, minutes: float) -> Path:
    """A work folder whose annotation file holds one video of `minutes`, with the demo's encoder."""
    videos = folder / "videos"
    videos.mkdir(parents=True)
    duration = _long_video(videos / "long.mp4", minutes)
    gt = {"database": {"long": {"subset": "test", "duration": duration, "annotations": []}}}
    (folder / "gt.json").write_text(json.dumps(gt))
    config = yaml.safe_load((REPO / "examples" / "demo.yaml").read_text())
    config["work_dir"] = str(folder / "work")
    config["data"].update(annotations=str(folder / "gt.json"), video_dir=str(videos), **THUMOS_DATA, **FRAME)
    config["data"].update(train_subset="test", eval_subset="test")
    config["model"]["encoder"]["checkpoint"] = None
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder / "config.yaml"


def bench_cache_memory() -> list[tuple[str, str]]:
    """Peak resident memory of `etad cache --what features` (straight from the video file) against the
    video's length, THUMOS's rate and stride, the demo's encoder: one fresh process per length (and
    per checkout, with ETAD_BEFORE)."""
    minutes = [float(m) for m in os.environ.get("ETAD_MINUTES", "2,10").split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for length in minutes:
            config = _one_video_run(Path(tmp) / f"m{length:g}", length)
            snippets = int(length * 60 * 30 / 4)
            for name, checkout in checkouts().items():
                shutil.rmtree(config.parent / "work", ignore_errors=True)
                command = [sys.executable, "-m", "etad_cli", "cache", "--what", "features", "-c", str(config)]
                peak, seconds = _peak_mib(command, checkout)
                what = f"{length:g} min ({snippets:,} snippets), {name}: peak RSS MiB, seconds"
                rows.append((what, f"{peak:,.0f}, {seconds:.0f}"))
    return rows


DECORD_READER = """
import sys, time, decord
vr = decord.VideoReader(sys.argv[1], ctx=decord.cpu(0), width=172, height=128, num_threads=1)
for start in range(0, 6400, 32):
    vr.get_batch(list(range(start, start + 32))).asnumpy()
    if (start + 32) % 640 == 0:
        time.sleep(float(sys.argv[2]))  # a slow consumer: an encoder at work
print([line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM")][0])
"""


def bench_decord_read_ahead() -> list[tuple[str, str]]:
    """decord 0.6 reading 6,400 pictures of a 10-minute 320x240 video at 172x128, 32 a call, in a
    fresh process: peak resident memory when the reader keeps up, and when it pauses 1 s every 640
    pictures (as an encoder does). Why long videos go to PyAV (video_io.DECORD_READ_AHEAD_BYTES)."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "long.mp4"
        _long_video(path, 10)
        for pause in ("0", "1"):
            done = subprocess.run(
                [sys.executable, "-c", DECORD_READER, str(path), pause], capture_output=True, text=True
            )
            if done.returncode != 0:
                raise RuntimeError(done.stderr[-2000:])
            rows.append(
                (f"pause {pause} s every 640 pictures: peak RSS MiB", f"{int(done.stdout) / 1024:,.0f}")
            )
    return rows


CLASSES = [f"class {i:03d}" for i in range(200)]  # ActivityNet's 200


def anet_shaped_run(folder: Path, videos: int = 100, seed: int = 0) -> Path:
    """ActivityNet-shaped inputs for `etad infer`: `videos` validation videos (and 16 training ones)
    of 512-channel features of 100 to 400 rows, cached with `cache --from-npy`, a CUHK-style class
    file for the video-level fusion, and the recipe's detector trained one step (its weights)."""
    rng = np.random.default_rng(seed)
    npy, database, scores = folder / "npy", {}, {}
    npy.mkdir(parents=True)
    for i in range(videos + 16):
        video_id, duration = f"v{i:05d}", float(rng.uniform(30, 200))
        subset = "validation" if i < videos else "training"
        start = float(rng.uniform(0, duration / 2))
        segment = [round(start, 2), round(min(duration, start + rng.uniform(5, duration / 2)), 2)]
        label = CLASSES[int(rng.integers(0, len(CLASSES)))]
        instances = [{"segment": segment, "label": label}]
        database[video_id] = {"subset": subset, "duration": round(duration, 2), "annotations": instances}
        rows = int(rng.integers(100, 400))
        np.save(npy / f"v_{video_id}.npy", rng.standard_normal((rows, 512)).astype(np.float32))
        scores[video_id] = rng.dirichlet(np.ones(len(CLASSES))).round(6).tolist()
    (folder / "gt.json").write_text(json.dumps({"database": database}))
    (folder / "classes.json").write_text(json.dumps({"class": CLASSES, "results": scores}))
    config = yaml.safe_load((REPO / "examples" / "anet_tsp_feature.yaml").read_text())
    config["work_dir"] = str(folder / "work")
    config["data"].update(annotations=str(folder / "gt.json"), blocked=None)
    config["infer"].update(classifier_file=str(folder / "classes.json"))
    config["train"].update(epochs=1, batch_size=16)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    etad = [sys.executable, "-m", "etad_cli"]
    for args in (["cache", "--from-npy", str(npy)], ["train"]):
        command = [*etad, *args, "-c", str(folder / "config.yaml")]
        subprocess.run(command, cwd=REPO, check=True, capture_output=True)
    return folder / "config.yaml"


# where `etad infer`'s time goes: the cumulative time of these functions in one profiled run
PHASES = {
    "loading the checkpoint": "checkpoint.py:__init__",
    "reading the cached features": "datasets.py:__getitem__",
    "the detector's forward": "checkpoint.py:__call__",
    "post-processing and fusion": ("postprocess.py:item", "postprocess.py:video"),
    "writing the outputs": "outputs.py:write_outputs",
}


def _breakdown(config: Path) -> list[tuple[str, str]]:
    """Seconds of each phase of one `etad infer` process (cProfile), start-up as the rest."""
    import pstats

    with tempfile.TemporaryDirectory() as tmp:
        profile = Path(tmp) / "infer.prof"
        command = [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "etad_cli", "infer"]
        began = time.perf_counter()
        subprocess.run(
            [*command, "-c", str(config), "--set", "infer.output=results/profiled.json"],
            cwd=REPO,
            check=True,
            capture_output=True,
        )
        total = time.perf_counter() - began
        stats = pstats.Stats(str(profile)).stats
    seconds = {}
    for phase, names in PHASES.items():
        names = (names,) if isinstance(names, str) else names
        seconds[phase] = sum(
            cumulative
            for (file, _, function), (_, _, _, cumulative, _) in stats.items()
            if f"{Path(file).name}:{function}" in names
        )
    seconds["start-up and the rest"] = total - sum(seconds.values())
    return [(f"  {phase} (s)", f"{value:.1f}") for phase, value in seconds.items()]


def _detections(path: Path) -> dict:
    return json.loads(path.read_text())["results"]


def bench_infer_speed() -> list[tuple[str, str]]:
    """The whole `etad infer` (a fresh process: start-up, loading, reading, forward, post-processing,
    fusion, writing; under `/usr/bin/time -v`, its peak memory too) on ActivityNet-shaped inputs,
    100 videos, the recipe's settings; with
    ETAD_BEFORE=<checkout>[:<checkout>] earlier commits beside it, runs alternating, median of 3."""
    videos = int(os.environ.get("ETAD_VIDEOS", "100"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        config = anet_shaped_run(Path(tmp), videos)
        results = config.parent / "work" / "results"
        times: dict[str, list[float]] = {name: [] for name in checkouts()}
        peaks: dict[str, list[float]] = {name: [] for name in checkouts()}
        for _ in range(3):
            for name, checkout in checkouts().items():
                sets = ["--set", f"infer.output=results/{name}.json"]
                command = [sys.executable, "-m", "etad_cli", "infer", "-c", str(config), *sets]
                peak, seconds = _peak_mib(command, checkout)
                times[name].append(seconds)
                peaks[name].append(peak)
        median = {name: sorted(t)[1] for name, t in times.items()}
        for name, seconds in median.items():
            rows.append(
                (
                    f"{name}: {videos} videos, whole process (s), videos/s, peak RSS (MiB)",
                    f"{seconds:.1f}, {videos / seconds:.2f}, {max(peaks[name]):,.0f}",
                )
            )
        from tests.helpers import largest_difference

        for name in (n for n in median if n != "this"):
            rows.append((f"speed-up, this over {name}", f"{median[name] / median['this']:.2f}x"))
            this, other = (_detections(results / f"{n}.json") for n in ("this", name))
            worst = largest_difference(this, other)
            rows.append(
                (f"detections against {name}: same videos, labels, order; largest difference", f"{worst:.2g}")
            )
        rows += [("this checkout, where the time goes:", ""), *_breakdown(config)]
    return rows


def _chunks_and_refined_taps(model, features, anchors) -> list[tuple[str, str]]:
    """The forward unprofiled, proposals a chunk at a time (as `etad infer`) against all at once
    (alternating, median of 3, outputs compared bit for bit), and the share of the refined
    proposals' taps (stages 2 and 3) that have zero weight, left out at inference."""
    import torch

    from stages.model import roi

    chunk, seconds, outs = roi.INFERENCE_ROWS, {"chunks": [], "whole": []}, {}
    try:
        with torch.no_grad():
            for _ in range(3):
                for name, rows in (("chunks", chunk), ("whole", 2**62)):
                    roi.INFERENCE_ROWS = rows
                    began = time.perf_counter()
                    outs[name] = model(features, anchors, boundaries=False)
                    seconds[name].append(time.perf_counter() - began)
    finally:
        roi.INFERENCE_ROWS = chunk
    same = all(
        torch.equal(a, b) for key in ("iou", "reg") for a, b in zip(outs["chunks"][key], outs["whole"][key])
    )
    rows = [
        (
            f"the forward, {chunk:,} proposals at a time, 100 videos (s)",
            f"{sorted(seconds['chunks'])[1] * 100 / 16:.1f}",
        ),
        (
            "the forward, all proposals at once, 100 videos (s)",
            f"{sorted(seconds['whole'])[1] * 100 / 16:.1f}",
        ),
        ("  the same outputs, bit for bit", "yes" if same else "no"),
    ]
    t = features.shape[2]
    for stage in (1, 2):
        refined = outs["chunks"]["anchors"][stage]
        every = len(roi.proposal_taps(refined, t, 24, 0.5).bags.rows)  # with gradients: every tap
        with torch.no_grad():
            kept = len(roi.proposal_taps(refined, t, 24, 0.5).bags.rows)
        rows.append(
            (f"stage {stage + 1}'s taps of zero weight, left out at inference", f"{1 - kept / every:.0%}")
        )
    return rows


def _recipe_batch() -> tuple:
    """The recipe's detector (examples/anet_tsp_feature.yaml, seed 0, untrained) and one batch of 16
    ActivityNet-shaped videos: random [512, 128] features and the fixed proposal map, as at test time."""
    import torch

    from stages.api import load_settings
    from stages.model.detector import build_detector
    from stages.model.targets import proposal_map

    torch.manual_seed(0)
    model = build_detector(load_settings(REPO / "examples" / "anet_tsp_feature.yaml").model, 0).eval()
    return model, torch.randn(16, 512, 128), proposal_map(128, 128)[None].expand(16, -1, -1)


def bench_infer_floor() -> list[tuple[str, str]]:
    """How far the recipe's detector forward is from its floor on this machine: the matrix-product
    FLOPs of one batch of 16 ActivityNet-shaped videos (torch's FLOP counter), this CPU's rate on the
    heads' widest product alone, and, in one forward under cProfile, the time of its matrix products
    and of `embedding_bag` (the RoI sums); then the forward unprofiled, a chunk of proposals at a
    time against all at once, and the refined proposals' taps of zero weight; scaled to 100 videos."""
    import cProfile
    import pstats

    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from stages.core.runtime import reuse_freed_memory
    from stages.model.roi import TapCache, proposal_taps
    from stages.model.targets import proposal_map

    reuse_freed_memory()
    model, features, anchors = _recipe_batch()
    scale = 100 / 16
    with torch.no_grad():
        model(features, anchors, boundaries=False)  # warm-up: the fixed map's taps laid out once, as
        with FlopCounterMode(display=False) as counter:  # `etad infer` does; its outputs only
            model(features, anchors, boundaries=False)
        profile = cProfile.Profile()
        began = time.perf_counter()
        profile.runcall(model, features, anchors, boundaries=False)
        forward = time.perf_counter() - began
        x, w, b = torch.randn(len(anchors[0]) * 16, 512), torch.randn(384, 512), torch.randn(384)
        F.linear(x, w, b)
        began = time.perf_counter()
        for _ in range(5):
            F.linear(x, w, b)
        rate = 2 * x.shape[0] * 512 * 384 * 5 / (time.perf_counter() - began)
    own = {function: row[2] for (_, _, function), row in pstats.Stats(profile).stats.items()}
    linear = own.get("<built-in method torch._C._nn.linear>", 0.0)
    sums = own.get("<built-in method torch.embedding_bag>", 0.0)
    flops = counter.get_total_flops() * scale
    two = proposal_map(128, 128)[None].expand(2, -1, -1)  # the fixed map: every tap, and those cached
    every, kept = (len(proposal_taps(two, 128, 24, 0.5, cache=c).bags.rows) for c in (None, TapCache()))
    return [
        ("the fixed map's taps of zero weight, left out (T = 128)", f"{1 - kept / every:.0%}"),
        ("matrix-product FLOPs of the forward, 100 videos (TFLOP)", f"{flops / 1e12:.2f}"),
        ("this CPU on the heads' widest product alone (GFLOP/s)", f"{rate / 1e9:.0f}"),
        ("floor of those products at that rate, 100 videos (s)", f"{flops / rate:.1f}"),
        ("the forward under cProfile, 100 videos (s)", f"{forward * scale:.1f}"),
        ("  of which F.linear (s)", f"{linear * scale:.1f}"),
        ("  of which embedding_bag, the RoI sums (s)", f"{sums * scale:.1f}"),
        *_chunks_and_refined_taps(model, features, anchors),
    ]


TAP_LAYOUT = """
import sys, time, torch
sys.path.insert(0, sys.argv[1])
from stages.core.runtime import reuse_freed_memory
from stages.model.roi import proposal_taps
reuse_freed_memory()
torch.set_grad_enabled(False)
refined, seconds = torch.load(sys.argv[2], weights_only=True), []
for _ in range(4):  # the first a warm-up
    began = time.perf_counter()
    for anchors in refined:  # all bins, and the start and end heads' context bins, as the forward
        taps = proposal_taps(anchors, 128, 24, 0.5)
        for part in (taps, taps.bins(0, 6), taps.bins(18, 6)):
            part.bags
    seconds.append(time.perf_counter() - began)
print(sorted(seconds[1:])[1])
"""


def bench_tap_layout() -> list[tuple[str, str]]:
    """Laying out the refined proposals' taps at inference (stages 2 and 3 of one batch of 16
    ActivityNet-shaped videos through the recipe's detector; each stage's three parts, as the forward
    takes them), in a fresh process per checkout (ETAD_BEFORE: earlier ones beside it, alternating;
    those without `Taps.bags` are left out), median of 3, scaled to 100 videos."""
    import torch

    model, features, anchors = _recipe_batch()
    with torch.no_grad():
        refined = [a.contiguous() for a in model(features, anchors, boundaries=False)["anchors"][1:]]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "refined.pt"
        torch.save(refined, path)
        seconds: dict[str, list[float]] = {}
        for _ in range(3):
            for name, checkout in checkouts().items():
                command = [sys.executable, "-c", TAP_LAYOUT, str(checkout), str(path)]
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode == 0:
                    seconds.setdefault(name, []).append(float(done.stdout.strip()))
                elif name == "this":
                    raise RuntimeError(done.stderr[-2000:])
    median = {name: sorted(s)[1] * 100 / 16 for name, s in seconds.items()}
    rows = [(f"{name}: stage 2 and 3's taps, 100 videos (s)", f"{s:.2f}") for name, s in median.items()]
    rows += [(f"{name}: left out (its taps have no bags)", "") for name in checkouts() if name not in median]
    rows += [
        (f"this over {name}", f"{s / median['this']:.2f}x") for name, s in median.items() if name != "this"
    ]
    return rows
