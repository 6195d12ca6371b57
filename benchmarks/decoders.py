"""The three decoders through `etad extract` on the shared real files (../shared/data/real_videos):
frames stored per second and source pictures decoded per second, interleaved, median of 3."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "real_videos"
DECODERS = ("decord", "pyav", "torchcodec")


def _annotations(folder: Path) -> tuple[Path, list[Path]]:
    """An annotation file naming the real files (durations from PyAV's index), for `etad extract`."""
    from stages.data.video_index import read_index

    files = sorted(p for p in REAL.glob("*") if p.suffix in {".mp4", ".mpg"})
    database = {}
    for path in files:
        index = read_index(path)
        database[path.stem] = {
            "subset": "validation",
            "duration": float(index.times[-1] + index.interval),
            "annotations": [],
        }
    target = folder / "anet.json"
    target.write_text(json.dumps({"database": database}))
    return target, files


def bench_real_decoders() -> list[tuple[str, str]]:
    """decord, PyAV and torchcodec through `etad extract` (15 fps, 171x128, JPEG + HDF5, 1 worker) on
    the five shared real files: frames stored/s and source pictures/s, median of 3 interleaved runs."""
    from stages import extract
    from stages.core.settings_file import load_settings
    from stages.data.video_decoders import decord_available, torchcodec_missing

    if not REAL.is_dir():
        return [("skipped", f"{REAL} is absent")]
    usable = [
        d
        for d in DECODERS
        if (d != "decord" or decord_available()) and (d != "torchcodec" or torchcodec_missing() is None)
    ]
    runs: dict[str, list[tuple[float, float]]] = {d: [] for d in usable}
    with tempfile.TemporaryDirectory() as tmp:
        annotations, files = _annotations(Path(tmp))
        pictures = 0
        for repeat in range(3):
            for decoder in usable:
                work = Path(tmp) / f"{decoder}-{repeat}"
                settings = load_settings(
                    None,
                    [
                        f"work_dir={work}",
                        f"data.annotations={annotations}",
                        f"data.video_dir={REAL}",
                        'data.video_name=["{id}.*"]',
                        "data.fps=15",
                        "data.frame_height=128",
                        "data.frame_width=171",
                        f"data.decoder={decoder}",
                        "data.eval_subset=validation",
                        "cache.jpeg_quality=90",
                    ],
                )
                start = time.perf_counter()
                summary = extract.run(settings)
                seconds = time.perf_counter() - start
                facts = json.loads((work / "frames" / "videos.json").read_text())
                pictures = sum(f["coded_frames"] for f in facts.values())
                runs[decoder].append((summary.frames / seconds, pictures / seconds))
    rows = [("files", f"{len(files)} ({pictures} source pictures)")]
    for decoder in usable:
        stored, decoded = sorted(runs[decoder])[1]
        rows += [
            (f"{decoder}: frames stored/s", f"{stored:,.0f}"),
            (f"{decoder}: source pictures/s", f"{decoded:,.0f}"),
        ]
    return rows
