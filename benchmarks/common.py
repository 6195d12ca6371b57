"""What the benchmarks share: the machine line, small synthetic datasets, settings for them, and
interleaved timing (each variant run in turn, the median kept)."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def checkouts() -> dict[str, Path]:
    """This checkout ("this"), and with ETAD_BEFORE=<path> an earlier commit's ("before") beside it
    (`git worktree add ../before <commit>`): the benchmarks that compare run both, interleaved.
    ETAD_BEFORE=<path>:<path> names two ("before", then "before2"), all three in one call."""
    paths = [Path(p).resolve() for p in os.environ.get("ETAD_BEFORE", "").split(os.pathsep) if p]
    names = ["before"] + [f"before{i}" for i in range(2, len(paths) + 1)]
    return {"this": REPO, **dict(zip(names, paths))}


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}, {gpu}"
    )


def synth_videos(folder: Path, videos: int = 8) -> Path:
    from stages import synth

    synth.run(folder, videos=videos, classes=4, seed=1)
    return folder


def extract_settings(data: Path, work: Path, height: int, width: int):
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


def interleaved(runs: dict, repeats: int) -> dict:
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
