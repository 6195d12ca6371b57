"""`make bench`: run every benchmark side by side on this machine and print one table per benchmark.

Each benchmark is a function (in the module of its area) that returns rows of (what, value). Results
are copied by hand into docs/benchmarks.md together with the machine they came from (printed first).
`python benchmarks/run.py NAME ...` runs the named ones only.
"""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# after the checkout is on sys.path
from benchmarks import data_path, detector, end_to_end, laptop, scoring  # noqa: E402
from benchmarks.common import machine  # noqa: E402
from benchmarks.decoders import bench_real_decoders  # noqa: E402

BENCHMARKS = [
    data_path.bench_synth,
    data_path.bench_extract,
    data_path.bench_decoders,
    bench_real_decoders,
    data_path.bench_frame_formats,
    data_path.bench_cache_read,
    scoring.bench_eval,
    scoring.bench_diagnose,
    detector.bench_train,
    detector.bench_detector_speed,
    detector.bench_startup,
    end_to_end.bench_e2e_memory,
    end_to_end.bench_encoder_families,
    end_to_end.bench_e2e_paper_gpu,
    data_path.bench_data_path,
    detector.bench_ranks,
    laptop.bench_cache_memory,
    laptop.bench_decord_read_ahead,
    laptop.bench_infer_speed,
    laptop.bench_infer_floor,
    laptop.bench_tap_layout,
]


def main() -> None:
    only = set(sys.argv[1:])
    console = Console()
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
