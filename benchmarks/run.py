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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

console = Console()


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


BENCHMARKS = [bench_synth]


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
