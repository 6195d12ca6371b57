"""The original ETAD code's inference on the same weights and inputs as `etad infer` (issue 50).

    python benchmarks/original_etad.py prepare RUN_CONFIG CHECKPOINT OUT    # with etad's environment
    cd <sming256/ETAD checkout> && PYTHONPATH=<pandas> python <repo>/benchmarks/original_etad.py \\
        time OUT                                                          # the original, timed

`prepare` writes the first 20 evaluation videos' detector inputs [512, 128] as etad builds them, and
an etad settings file for those 20 videos (OUT/config.yaml). `time`, run from a checkout of
sming256/ETAD (nothing of it is copied here), builds its detector (`lib/models/detector`), loads the
checkpoint's weights through `released_checkpoints.ORIGINAL_DETECTOR_KEYS`, and times, inside its
own process, its inference loop (`lib/core/inferer.py`: forward, stage averaging, a pickle per
video) and its post-processing (`lib/dataset/anet_1_3/post_det.py`, one process a core as its
multicore function). Its one `.cuda()` is made a no-op: the comparison is on the CPU, as etad's.
docs/benchmarks.md ("Laptop scale") has the figures and the command that times etad beside it.
"""

from __future__ import annotations

import importlib.util
import json
import multiprocessing as mp
import os
import pickle
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
VIDEOS = 20


def prepare(config: Path, checkpoint: Path, out: Path) -> None:
    import yaml

    from stages.api import load_settings
    from stages.inference.batches import cached_dataset
    from stages.inference.checkpoint import LoadedCheckpoint

    settings = load_settings(config)
    dataset, _ = cached_dataset(settings, LoadedCheckpoint(settings, checkpoint))
    ids = sorted({item.video_id for item in dataset.items})[:VIDEOS]
    index = {item.video_id: i for i, item in enumerate(dataset.items)}
    truth = json.loads(Path(settings.data.annotations).read_text())["database"]
    out.mkdir(parents=True, exist_ok=True)
    inputs = torch.stack([dataset[index[v]]["inputs"] for v in ids])
    durations = [truth[v]["duration"] for v in ids]
    torch.save(
        {"ids": ids, "inputs": inputs, "durations": durations, "checkpoint": str(checkpoint)},
        out / "inputs.pt",
    )
    (out / "gt.json").write_text(json.dumps({"database": {v: truth[v] for v in ids}}))
    raw = yaml.safe_load(config.read_text())
    raw["work_dir"], raw["data"]["annotations"] = str(out / "work"), str(out / "gt.json")
    raw["cache"] = {**raw.get("cache", {}), "features_dir": str(settings.work_dir / "cache" / "features")}
    raw["infer"]["classifier_file"] = str(settings.infer.classifier_file)
    (out / "config.yaml").write_text(yaml.safe_dump(raw))


def time_original(out: Path) -> dict:
    """Run from the ETAD checkout: its detector and post-processing on OUT's inputs, timed."""
    sys.path.insert(0, os.getcwd())
    from lib.models.detector.detector import detector_model
    from lib.utils.misc import get_valid_mask, reg_to_anchors

    from stages.core.released_checkpoints import ORIGINAL_DETECTOR_KEYS, _rename

    spec = importlib.util.spec_from_file_location("post_det", "lib/dataset/anet_1_3/post_det.py")
    post = importlib.util.module_from_spec(spec)  # not through lib/dataset/__init__ (mmengine)
    spec.loader.exec_module(post)
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # pem.py's one .cuda(): on the CPU
    data = torch.load(out / "inputs.pt", weights_only=True)
    namespace = SimpleNamespace
    cfg = namespace(
        MODEL=namespace(in_channels=512, roi_size=24, stage=[0.7, 0.8, 0.9], extend_ratio=0.5),
        DATASET=namespace(tscale=128, dscale=128),
        EXP_NAME="etad_comparison",
        DETECTION_POST=namespace(iou_threshold=0, sigma=0.35),
    )
    model = detector_model(cfg)
    ours = torch.load(data["checkpoint"], weights_only=True)["model"]
    model.load_state_dict({k: ours[_rename(k, ORIGINAL_DETECTOR_KEYS)] for k in model.state_dict()})
    model.eval()
    t = 128
    starts, ends = [i / t for i in range(t)], [i / t for i in range(1, t + 1)]
    grid = [[starts[j], ends[j + i]] if j + i < t else [0, 0] for i in range(t) for j in range(t)]
    anchors_one = torch.Tensor(grid).reshape(t, t, 2)[torch.from_numpy(get_valid_mask(t, t)).bool()]
    folder = Path("exps") / cfg.EXP_NAME / "output"
    folder.mkdir(parents=True, exist_ok=True)
    import yaml

    config = yaml.safe_load((out / "config.yaml").read_text())
    classes = json.loads(Path(config["infer"]["classifier_file"]).read_text())
    videos = {v: {"duration": d} for v, d in zip(data["ids"], data["durations"])}
    torch.set_num_threads(os.cpu_count())
    began = time.perf_counter()
    with torch.no_grad():  # lib/core/inferer.py's loop, its batch size 16
        for start in range(0, len(data["ids"]), 16):
            x, names = data["inputs"][start : start + 16], data["ids"][start : start + 16]
            tem, stages = model(x, anchors_one[None].repeat(len(x), 1, 1))
            anchors = torch.stack([reg_to_anchors(s[0], s[2]) for s in stages]).mean(dim=0)
            ious = torch.stack([s[1] for s in stages]).mean(dim=0).view(len(x), -1, 2)
            for j, name in enumerate(names):
                result = [
                    np.array(starts),
                    anchors[j].numpy(),
                    tem[j, 0].numpy(),
                    tem[j, 1].numpy(),
                    ious[j].numpy(),
                ]
                with open(folder / f"{name}.pkl", "wb") as f:
                    pickle.dump(result, f, pickle.HIGHEST_PROTOCOL)
    forward = time.perf_counter() - began
    post.result_dict = mp.Manager().dict()  # post_det.gen_detection_multicore's way
    names, workers, share = list(videos), [], len(videos) / os.cpu_count()
    for k in range(os.cpu_count()):
        part = names[int(k * share) : min(len(names), int((k + 1) * share))]
        workers.append(mp.Process(target=post._gen_detection_video, args=(part, videos, classes, cfg)))
        workers[-1].start()
    for worker in workers:
        worker.join()
    results = dict(post.result_dict)
    total = time.perf_counter() - began
    (out / "original.json").write_text(json.dumps({"results": results}))
    return {"videos": len(results), "forward_s": round(forward, 2), "total_s": round(total, 2)}


if __name__ == "__main__":
    if sys.argv[1] == "prepare":
        prepare(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
    else:
        print(json.dumps(time_original(Path(sys.argv[2]))))
