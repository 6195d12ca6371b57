"""Benchmarks of the data path: synthetic videos, extraction, decoders, frame formats, cache reads,
and the projection to ActivityNet's size."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from benchmarks.common import extract_settings, synth_videos


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
                summary = extract.run(extract_settings(data, work, height, width))
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
            spread = {
                "mean": f"{d.mean():.2f}",
                "99th percentile": f"{np.percentile(d, 99):.0f}",
                "99.9th percentile": f"{np.percentile(d, 99.9):.0f}",
                "largest": f"{d.max()}",
            }
            rows += [(f"{other}: {name}", value) for name, value in spread.items()]
    return rows


def bench_frame_formats() -> list[tuple[str, str]]:
    """Per-video frame storage candidates for `etad extract`: bytes per frame, full read speed."""
    import h5py
    import numpy as np
    from PIL import Image

    from stages.data.video_io import TimedVideo

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = synth_videos(Path(tmp) / "data", videos=3)
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
        data = synth_videos(Path(tmp) / "data")
        work = Path(tmp) / "work"
        extract.run(extract_settings(data, work, 128, 171))
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
