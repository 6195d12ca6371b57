"""`make bench`: run every benchmark side by side on this machine and print one table per benchmark.

Each benchmark is a function below that returns rows of (what, value). Results are copied by hand into
docs/benchmarks.md together with the machine they came from (printed first).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

console = Console()

from benchmarks.decoders import bench_real_decoders  # noqa: E402 - after the checkout is on sys.path


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}, {gpu}"
    )


def bench_synth() -> list[tuple[str, str]]:
    """Synthetic dataset generation speed (render + H.264 encode), 12 videos at 128x96, 15 fps."""
    from stages import synth

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        synth.run(Path(tmp), videos=12, classes=4, seed=0)
        seconds = time.perf_counter() - start
        database = json.loads((Path(tmp) / "anet.json").read_text())["database"]
        frames = sum(round(v["duration"] * 15) for v in database.values())
    return [
        ("videos", "12"),
        ("frames", str(frames)),
        ("seconds", f"{seconds:.2f}"),
        ("frames/s", f"{frames / seconds:.0f}"),
    ]


def _synth_videos(folder: Path, videos: int = 8) -> Path:
    from stages import synth

    synth.run(folder, videos=videos, classes=4, seed=1)
    return folder


def _extract_settings(data: Path, work: Path, height: int, width: int):
    """Settings that extract the synthetic videos at 15 fps and the given size with decord."""
    from stages.core.settings_file import load_settings

    return load_settings(
        None,
        [
            f"work_dir={work}",
            f"data.annotations={data / 'anet.json'}",
            f"data.video_dir={data / 'videos'}",
            "data.fps=15",
            f"data.frame_height={height}",
            f"data.frame_width={width}",
            "data.decoder=decord",
        ],
    )


def bench_extract() -> list[tuple[str, str]]:
    """Frames at 15 fps read forward by display time (etad's reader: every picture decoded and
    converted, the wanted ones kept) against decord asking for the same frames by random access
    (what etad did before), and `etad extract` (1 worker, with JPEG + HDF5), same run, 171x128."""
    import decord
    import numpy as np

    from stages import extract, synth
    from stages.data.video_io import TimedVideo

    rows = []
    height, width = 128, 171
    with tempfile.TemporaryDirectory() as tmp:
        for source_fps in (15.0, 30.0):
            data = Path(tmp) / f"data{source_fps:.0f}"
            synth.run(data, videos=8, classes=4, seed=1, fps=source_fps)
            ids = list(json.loads((data / "anet.json").read_text())["database"])
            bare_runs, forward_runs, ours_runs = [], [], []
            for repeat in range(3):  # interleaved, median of 3: they share the machine's state
                start = time.perf_counter()
                frames = 0
                for vid in ids:
                    path = str(data / "videos" / f"{vid}.mp4")
                    reader = decord.VideoReader(path, width=width, height=height, num_threads=1)
                    step = reader.get_avg_fps() / 15.0
                    keep = np.floor(np.arange(int(len(reader) / step)) * step + 1e-6).astype(int)
                    for i in range(0, len(keep), extract.BATCH):
                        frames += len(reader.get_batch(keep[i : i + extract.BATCH].tolist()).asnumpy())
                bare_runs.append(frames / (time.perf_counter() - start))
                start, frames = time.perf_counter(), 0
                for vid in ids:
                    path = data / "videos" / f"{vid}.mp4"
                    video = TimedVideo(path, 15.0, "decord", height=height, width=width)
                    frames += sum(len(batch) for batch in video.frames(extract.BATCH))
                forward_runs.append(frames / (time.perf_counter() - start))
                work = Path(tmp) / f"work{source_fps:.0f}-{repeat}"
                summary = extract.run(_extract_settings(data, work, height, width))
                ours_runs.append(summary.frames / summary.seconds)
            bare, forward, ours = (sorted(runs)[1] for runs in (bare_runs, forward_runs, ours_runs))
            rows += [
                (f"{source_fps:.0f} fps source: decord by random access, frames/s at 15 fps", f"{bare:,.0f}"),
                (f"{source_fps:.0f} fps source: read forward by display time, frames/s", f"{forward:,.0f}"),
                (f"{source_fps:.0f} fps source: ratio forward / random access", f"{forward / bare:.2f}"),
                (f"{source_fps:.0f} fps source: etad extract (+ JPEG, HDF5), frames/s", f"{ours:,.0f}"),
            ]
    return rows


def bench_decoders() -> list[tuple[str, str]]:
    """decord and torchcodec against PyAV at 171x128 on textured 342x256 synthetic videos at 30 fps:
    the same pictures, pixels within the resizers' (and colour conversions') difference (grey levels)."""
    import numpy as np

    from stages import synth
    from stages.data.video_decoders import torchcodec_missing
    from stages.data.video_io import TimedVideo

    others = ["decord"] + ([] if torchcodec_missing() else ["torchcodec"])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        synth.run(Path(tmp), videos=3, classes=4, seed=2, fps=30.0, width=342, height=256, movers=True)
        paths = sorted((Path(tmp) / "videos").glob("*.mp4"))
        for other in others:
            diffs = []
            for path in paths:
                a, b = (TimedVideo(path, 15.0, d, height=128, width=171) for d in ("pyav", other))
                first, second = (v.read(np.arange(len(v))).astype(int) for v in (a, b))
                diffs.append(np.abs(first - second))
            d = np.concatenate([x.ravel() for x in diffs])
            rows += [
                (f"{other}: mean", f"{d.mean():.2f}"),
                (f"{other}: 99th percentile", f"{np.percentile(d, 99):.0f}"),
                (f"{other}: 99.9th percentile", f"{np.percentile(d, 99.9):.0f}"),
                (f"{other}: largest", f"{d.max()}"),
            ]
    return rows


def bench_frame_formats() -> list[tuple[str, str]]:
    """Per-video frame storage candidates for `etad extract`: bytes per frame, full read speed."""
    import h5py
    import numpy as np
    from PIL import Image

    from stages.data.video_io import TimedVideo

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = _synth_videos(Path(tmp) / "data", videos=3)
        frames = np.concatenate(
            [
                TimedVideo(p, 15.0, "decord", height=128, width=171).read(range(300))
                for p in sorted((data / "videos").glob("*.mp4"))
            ]
        )
        n = len(frames)
        out = Path(tmp) / "formats"
        out.mkdir()

        def timed(read) -> float:
            start = time.perf_counter()
            read()
            return n / (time.perf_counter() - start)

        np.save(out / "f.npy", frames)
        rows.append(("npy (raw): bytes/frame", f"{(out / 'f.npy').stat().st_size / n:,.0f}"))
        rows.append(("npy (raw): read frames/s", f"{timed(lambda: np.load(out / 'f.npy').sum()):,.0f}"))
        for comp in ("lzf", "gzip"):
            with h5py.File(out / f"{comp}.h5", "w") as f:
                f.create_dataset("x", data=frames, chunks=(16, *frames.shape[1:]), compression=comp)
            size = (out / f"{comp}.h5").stat().st_size / n

            def read_h5(comp=comp):
                with h5py.File(out / f"{comp}.h5", "r") as f:
                    return f["x"][()]

            rows.append((f"hdf5 {comp}: bytes/frame", f"{size:,.0f}"))
            rows.append((f"hdf5 {comp}: read frames/s", f"{timed(read_h5):,.0f}"))
        jpg = out / "jpg"
        jpg.mkdir()
        for i, frame in enumerate(frames):
            Image.fromarray(frame).save(jpg / f"{i:05d}.jpg", quality=90)
        size = sum(p.stat().st_size for p in jpg.iterdir()) / n
        rows.append(("jpeg q90: bytes/frame", f"{size:,.0f}"))
        rows.append(
            (
                "jpeg q90: read frames/s",
                f"{timed(lambda: [np.asarray(Image.open(p)) for p in jpg.iterdir()]):,.0f}",
            )
        )
    return rows


def bench_cache_read() -> list[tuple[str, str]]:
    """Random single-snippet reads: HDF5 snippet cache (JPEG, raw per compression) against decord."""
    import numpy as np

    from stages import cache, extract
    from stages.core.settings_file import load_settings
    from stages.data.hdf5_cache import VideoCache
    from stages.data.video_io import TimedVideo

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = _synth_videos(Path(tmp) / "data")
        work = Path(tmp) / "work"
        extract.run(_extract_settings(data, work, 128, 171))
        rng = np.random.default_rng(0)
        ids = list(json.loads((data / "anet.json").read_text())["database"])
        picks = [(ids[int(rng.integers(len(ids)))], int(rng.integers(128))) for _ in range(200)]
        for codec, compression in (("jpeg", "none"), ("raw", "none"), ("raw", "lzf"), ("raw", "gzip")):
            name = codec if codec == "jpeg" else compression
            settings = load_settings(
                None,
                [
                    f"work_dir={work}",
                    f"data.annotations={data / 'anet.json'}",
                    f"cache.codec={codec}",
                    f"cache.compression={compression}",
                    f"cache.snippets_dir=cache/{name}",
                ],
            )
            cache.run(settings, what="snippets")
            folder = work / "cache" / name
            store = VideoCache(folder, "snippets")
            size = sum(p.stat().st_size for p in folder.glob("*.h5")) / len(ids)
            start = time.perf_counter()
            for vid, k in picks:
                store.read(vid, k)
            rate = len(picks) / (time.perf_counter() - start)
            rows.append((f"cache ({name}): MB per video (128 snippets x 16 x 171x128)", f"{size / 1e6:.1f}"))
            rows.append((f"cache ({name}): snippets/s", f"{rate:,.0f}"))
        store = VideoCache(work / "cache" / "none", "snippets")
        start = time.perf_counter()
        for vid, k in picks:
            video = TimedVideo(data / "videos" / f"{vid}.mp4", 15.0, "decord", height=128, width=171)
            video.read(store.frame_indices(vid)[k])
        rows.append(
            (
                "decord decode of the same snippets: snippets/s",
                f"{len(picks) / (time.perf_counter() - start):,.0f}",
            )
        )
    return rows


def bench_eval() -> list[tuple[str, str]]:
    """`etad eval` on the full ActivityNet-1.3 validation set (../shared/data), best of 3 runs."""
    from stages.evaluate import evaluate

    data = REPO.parent / "shared" / "data" / "anet"
    pred, gt = data / "sample_detection_prediction.json", data / "anet1.3_val_gt_reconstructed.json"
    if not pred.is_file():
        return [("skipped", f"{data} is absent")]
    rows = []
    for task in ("detection", "proposals"):
        times = []
        for _ in range(3):
            began = time.perf_counter()
            evaluate(pred, gt, "anet", task=task)
            times.append(time.perf_counter() - began)
        rows.append((f"{task}: 4,926 videos, 7,654 predictions, 10 tIoU (s)", f"{min(times):.2f}"))
    return rows


def bench_train() -> list[tuple[str, str]]:
    """Detector training throughput, ActivityNet recipe shapes (512 x 128, 495 proposals), batch 16, CPU."""
    import resource

    import torch

    from benchmarks.e2e_memory import detector_batch
    from stages.model.detector import ETAD
    from stages.model.losses import detector_loss

    torch.manual_seed(0)
    model = ETAD(512, 256, 24, 0.5, n_stages=3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    anchors, batch = detector_batch(16, 128, 128, torch.Generator().manual_seed(0))
    x = torch.randn(16, 512, 128)
    times = []
    for _ in range(4):
        began = time.perf_counter()
        loss = detector_loss(model(x, anchors), batch, [0.7, 0.8, 0.9])["total"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - began)
    best = min(times[1:])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return [
        ("seconds per iteration (batch 16)", f"{best:.2f}"),
        ("videos/s", f"{16 / best:.1f}"),
        ("peak RSS of the benchmark process (MiB)", f"{peak:,.0f}"),
    ]


def _detector_pair(in_channels: int = 512):
    """The ANet-recipe detector (10.34 M parameters) twice, same weights: the default proposal head
    (taps) and the torchvision RoIAlign reference."""
    import copy

    import torch

    from stages.model.detector import ETAD

    torch.manual_seed(0)
    fast = ETAD(in_channels, 256, 24, 0.5, n_stages=3)
    reference = copy.deepcopy(fast)
    for stage in reference.stages:
        stage.roi_mode = "roialign"
    return fast, reference


def _interleaved(runs: dict, repeats: int) -> dict:
    """Median seconds of each callable, run in turn `repeats` times (after one warm-up each)."""
    for run in runs.values():
        run()
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            began = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - began)
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def _versus(t: dict) -> str:
    return f"{t['taps']:.2f} s | {t['roialign']:.2f} s ({t['roialign'] / t['taps']:.2f}x)"


def _step_batch(videos: int, ratio: float) -> tuple:
    """Features, sampled anchors and targets of `videos` videos at the ANet recipe (T = 128)."""
    import torch

    from stages.model.sampling import sample_proposals
    from stages.model.targets import boundary_targets, match_ground_truth, proposal_map

    generator = torch.Generator().manual_seed(0)
    grid, gt = proposal_map(128, 128), torch.tensor([[0.2, 0.5], [0.6, 0.9]])
    anchors = torch.stack(
        [grid[sample_proposals(128, 128, "random", ratio, generator=generator)] for _ in range(videos)]
    )
    start, end = boundary_targets(gt, 128)
    batch = {
        "gt_box": torch.stack([match_ground_truth(a, gt) for a in anchors]),
        "gt_start": start.expand(videos, -1),
        "gt_end": end.expand(videos, -1),
    }
    return torch.randn(videos, 512, 128, generator=generator), anchors, batch


def bench_detector_speed() -> list[tuple[str, str]]:
    """The proposal head without the RoI tensor against the RoIAlign reference, same weights, 1 thread."""
    import torch

    from stages.model.losses import detector_loss
    from stages.model.targets import proposal_map

    torch.set_num_threads(1)
    fast, reference = _detector_pair()

    def step(model, x, anchors, batch):
        def run():
            torch.manual_seed(1)
            model.zero_grad(set_to_none=True)
            detector_loss(model(x, anchors), batch, [0.7, 0.8, 0.9])["total"].backward()

        return run

    def forward(model, x, anchors):
        def run():
            with torch.no_grad():
                model.eval()(x, anchors)
            model.train()

        return run

    rows = []
    x, anchors, batch = _step_batch(16, 0.06)
    t = _interleaved(
        {"taps": step(fast, x, anchors, batch), "roialign": step(reference, x, anchors, batch)}, 3
    )
    rows.append(("training step, ANet recipe (16 videos, 495 proposals each): taps | RoIAlign", _versus(t)))
    for length, videos, repeats in ((128, 4, 3), (256, 2, 2)):
        grid = proposal_map(length, length)[None].expand(videos, -1, -1)
        x = torch.randn(videos, 512, length)
        t = _interleaved({"taps": forward(fast, x, grid), "roialign": forward(reference, x, grid)}, repeats)
        what = f"inference forward, T={length} ({videos} videos, {grid.shape[1]:,} proposals each)"
        rows.append((f"{what}: taps | RoIAlign", _versus(t)))
    for ratio in (0.06, 0.2, 1.0):
        x, anchors, batch = _step_batch(4, ratio)
        t = _interleaved(
            {"taps": step(fast, x, anchors, batch), "roialign": step(reference, x, anchors, batch)}, 1
        )
        what = f"training step, 4 videos, proposal ratio {ratio} ({anchors.shape[1]:,} each)"
        rows.append((f"{what}: taps | RoIAlign", _versus(t)))
    grid = proposal_map(128, 128)[None].expand(4, -1, -1)
    with torch.no_grad(), torch.profiler.profile() as profile:
        fast.eval()(torch.randn(4, 512, 128), grid)
    events = profile.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:6]
    shares = ", ".join(f"{e.key.removeprefix('aten::')} {e.self_cpu_time_total / total:.0%}" for e in top)
    rows.append(("inference profile of the taps head, T=128 (self CPU time)", shares))
    return rows


def bench_startup() -> list[tuple[str, str]]:
    """Wall time of whole `etad` commands (fresh processes, best of 3): what a user waits for."""
    import subprocess

    tiny = REPO / "tests" / "data"
    etad = [sys.executable, "-m", "etad_cli"]
    python = [sys.executable, "-c"]
    commands = {
        "etad eval --help": [*etad, "eval", "--help"],
        "etad eval -p tiny_predictions.json -g tiny_anet.json": [
            *etad,
            "eval",
            "-p",
            str(tiny / "tiny_predictions.json"),
            "-g",
            str(tiny / "tiny_anet.json"),
        ],
        "etad config show examples/demo.yaml": [
            *etad,
            "config",
            "show",
            str(REPO / "examples" / "demo.yaml"),
        ],
        # the floor under any rich --help: Typer (which parses options with pydantic) and its help renderer
        "python -c 'import typer, pydantic, typer.rich_utils'": [
            *python,
            "import typer, pydantic, typer.rich_utils",
        ],
        "python -c 'import torch, torchvision'": [*python, "import torch, torchvision"],
    }
    rows = []
    for what, command in commands.items():
        times = []
        for _ in range(3):
            began = time.perf_counter()
            subprocess.run(command, cwd=REPO, capture_output=True, check=True)
            times.append(time.perf_counter() - began)
        rows.append((f"{what} (s)", f"{min(times):.2f}"))
    return rows


def _e2e_point(mode: str, snippets: int, *extra: str) -> dict:
    """One e2e_memory.py point in a fresh process (glibc told to hand freed blocks back at once)."""
    import subprocess

    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    command = [
        sys.executable,
        str(REPO / "benchmarks" / "e2e_memory.py"),
        "--mode",
        mode,
        "--snippets",
        str(snippets),
    ]
    done = subprocess.run([*command, *extra], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_e2e_memory() -> list[tuple[str, str]]:
    """One e2e iteration, 1 video, R(2+1)D-18, 8x56x56 snippets, ratio 0.3, chunk 4, a process per point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths, modes = (32, 64, 128), ("full", "checkpoint", "sampled")
    points = {(m, t): _e2e_point(m, t) for t in lengths for m in modes}
    rows = []
    for t in lengths:
        full = points["full", t]
        for m in modes:
            p = points[m, t]
            less = full["activation_mib"] / p["activation_mib"]
            slower = p["seconds"] / full["seconds"]
            rows.append(
                (
                    f"{t} snippets, {m}: activations | iteration | time",
                    f"{p['activation_mib']:,.0f} MiB ({less:.1f}x less than full)"
                    f" | {p['iteration_mib']:,.0f} MiB | {p['seconds']:.1f} s ({slower:.2f}x full)",
                )
            )
    sampled = [points["sampled", t]["activation_mib"] for t in lengths]
    rows.append(("sampled activations, 128 vs 32 snippets", f"{sampled[-1] / sampled[0] - 1:+.1%}"))
    rows.append(
        (
            "gradient buffers (every mode, not counted above)",
            f"{points['full', 32]['gradients_mib']:,.0f} MiB",
        )
    )
    rows.append(("raw frames at 128 snippets (uint8)", f"{points['full', 128]['frames_mib']:,.1f} MiB"))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for m in modes:
        axes[0].plot(lengths, [points[m, t]["activation_mib"] for t in lengths], marker="o", label=m)
        axes[1].plot(lengths, [points[m, t]["seconds"] for t in lengths], marker="o", label=m)
    axes[0].set(xlabel="snippets per video", ylabel="activation memory (MiB)", xticks=lengths)
    axes[1].set(xlabel="snippets per video", ylabel="seconds per iteration", xticks=lengths)
    axes[0].legend()
    fig.suptitle(f"one e2e iteration, {machine()}", fontsize=8)
    fig.tight_layout()
    out = REPO / "docs" / "images" / "e2e_memory.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    rows.append(("plot", str(out.relative_to(REPO))))
    (out.with_suffix(".json")).write_text(json.dumps(list(points.values()), indent=1))
    return rows


# one encoder per family at a clip shape it takes that a CPU can backpropagate 128 snippets through
FAMILY_POINTS = {
    "cnn (torchvision r3d_18)": ("r3d_18", 8, 56),
    "transformer (torchvision swin3d_t)": ("swin3d_t", 8, 64),
    "transformer (VideoMAE, videomae_tiny)": ("videomae_tiny", 8, 32),
}


def bench_encoder_families() -> list[tuple[str, str]]:
    """Sampled vs full backward activation memory at 128 snippets per encoder family (1 video, ratio 0.3,
    chunk 4, every stage learning; a process per point)."""
    rows, figures = [], []
    for family, (name, frames, size) in FAMILY_POINTS.items():
        shape = ("--encoder", name, "--frames", str(frames), "--size", str(size))
        full, sampled = (_e2e_point(mode, 128, *shape) for mode in ("full", "sampled"))
        ratio = full["activation_mib"] / sampled["activation_mib"]
        memory = f"{full['activation_mib']:,.0f} | {sampled['activation_mib']:,.0f} MiB ({ratio:.1f}x less)"
        rows.append((f"{family}, {frames} x {size}^2: full | sampled", memory))
        figures.append(
            {
                "family": family,
                "encoder": name,
                "frames": frames,
                "size": size,
                "full": full,
                "sampled": sampled,
                "ratio": ratio,
            }
        )
    out = REPO / "docs" / "images" / "encoder_families.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), "points": figures}, indent=1))
    return rows


def bench_e2e_paper_gpu() -> list[tuple[str, str]]:
    """The paper's setting on a GPU: TSP R(2+1)D-34, 128 x 16 x 112^2 snippets, ratio 0.3, chunk 4."""
    import torch

    if not torch.cuda.is_available():
        return [("skipped", "no CUDA device on this machine")]
    paper = (
        "--encoder",
        "r2plus1d_34_tsp",
        "--frozen-stages",
        "2",
        "--frames",
        "16",
        "--size",
        "112",
        "--device",
        "cuda",
    )
    rows = []
    for mode in ("sampled", "checkpoint", "full"):
        try:
            p = _e2e_point(mode, 128, *paper)
        except Exception as exc:  # full back-propagation may not fit
            rows.append((mode, f"failed: {str(exc).splitlines()[0]}"))
            continue
        rows.append(
            (
                f"{mode}: peak allocated | iteration | time",
                f"{p['peak_mib']:,.0f} MiB | {p['iteration_mib']:,.0f} MiB | {p['seconds']:.2f} s"
                f" ({p['device']})",
            )
        )
    return rows


# ActivityNet-1.3 train+val (../shared/data/anet/tsp_activitynet_v1-3_{train,valid}_metadata.csv,
# 14,950 videos, 30 fps sources): frames decoded, and frames the 128 x 16 snippets store at 15 fps
ANET_SOURCE_FRAMES = 52_706_220  # 2 x the 26,353,110 frames at 15 fps
ANET_STORED_FRAMES = 21_832_681
ANET_VIDEOS = 14_950


def bench_data_path() -> list[tuple[str, str]]:
    """The snippet cache at the ANet E2E shape (128 x 16 frames, 171x128, JPEG q90 vs raw), 1 core:
    bytes per frame, cache writing straight from the videos, loader (read -> decode -> augment)."""
    import h5py
    import torch

    from stages import cache, synth
    from stages.core.settings_file import load_settings
    from stages.data.hdf5_cache import VideoCache
    from stages.train_e2e import augment

    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"  # 342x256 at 30 fps, like ActivityNet's 320p sources
        synth.run(data, videos=4, classes=4, seed=2, fps=30.0, width=342, height=256, movers=True)
        source_frames = sum(
            round(v["duration"] * 30)
            for v in json.loads((data / "anet.json").read_text())["database"].values()
        )
        for codec in ("jpeg", "raw"):
            work = Path(tmp) / codec
            sets = [f"work_dir={work}", f"data.annotations={data / 'anet.json'}", "data.decoder=decord"]
            sets += [f"data.video_dir={data / 'videos'}", f"cache.codec={codec}", "threads=1"]
            settings = load_settings(None, sets)
            began = time.perf_counter()
            summary = cache.run(settings, what="snippets", subsets=None)
            seconds = time.perf_counter() - began
            folder = work / "cache" / "snippets"
            stored = 0  # frames the files hold: each once
            for path in folder.glob("*.h5"):
                with h5py.File(path) as f:
                    stored += int(f["snippet_frames"][()].max()) + 1
            per_frame = summary.frame_bytes / stored
            rows.append((f"{codec}: bytes per stored frame", f"{per_frame:,.0f}"))
            rows.append(
                (f"{codec}: ANet train+val projected disk", f"{per_frame * ANET_STORED_FRAMES / 1e9:,.1f} GB")
            )
            per_source = seconds / source_frames
            rows.append((f"{codec}: cache writing, source frames/s per core", f"{1 / per_source:,.0f}"))
            hours = ANET_SOURCE_FRAMES * per_source / 16 / 3600
            rows.append((f"{codec}: ANet train+val preprocessing on 16 cores", f"{hours:.2f} h"))
            videos = VideoCache(folder, "snippets")
            generator = torch.Generator().manual_seed(0)
            read = aug = 0.0
            unique = 0
            for video_id in videos.ids():
                t0 = time.perf_counter()
                snippets = torch.from_numpy(videos.read(video_id))
                t1 = time.perf_counter()
                augment(snippets, 112, generator)
                read, aug = read + t1 - t0, aug + time.perf_counter() - t1
                unique += len(set(videos.frame_indices(video_id).ravel()))
            anet_unique = ANET_STORED_FRAMES / ANET_VIDEOS
            per_video_read = read / unique * anet_unique  # decoding scales with the frames stored
            per_video_aug = aug / len(videos.ids())  # the same 128 x 16 x 171 x 128 tensor each time
            rows.append((f"{codec}: loader read+decode per ANet video", f"{per_video_read:.2f} s"))
            rows.append((f"{codec}: loader CPU augmentation per ANet video", f"{per_video_aug:.2f} s"))
            rows.append(
                (
                    f"{codec}: loader videos/s per core (CPU augmentation)",
                    f"{1 / (per_video_read + per_video_aug):.2f}",
                )
            )
            rows.append(
                (f"{codec}: loader videos/s per core (without augmentation)", f"{1 / per_video_read:.2f}")
            )
    return rows


def bench_ranks() -> list[tuple[str, str]]:
    """2 CPU ranks (gloo) vs 1 process, 2 epochs of the demo's E2E on 6 synthetic videos: relative L2."""
    from stages import cache, synth
    from stages.core.settings_file import load_settings
    from tests.helpers import demo_config
    from tests.training.test_distributed import _e2e_config, _relative, _run, _trained

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        synth.run(root / "synth", videos=6, classes=4, seed=7, width=64, height=48)
        (root / "shared").mkdir()
        cache.run(load_settings(demo_config(root / "shared", root / "synth"), []), what="snippets")
        runs = {}
        for name, ranks, batch, accumulate in (("2x1", 2, 1, 1), ("1x1x2", 1, 1, 2), ("1x2", 1, 2, 1)):
            (root / name).mkdir()
            config = _e2e_config(
                root / name,
                root / "synth",
                root / "shared",
                accumulate=accumulate,
                epochs=2,
                batch_size=batch,
            )
            _run(config, ranks).check_returncode()
            runs[name] = _trained(root / name)
    return [
        (
            "2 ranks x batch 1 vs 1 process x batch 1 x accumulate 2",
            f"{_relative(runs['1x1x2'], runs['2x1']):.2g}",
        ),
        ("2 ranks x batch 1 vs 1 process x batch 2", f"{_relative(runs['1x2'], runs['2x1']):.2%}"),
    ]


def bench_diagnose() -> list[tuple[str, str]]:
    """Whole processes on ActivityNet validation (the official sample submission perturbed, seeded:
    42,666 detections): `etad diagnose` beside `etad eval` of the same files, best of 3 each."""
    import subprocess

    from tests.helpers import write_anet_diagnosis_case

    shared = REPO.parent / "shared" / "data"
    if not (shared / "anet" / "sample_detection_prediction.json").is_file():
        return [("skipped", f"{shared} is absent")]
    with tempfile.TemporaryDirectory() as tmp:
        gt, pred = write_anet_diagnosis_case(shared, Path(tmp) / "case")
        files = ["--dataset", "anet", "-g", gt, "-p", pred]
        commands = {
            "etad diagnose": ["diagnose", *files, "--out", Path(tmp) / "out"],
            "etad eval": ["eval", *files],
        }
        best = {}
        for name, args in commands.items():
            times = []
            for _ in range(3):
                began = time.perf_counter()
                command = [sys.executable, "-m", "etad_cli", *map(str, args)]
                subprocess.run(command, check=True, capture_output=True)
                times.append(time.perf_counter() - began)
            best[name] = min(times)
    return [(f"{name}, whole process (s)", f"{t:.2f}") for name, t in best.items()] + [
        ("diagnose / eval", f"{best['etad diagnose'] / best['etad eval']:.1f}x")
    ]


BENCHMARKS = [
    bench_synth,
    bench_extract,
    bench_decoders,
    bench_real_decoders,
    bench_frame_formats,
    bench_cache_read,
    bench_eval,
    bench_diagnose,
    bench_train,
    bench_detector_speed,
    bench_startup,
    bench_e2e_memory,
    bench_encoder_families,
    bench_e2e_paper_gpu,
    bench_data_path,
    bench_ranks,
]


def main() -> None:
    only = set(sys.argv[1:])
    console.print(f"machine: {machine()}")
    for bench in BENCHMARKS:
        name = bench.__name__.removeprefix("bench_")
        if only and name not in only:
            continue
        table = Table(title=name, caption=bench.__doc__.strip().splitlines()[0], caption_justify="left")
        table.add_column("what")
        table.add_column("value", justify="right")
        for what, value in bench():
            table.add_row(what, value)
        console.print(table)


if __name__ == "__main__":
    main()
