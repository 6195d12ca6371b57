"""Several processes, mixed precision and inference memory, on the CPU (gloo): what the first GPU
run needs to hold. Tests that need CUDA carry the `cuda` marker (skipped without a GPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from stages.core.runtime import Distributed
from stages.model.encoder import build_encoder, encode_chunks
from stages.training.batches import micro_batch_seed, rank_batches
from stages.training.optimisation import Precision
from tests.helpers import REPO, demo_config, run_cli, write_config


def test_ranks_take_the_micro_batches_of_one_process_with_their_accumulation():
    """W ranks x accumulate A: at every step the union of the ranks' micro-batches, in order, is
    what one process with accumulate W x A takes (the same blocks), and no item is taken twice."""
    for n, batch, world, accumulate in [(10, 1, 2, 1), (23, 2, 2, 2), (40, 3, 4, 1), (5, 2, 2, 2)]:
        ranks = [
            rank_batches(n, batch, world=world, rank=r, accumulate=accumulate, seed=3, epoch=1)
            for r in range(world)
        ]
        one = rank_batches(n, batch, world=1, rank=0, accumulate=world * accumulate, seed=3, epoch=1)
        assert all(len(r) == len(ranks[0]) for r in ranks) and len(ranks[0]) % accumulate == 0
        interleaved = [ranks[i % world][i // world] for i in range(world * len(ranks[0]))]
        assert interleaved == one
        if n >= world * accumulate * batch:
            taken = [i for block in one for i in block]
            assert (
                len(taken)
                == len(set(taken))
                == (n // (world * accumulate * batch)) * world * accumulate * batch
            )
    assert rank_batches(10, 2, seed=0, epoch=0) != rank_batches(10, 2, seed=0, epoch=1)  # reshuffled
    evaluation = [rank_batches(7, 2, world=2, rank=r, shuffle=False) for r in range(2)]
    assert sorted({i for r in evaluation for b in r for i in b}) == list(range(7))
    assert len({micro_batch_seed(0, e, m) for e in range(3) for m in range(50)}) == 150


def _tiny_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv3d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 2 * 6 * 6, 1)
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mixed_precision_steps_with_a_cpu_scaler_lower_a_finite_loss(dtype):
    """The one optimizer-step function under CPU autocast: fp16 scales the loss (from 2**16, halved
    after a step whose fp16 gradients overflowed, which is skipped) and unscales before the step;
    several steps give a finite, falling loss."""
    net, precision = _tiny_net(), Precision("fp16" if dtype == torch.float16 else "bf16", torch.device("cpu"))
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-2)
    x, y = torch.randn(8, 3, 4, 8, 8, generator=torch.Generator().manual_seed(1)), torch.ones(8, 1)
    losses = []
    stepped = 0
    for _ in range(12):
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=dtype):
            loss = torch.nn.functional.mse_loss(net(x).float(), y)
        (loss * precision.scale).backward()
        stepped += precision.step(optimizer, grad_clip=1.0)
        losses.append(float(loss))
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < 0.5 * losses[0] and stepped >= 8
    expected = 2.0 ** (16 - (12 - stepped)) if dtype == torch.float16 else 1.0
    assert float(precision.scale) == expected


def test_an_overflowing_fp16_gradient_skips_the_step_and_shrinks_the_scale():
    net, precision = _tiny_net(), Precision("fp16", torch.device("cpu"))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    before = [p.detach().clone() for p in net.parameters()]
    (net(torch.randn(2, 3, 4, 8, 8)).sum() * precision.scale).backward()
    next(net.parameters()).grad[0] = float("inf")
    assert not precision.step(optimizer, grad_clip=0.0)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
    assert float(precision.scale) == 2.0**15


def test_one_process_averages_its_accumulated_gradients():
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.tensor([2.0, 4.0, 6.0])  # the sum of 2 micro-batches' gradients
    Distributed().average_gradients([p], accumulate=2)
    assert torch.equal(p.grad, torch.tensor([1.0, 2.0, 3.0]))


def test_a_clip_cap_gives_the_features_of_one_call():
    encoder = build_encoder("tiny", None, 0, True).eval()
    snippets = torch.randint(0, 255, (3, 6, 4, 40, 40, 3), dtype=torch.uint8)
    whole = encode_chunks(encoder, snippets, 4, 40, device=torch.device("cpu"))
    for cap in (1, 5):
        capped = encode_chunks(encoder, snippets, 4, 40, device=torch.device("cpu"), max_clips=cap)
        assert torch.allclose(capped, whole, atol=1e-6)


# ---- whole runs: torchrun with 2 CPU ranks (gloo) ----------------------------------------------


def _e2e_config(folder, synth_dir, feature_work, *, encoder=None, **e2e):
    cache = {"snippets_dir": str(feature_work / "work" / "cache" / "snippets")}
    path = demo_config(
        folder,
        synth_dir,
        cache=cache,
        model={"classifier_refit_steps": 20},
        e2e={"epochs": 1, "batch_size": 1, **e2e},
    )
    config = yaml.safe_load(path.read_text())
    config["model"]["encoder"].update(encoder or {})
    return write_config(path, config)


def _run(config, ranks: int) -> subprocess.CompletedProcess:
    """`etad train --e2e`: under torchrun with `ranks` > 1; one rank runs in this process (no second
    torch import: 3 s a run)."""
    if ranks == 1:
        return run_cli("train", "-c", config, "--e2e")
    launch = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks)]
    cmd = [sys.executable, *launch, "-m", "etad_cli", "train", "-c", str(config), "--e2e"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600, env=env)


def _trained(folder) -> dict[str, torch.Tensor]:
    """The trained parameters (BatchNorm statistics left out: rank 0's, as under DDP)."""
    state = torch.load(folder / "work/e2e/checkpoints/last.pt", weights_only=True)
    return {
        f"{part}.{k}": v
        for part in ("model", "encoder")
        for k, v in state[part].items()
        if "running_" not in k and "num_batches" not in k
    }


def _relative(a: dict, b: dict) -> float:
    num = sum(float((a[k].double() - b[k].double()).norm() ** 2) for k in a)
    return (num / sum(float(a[k].double().norm() ** 2) for k in a)) ** 0.5


@pytest.mark.slow
@pytest.mark.parametrize(
    "grad_mode,frozen_stages",
    # 3: all of tiny frozen (DDP with parameters that get no gradient, as grad_mode `frozen` has).
    # `full` (plain autograd through the same modules) syncs as `checkpoint` does; ("sampled", 0),
    # the demo's, is the next test's two-rank run (which checks the ranks too)
    [("checkpoint", 0), ("sampled", 3)],
)
def test_two_ranks_train_end_to_end_in_every_grad_mode(
    tmp_path, synth_dir, feature_work, grad_mode, frozen_stages
):
    config = _e2e_config(
        tmp_path, synth_dir, feature_work, encoder={"frozen_stages": frozen_stages}, grad_mode=grad_mode
    )
    out = _run(config, 2)
    assert out.returncode == 0, out.stderr[-3000:]
    log = [json.loads(line) for line in (tmp_path / "work/e2e/metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in log if r.get("event") == "epoch"]
    assert len(epochs) == 1 and len(set(epochs[0]["weights_checksum_per_rank"])) == 1


@pytest.mark.slow
def test_two_ranks_equal_one_process_taking_the_same_micro_batches(tmp_path, synth_dir, feature_work):
    """2 ranks x batch 1 == 1 process x batch 1 x accumulate 2 (the same global step), to float
    rounding. (1 process x batch 2 is another computation: the original's losses normalise over
    the batch they see; docs/train.md gives the measured difference.)"""
    runs = {}
    for name, ranks, accumulate in (("two", 2, 1), ("one", 1, 2)):
        folder = tmp_path / name
        folder.mkdir()
        config = _e2e_config(folder, synth_dir, feature_work, accumulate=accumulate)
        out = _run(config, ranks)
        assert out.returncode == 0, out.stderr[-3000:]
        runs[name] = _trained(folder)
    log = [json.loads(line) for line in (tmp_path / "two/work/e2e/metrics.jsonl").read_text().splitlines()]
    assert len({c for r in log if r.get("event") == "epoch" for c in r["weights_checksum_per_rank"]}) == 1
    assert runs["one"].keys() == runs["two"].keys()
    assert _relative(runs["one"], runs["two"]) < 1e-5


@pytest.mark.slow
def test_fp16_on_the_cpu_runs_the_scaler_and_learns_what_fp32_learns(tmp_path, synth_dir, feature_work):
    """On the CPU autocast is off, so e2e.amp: fp16 is the scaler alone: gradients times 2**16,
    unscaled before the step, the same weights as amp none to float rounding."""
    runs = {}
    for amp in ("none", "fp16"):
        folder = tmp_path / amp
        folder.mkdir()
        out = _run(_e2e_config(folder, synth_dir, feature_work, amp=amp), 1)
        assert out.returncode == 0, out.stderr[-3000:]
        runs[amp] = _trained(folder)
    state = torch.load(tmp_path / "fp16/work/e2e/checkpoints/last.pt", weights_only=True)
    assert state["scaler"]["scale"] == 2.0**16
    assert _relative(runs["none"], runs["fp16"]) < 1e-5


@pytest.mark.slow
def test_inference_under_a_tiny_clip_cap_equals_inference_without_one(tmp_path, synth_dir, feature_work, cli):
    config = _e2e_config(tmp_path, synth_dir, feature_work, epochs=1)
    assert _run(config, 1).returncode == 0
    outputs = []
    for cap, name in (("null", "free"), ("1", "capped")):
        sets = ["--set", f"infer.max_clips={cap}", "--set", f"infer.output=results/{name}.json"]
        result = cli("infer", "-c", config, *sets)
        assert result.returncode == 0, result.output
        outputs.append(json.loads((tmp_path / f"work/results/{name}.json").read_text())["results"])
    assert outputs[0].keys() == outputs[1].keys()
    for video, found in outputs[0].items():
        assert [d["label"] for d in found] == [d["label"] for d in outputs[1][video]]
        assert [d["score"] for d in found] == pytest.approx([d["score"] for d in outputs[1][video]], rel=1e-4)


@pytest.mark.slow
def test_the_gpu_benchmark_script_runs_end_to_end_at_a_toy_shape_on_the_cpu(tmp_path):
    """`make bench-gpu` is one prepared script; its --smoke run on the CPU takes every figure
    (the GPU-only ones empty), so the script is known to work before a GPU is lent."""
    out = tmp_path / "bench"
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu.py", "--smoke", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(out.with_suffix(".json").read_text())
    steps = [v for k, v in figures.items() if k.startswith(("sampled", "full"))]
    assert len(steps) == 6 and all("failed" not in v and v["seconds"] > 0 for v in steps)
    assert figures["loader"]["videos_per_s"] > 0 and "| what | figure |" in out.with_suffix(".md").read_text()
    no_gpu = subprocess.run([sys.executable, "benchmarks/gpu.py"], cwd=REPO, capture_output=True, text=True)
    if not torch.cuda.is_available():
        assert no_gpu.returncode == 0 and no_gpu.stdout.strip().count("\n") == 0
        assert "no CUDA" in no_gpu.stdout


@pytest.mark.cuda
def test_collectives_and_the_clip_cap_on_cuda():
    """On a GPU: the clip cap comes from free memory and capped features equal uncapped ones."""
    from stages.model.encoder import clips_that_fit

    device = torch.device("cuda")
    encoder = build_encoder("tiny", None, 0, True).to(device).eval()
    cap = clips_that_fit(encoder, (4, 40), device)
    assert cap >= 1
    snippets = torch.randint(0, 255, (2, 8, 4, 40, 40, 3), dtype=torch.uint8)
    whole = encode_chunks(encoder, snippets, 4, 40, device=device)
    assert torch.allclose(
        encode_chunks(encoder, snippets, 4, 40, device=device, max_clips=3), whole, atol=1e-5
    )
