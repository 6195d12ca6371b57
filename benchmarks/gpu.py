"""`make bench-gpu`: the GPU checks and figures of ETAD's paper setting, in one prepared run.

    python benchmarks/gpu.py [--out docs/images/bench_gpu] [--quick]

Without CUDA it says so in one line and exits 0. With CUDA (budget: about 8 minutes on one GPU):
1. the tests marked `cuda` (pytest -m cuda);
2. at the paper's setting (TSP R(2+1)D-34, frozen_stages 2, 128 snippets x 16 x 112^2, batch 4,
   chunk 4, snippet ratio 0.3): peak memory per video of each phase of a sampled step (encoder
   forward, detector, sampled backward), step time, and the same for bf16;
3. sampled vs full back-propagation at one video (full at batch 4 does not fit most cards):
   peak memory and step time, side by side;
4. cudnn.benchmark and channels_last_3d, each alone, on the sampled step's time;
5. the loader: videos/s that min(cores - 1, 8) workers deliver from a JPEG snippet cache at the
   ANet shape (128 x 16 x 171 x 128) with augmentation on the device, beside the step's videos/s;
6. 1 vs 2 GPUs (`torchrun`), only where there are two.
Writes <out>.json and <out>.md (a table with the device name). Figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.e2e_memory import detector_batch  # noqa: E402
from stages.core.runtime import PhaseMemory, autocast  # noqa: E402
from stages.model.backward import Backward, e2e_gradients  # noqa: E402
from stages.model.detector import ETAD  # noqa: E402
from stages.model.encoder import build_encoder  # noqa: E402
from stages.model.losses import as_float, detector_loss  # noqa: E402

PAPER = {
    "encoder": "r2plus1d_34_tsp",
    "frozen_stages": 2,
    "snippets": 128,
    "frames": 16,
    "size": 112,
    "batch": 4,
    "chunk": 4,
    "ratio": 0.3,
}
# --smoke: the same script on the CPU at a toy shape (a test runs it: the script works before a GPU)
SMOKE = {**PAPER, "encoder": "tiny", "frozen_stages": 0, "snippets": 8, "frames": 4, "size": 40, "batch": 2}


def cuda_tests() -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    return {"returncode": done.returncode, "summary": (done.stdout.strip().splitlines() or [""])[-1]}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _models(shape: dict, device: torch.device, channels_last: bool = False):
    torch.manual_seed(0)
    encoder = build_encoder(shape["encoder"], None, shape["frozen_stages"], norm_eval=True).to(device)
    if channels_last:
        encoder = encoder.to(memory_format=torch.channels_last_3d)
    detector = ETAD(encoder.out_dim, 256, 24, 0.5, n_stages=3).to(device)
    params = [p for p in [*encoder.parameters(), *detector.parameters()] if p.requires_grad]
    return encoder, detector, torch.optim.AdamW(params, lr=1e-6)


def step_figures(
    shape: dict,
    mode: str,
    batch: int,
    *,
    device: torch.device,
    amp: str = "none",
    channels_last: bool = False,
    repeats: int = 2,
) -> dict:
    """One kind of step at `shape`: seconds (the last of `repeats`), per-phase and whole peak
    memory (CUDA), per video."""
    encoder, detector, optimizer = _models(shape, device, channels_last)
    encoder.train(), detector.train()
    g = torch.Generator().manual_seed(0)
    t, f, s = shape["snippets"], shape["frames"], shape["size"]
    clips = torch.randint(0, 256, (batch, t, f, s, s, 3), dtype=torch.uint8, generator=g)
    clips = clips.pin_memory() if device.type == "cuda" else clips
    anchors, targets = detector_batch(batch, t, t, g)
    anchors, targets = anchors.to(device), {k: v.to(device) for k, v in targets.items()}
    memory = PhaseMemory(device)
    seconds, peak = 0.0, None
    for _ in range(repeats):
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        began = time.perf_counter()
        loss = lambda out: detector_loss(as_float(out), targets, [0.7, 0.8, 0.9])  # noqa: E731
        job = Backward(
            encoder,
            detector,
            clips,
            loss,
            anchors=anchors,
            chunk_size=shape["chunk"],
            ratio=shape["ratio"],
            generator=g,
            device=device,
            phase=memory,
        )
        with autocast(device, amp):
            e2e_gradients(mode, job)
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            peak = torch.cuda.max_memory_allocated(device) / 2**20
        seconds = time.perf_counter() - began
    return {
        "mode": mode,
        "batch": batch,
        "amp": amp,
        "channels_last": channels_last,
        "seconds": seconds,
        "videos_per_s": batch / seconds,
        "peak_mib_per_video": None if peak is None else peak / batch,
        "phase_mib_per_video": {k: v / batch for k, v in memory.peaks_mib.items()},
    }


def guarded(figure, *args, **kwargs) -> dict:
    """A figure, or why it could not be taken (out of memory, mostly)."""
    try:
        return figure(*args, **kwargs)
    except torch.cuda.OutOfMemoryError as exc:
        torch.cuda.empty_cache()
        return {"failed": f"out of memory: {str(exc).splitlines()[0][:160]}"}
    except Exception as exc:  # a benchmark reports, it does not stop the others
        return {"failed": f"{exc.__class__.__name__}: {str(exc)[:160]}"}


def loader_rate(device: torch.device, videos: int = 8) -> dict:
    """Videos/s the training loader delivers from a JPEG snippet cache at the ANet shape, workers
    min(cores - 1, 8), augmentation on the device (the loader reads and decodes only)."""
    import numpy as np

    from stages.core.runtime import loader_workers
    from stages.data.hdf5_cache import VideoCache, write_snippet_file

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for v in range(videos):
            ramp = np.add.outer(np.arange(128), np.arange(171))[None, :, :, None]  # smooth, with grain
            frames = [
                ((ramp + 9 * k + rng.integers(0, 12, (256, 128, 171, 3))) % 256).astype(np.uint8)
                for k in range(6)
            ]
            index = np.arange(128 * 16).reshape(128, 16) * 3 // 4  # overlapping, as ANet's
            attrs = {"kind": "snippets", "video_id": f"v{v}", "fingerprint": ""}
            write_snippet_file(
                folder / f"v{v}.h5",
                frames,
                snippet_frames=index.astype(np.int32),
                frame_indices=index,
                attrs=attrs,
                codec="jpeg",
                quality=90,
            )
        cache = VideoCache(folder, "snippets")

        class Videos(torch.utils.data.Dataset):
            def __len__(self):
                return videos

            def __getitem__(self, i):
                return torch.from_numpy(cache.read(f"v{i}"))

        workers = loader_workers(None, device)
        data = torch.utils.data.DataLoader(
            Videos(),
            batch_size=1,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            prefetch_factor=2 if workers else None,
        )
        began = time.perf_counter()
        for batch in data:
            batch.to(device, non_blocking=True)
        _sync(device)
        return {"workers": workers, "videos_per_s": videos / (time.perf_counter() - began)}


def two_gpus() -> dict:
    if torch.cuda.device_count() < 2:
        return {"skipped": f"{torch.cuda.device_count()} GPU on this machine"}
    return {"skipped": "not measured by this script yet: torchrun --nproc-per-node 2 -m etad_cli train --e2e"}


def table(figures: dict) -> str:
    when = time.strftime("%Y-%m-%d")
    lines = [
        f"`make bench-gpu` on {figures['device']} (torch {torch.__version__}), {when}",
        "",
        "| what | figure |",
        "|---|---|",
    ]
    for name, value in figures.items():
        if name != "device":
            lines.append(f"| {name} | `{json.dumps(value)[:400]}` |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(REPO / "docs" / "images" / "bench_gpu"))
    p.add_argument("--smoke", action="store_true", help="on the CPU at a toy shape: checks the script")
    a = p.parse_args()
    if not torch.cuda.is_available() and not a.smoke:
        print("bench-gpu: no CUDA device on this machine; nothing measured")
        return
    device = torch.device("cpu" if a.smoke else "cuda")
    shape, repeats = (SMOKE, 1) if a.smoke else (PAPER, 2)
    name = "cpu (smoke run)" if a.smoke else torch.cuda.get_device_name(0)
    figures = {"device": name, "shape": shape, "cuda_tests": {} if a.smoke else cuda_tests()}
    b = shape["batch"]

    def step(label: str, mode: str, batch: int, **options) -> None:
        figures[label] = guarded(step_figures, shape, mode, batch, device=device, repeats=repeats, **options)

    step(f"sampled, batch {b}, fp32", "sampled", b)
    step(f"sampled, batch {b}, bf16", "sampled", b, amp="bf16")
    step("sampled, batch 1", "sampled", 1)
    step("full, batch 1", "full", 1)
    torch.backends.cudnn.benchmark = True
    step(f"sampled, batch {b}, cudnn.benchmark", "sampled", b)
    torch.backends.cudnn.benchmark = False
    step(f"sampled, batch {b}, channels_last_3d", "sampled", b, channels_last=True)
    figures["loader"] = guarded(loader_rate, device, videos=2 if a.smoke else 8)
    figures["2 GPUs"] = two_gpus() if not a.smoke else {}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(figures, indent=1))
    out.with_suffix(".md").write_text(table(figures))
    print(table(figures))
    print(f"written: {out.with_suffix('.json')}, {out.with_suffix('.md')}", file=sys.stderr)


if __name__ == "__main__":
    main()
