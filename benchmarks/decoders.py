"""The three decoders through `etad extract` on the shared real files (../shared/data/real_videos):
seconds and frames stored per second, whole processes, interleaved, median of 3. With
ETAD_BEFORE=<a checkout of an earlier commit> (`git worktree add ../before <commit>`), the same
`etad extract` of that checkout runs interleaved with this one's (PyAV, decord): the cost of a change.

decord against decord2 (the maintained fork installs the same `decord` module, so each runs in its
own environment): `python benchmarks/decoders.py frames OUT.npz` in each reads every real file as
etad reads decord (forward, batches of 32, 171x128) and keeps the frames and seconds;
`python benchmarks/decoders.py compare A.npz B.npz` prints counts, pixels and times side by side.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "real_videos"
DECODERS = ("decord", "pyav", "torchcodec")
EXTRACT = """
import json, sys, tempfile, time
from pathlib import Path
from stages import extract
from stages.core.settings_file import load_settings
annotations, videos, decoder = sys.argv[1:4]
with tempfile.TemporaryDirectory() as tmp:
    settings = load_settings(None, [f"work_dir={tmp}", f"data.annotations={annotations}",
        f"data.video_dir={videos}", 'data.video_name=["{id}.*"]', "data.fps=15", "data.frame_height=128",
        "data.frame_width=171",
        f"data.decoder={decoder}", "data.eval_subset=validation", "cache.jpeg_quality=90"])
    began = time.perf_counter()
    summary = extract.run(settings)
    print(json.dumps({"frames": summary.frames, "seconds": time.perf_counter() - began}))
"""


def _files() -> list[Path]:
    return sorted(p for p in REAL.glob("*") if p.suffix in {".mp4", ".mpg"})


def _annotations(folder: Path) -> Path:
    """An annotation file naming the real files (durations from their index), for `etad extract`."""
    from stages.data.video_index import probe

    database = {
        p.stem: {"subset": "validation", "duration": probe(p).duration, "annotations": []} for p in _files()
    }
    target = folder / "anet.json"
    target.write_text(json.dumps({"database": database}))
    return target


def _extract(checkout: Path, annotations: Path, decoder: str) -> dict:
    """`etad extract` of `checkout` in a fresh process: {"frames", "seconds"}."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    done = subprocess.run(
        [sys.executable, "-c", EXTRACT, str(annotations), str(REAL), decoder],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=checkout,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_real_decoders() -> list[tuple[str, str]]:
    """decord, PyAV and torchcodec through `etad extract` (15 fps, 171x128, JPEG + HDF5, 1 worker) on
    the five shared real files, each run a fresh process: seconds and frames stored/s, median of 3
    interleaved runs (ETAD_BEFORE: an earlier checkout's too)."""
    from stages.data.video_decoders import decord_available, torchcodec_missing

    if not REAL.is_dir():
        return [("skipped", f"{REAL} is absent")]
    usable = [
        d
        for d in DECODERS
        if (d != "decord" or decord_available()) and (d != "torchcodec" or torchcodec_missing() is None)
    ]
    from benchmarks.common import checkouts

    compared = checkouts()
    runs: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        annotations = _annotations(Path(tmp))
        for _ in range(3):
            for name, checkout in compared.items():
                for decoder in usable if name == "this" else ("pyav", "decord"):
                    runs.setdefault((name, decoder), []).append(_extract(checkout, annotations, decoder))
    rows = [("files", f"{len(_files())}"), ("frames stored", f"{runs['this', 'pyav'][0]['frames']}")]
    for (name, decoder), done in runs.items():
        seconds = statistics.median(r["seconds"] for r in done)
        rows.append(
            (
                f"{name}: {decoder}, etad extract seconds (frames stored/s)",
                f"{seconds:.2f} ({done[0]['frames'] / seconds:,.0f})",
            )
        )
    for decoder in ("pyav", "decord") if "before" in compared else ():
        ratio = statistics.median(r["seconds"] for r in runs["this", decoder]) / statistics.median(
            r["seconds"] for r in runs["before", decoder]
        )
        rows.append((f"this / before, {decoder}", f"{ratio:.2f}"))
    return rows


def read_all_frames(out: Path) -> None:
    """Every real file read with the importable `decord` as etad reads it; frames and seconds kept."""
    import decord
    import numpy as np

    kept = {}
    for path in _files():
        began = time.perf_counter()
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), width=171, height=128, num_threads=1)
        count = len(reader)
        frames = np.concatenate(
            [reader.get_batch(list(range(i, min(i + 32, count)))).asnumpy() for i in range(0, count, 32)]
        )
        kept[path.name] = frames
        kept[path.name + ":seconds"] = np.array(time.perf_counter() - began)
    np.savez_compressed(out, version=np.array(decord.__version__), **kept)


def compare(first: Path, second: Path) -> None:
    """Counts, identical pixels, mean grey-level difference and seconds of two `frames` files."""
    import numpy as np

    a, b = np.load(first), np.load(second)
    print(
        f"{'file':26s} {'frames':>11s} {'identical':>9s} {'mean diff':>9s} {'seconds':>13s}  "
        f"({a['version']} / {b['version']})"
    )
    for name in (n for n in a.files if n not in ("version",) and not n.endswith(":seconds")):
        x, y = a[name], b[name]
        same = x.shape == y.shape
        diff = f"{np.abs(x.astype(int) - y.astype(int)).mean():.2f}" if same else "-"
        print(
            f"{name:26s} {len(x):>5d}/{len(y):<5d} {str(same and np.array_equal(x, y)):>9s} {diff:>9s} "
            f"{float(a[name + ':seconds']):>6.2f}/{float(b[name + ':seconds']):<6.2f}"
        )


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    command, *paths = sys.argv[1:]
    {
        "frames": lambda: read_all_frames(Path(paths[0])),
        "compare": lambda: compare(Path(paths[0]), Path(paths[1])),
    }[command]()
