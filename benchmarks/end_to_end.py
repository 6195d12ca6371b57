"""Benchmarks of end-to-end training: memory against snippets, encoder families, the paper's GPU point."""

from __future__ import annotations

import json
import os
import sys

from benchmarks.common import REPO, machine


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
