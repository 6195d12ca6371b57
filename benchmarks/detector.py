"""Benchmarks of the detector: a training run, the forward against the RoIAlign reference,
start-up, and ranks."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import REPO, interleaved


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


def _versus(t: dict) -> str:
    return f"{t['taps']:.2f} s | {t['roialign']:.2f} s ({t['roialign'] / t['taps']:.2f}x)"


def _step_batch(videos: int, ratio: float) -> tuple:
    """Features, sampled anchors and targets of `videos` videos at the ANet recipe (T = 128)."""
    import torch

    from benchmarks.e2e_memory import detector_batch

    generator = torch.Generator().manual_seed(0)
    anchors, batch = detector_batch(videos, 128, 128, generator, ratio=ratio)
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
    t = interleaved(
        {"taps": step(fast, x, anchors, batch), "roialign": step(reference, x, anchors, batch)}, 3
    )
    rows.append(("training step, ANet recipe (16 videos, 495 proposals each): taps | RoIAlign", _versus(t)))
    for length, videos, repeats in ((128, 4, 3), (256, 2, 2)):
        grid = proposal_map(length, length)[None].expand(videos, -1, -1)
        x = torch.randn(videos, 512, length)
        t = interleaved({"taps": forward(fast, x, grid), "roialign": forward(reference, x, grid)}, repeats)
        what = f"inference forward, T={length} ({videos} videos, {grid.shape[1]:,} proposals each)"
        rows.append((f"{what}: taps | RoIAlign", _versus(t)))
    for ratio in (0.06, 0.2, 1.0):
        x, anchors, batch = _step_batch(4, ratio)
        t = interleaved(
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

    tiny = REPO / "tests" / "files"
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
        # the same import and exit, with the objects frozen out of the last garbage collection, as
        # etad_cli.app.main leaves every command
        "python -c 'import torch'": [*python, "import torch"],
        "python -c 'import torch, gc; gc.freeze()'": [*python, "import torch, gc; gc.freeze()"],
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
