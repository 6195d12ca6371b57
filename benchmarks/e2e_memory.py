"""Peak memory and time of one end-to-end training iteration, one point per process.

    python benchmarks/e2e_memory.py --mode sampled --snippets 128 [--encoder r2plus1d_18 ...]

prints one JSON line. `make bench` (benchmarks/run.py, e2e_memory) runs every mode x length in a
fresh process each, so one point's allocations cannot hide in another's. Two iterations run; the
second is measured, after the optimizer state exists:
- CPU: peak RSS during the iteration (VmHWM, reset through /proc/self/clear_refs) minus RSS before it
  = the iteration's own memory (activations, gradients, temporaries); glibc is told to return large
  blocks to the system (MALLOC_MMAP_THRESHOLD_) so that freed memory does not linger in RSS.
- GPU: torch.cuda.max_memory_allocated minus memory_allocated before the iteration.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.model.backward import Backward, e2e_gradients  # noqa: E402
from stages.model.detector import ETAD  # noqa: E402
from stages.model.encoder import ENCODERS, build_encoder  # noqa: E402
from stages.model.losses import detector_loss  # noqa: E402
from stages.model.sampling import sample_proposals  # noqa: E402
from stages.model.targets import boundary_targets, match_ground_truth, proposal_map  # noqa: E402


def detector_batch(
    b: int, t: int, max_duration: int, generator: torch.Generator, ratio: float = 0.06
) -> tuple[torch.Tensor, dict]:
    """Sampled anchors [b, P, 2] and targets for two ground-truth instances, as training builds them."""
    grid, gt = proposal_map(t, max_duration), torch.tensor([[0.2, 0.5], [0.6, 0.9]])
    anchors = torch.stack(
        [grid[sample_proposals(t, max_duration, "random", ratio, generator=generator)] for _ in range(b)]
    )
    start, end = boundary_targets(gt, t)
    batch = {
        "gt_box": torch.stack([match_ground_truth(a, gt) for a in anchors]),
        "gt_start": start.expand(b, -1),
        "gt_end": end.expand(b, -1),
    }
    return anchors, batch


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure(
    mode: str,
    snippets: int,
    encoder_name: str,
    frozen_stages: int,
    frames: int,
    size: int,
    ratio: float,
    chunk: int,
    device: str,
) -> dict:
    torch.manual_seed(0)
    dev = torch.device(device)
    encoder = build_encoder(encoder_name, None, frozen_stages, norm_eval=True).to(dev)
    detector = ETAD(encoder.out_dim, 256, 24, 0.5, n_stages=3).to(dev)
    params = [p for p in [*encoder.parameters(), *detector.parameters()] if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-6)
    generator = torch.Generator().manual_seed(0)

    def inputs(t: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
        clips = torch.randint(0, 256, (1, t, frames, size, size, 3), dtype=torch.uint8, generator=generator)
        anchors, batch = detector_batch(1, t, t, generator)
        return clips.to(dev), anchors.to(dev), {k: v.to(dev) for k, v in batch.items()}

    def iteration(clips: torch.Tensor, anchors: torch.Tensor, batch: dict) -> float:
        began = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = lambda out: detector_loss(out, batch, [0.7, 0.8, 0.9])  # noqa: E731
        e2e_gradients(
            mode,
            Backward(
                encoder,
                detector,
                clips,
                loss,
                anchors=anchors,
                chunk_size=chunk,
                ratio=ratio,
                sampling="random",
                generator=generator,
                device=dev,
            ),
        )
        optimizer.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - began

    encoder.train(), detector.train()
    iteration(*inputs(chunk * 2))  # a short warm-up: optimizer state, allocator and kernel caches
    clips, anchors, batch = inputs(snippets)
    optimizer.zero_grad(set_to_none=True)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        seconds = iteration(clips, anchors, batch)
        peak = torch.cuda.max_memory_allocated()
        used, total = peak - before, peak
    else:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        before = _status_kib("VmRSS") * 1024
        seconds = iteration(clips, anchors, batch)
        peak = _status_kib("VmHWM") * 1024
        used, total = peak - before, peak
    grads = sum(p.numel() * p.element_size() for p in params)
    return {
        "mode": mode,
        "snippets": snippets,
        "iteration_mib": used / 2**20,
        "activation_mib": (used - grads) / 2**20,  # less the gradient buffers, which every mode fills
        "gradients_mib": grads / 2**20,
        "peak_mib": total / 2**20,
        "frames_mib": clips.numel() / 2**20,
        "seconds": seconds,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=["sampled", "checkpoint", "full"], required=True)
    p.add_argument("--snippets", type=int, required=True)
    p.add_argument("--encoder", default="r2plus1d_18", choices=list(ENCODERS))
    p.add_argument("--frozen-stages", type=int, default=-1, help="-1: every stage learns")
    p.add_argument("--frames", type=int, default=8, help="frames per snippet")
    p.add_argument("--size", type=int, default=56, help="crop size")
    p.add_argument("--ratio", type=float, default=0.3, help="snippet_ratio (sampled)")
    p.add_argument("--chunk", type=int, default=4, help="chunk_size")
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    print(
        json.dumps(
            measure(
                a.mode, a.snippets, a.encoder, a.frozen_stages, a.frames, a.size, a.ratio, a.chunk, a.device
            )
        )
    )


if __name__ == "__main__":
    main()
