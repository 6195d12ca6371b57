"""`etad infer`: detections for the evaluation subset (or one video file) from a checkpoint.

Runs the detector on every item (cached features for pretraining checkpoints, cached snippets
through the fine-tuned encoder for end-to-end ones), then post-processes (stages.postprocess):
boundary-peak filter, IoU-cls x IoU-reg score, Soft-NMS, classifier fusion, seconds. THUMOS windows
are merged per video with a second Soft-NMS. Writes an ActivityNet-format result JSON atomically.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from stages.annotations import safe_path
from stages.cache import features_dir, snippets_dir
from stages.datasets import DetectionDataset, Item, Timeline, build_items, seconds_per_unit, window_reader
from stages.errors import UserError
from stages.files import atomic_output, write_json
from stages.model.detector import build_detector, final_proposals
from stages.model.encoder import build_encoder, encode_chunks
from stages.model.targets import proposal_map
from stages.postprocess import ClassifierFile, candidates, fuse, soft_nms, top_classes
from stages.store import VideoCache
from stages.training import load_checkpoint, pick_device


@dataclass
class InferSummary:
    output: Path
    videos: int = 0
    detections: int = 0
    seconds: float = 0.0
    plots: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def output_path(settings) -> Path:
    path = Path(settings.infer.output)
    return path if path.is_absolute() else settings.work_dir / path


class Detector:
    """A checkpoint ready to run: the detector, its classes, and (end to end) its encoder."""

    def __init__(self, settings, checkpoint: Path) -> None:
        from etad_cli.settings import ModelSettings

        state = load_checkpoint(checkpoint)
        self.kind = state.get("kind", "pretrain")
        self.classes: list[str] = list(state["classes"])
        self.model_settings = ModelSettings.model_validate(state["settings"]["model"])
        self.device = pick_device(settings.infer.device)
        self.model = build_detector(self.model_settings, len(self.classes))
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise UserError(
                f"{checkpoint}: weights do not fit the detector: {str(exc).splitlines()[0]}"
            ) from None
        self.model.to(self.device).eval()
        self.encoder = None
        if "encoder" in state:
            e = self.model_settings.encoder
            self.encoder = build_encoder(e.name, None, e.frozen_stages, e.norm_eval)
            self.encoder.load_state_dict(state["encoder"])
            self.encoder.to(self.device).eval()
        self.chunk_size = settings.e2e.chunk_size

    @torch.no_grad()
    def __call__(self, inputs: torch.Tensor, anchors: torch.Tensor) -> dict:
        """inputs: features [B, C, T] or (end to end) uint8 snippets [B, T, L, H, W, 3]."""
        if self.encoder is not None:
            crop = self.model_settings.encoder.crop_size
            inputs = encode_chunks(self.encoder, inputs, self.chunk_size, crop, self.device)
        inputs = inputs.to(self.device)
        out = self.model(inputs, anchors.to(self.device).expand(len(inputs), -1, -1))
        proposals, iou = final_proposals(out)
        result = {
            "proposals": proposals.cpu().numpy(),
            "iou": iou.cpu().numpy(),
            "tem": out["tem"].cpu().numpy(),
        }
        if "classes" in out:
            result["class_probs"] = torch.sigmoid(out["classes"]).cpu().numpy()
        return result


def class_scorer(settings, detector: Detector) -> Callable[[str, dict, int], list[tuple[str, float]]]:
    """Which classes a video's proposals are labelled with, per infer.classifier."""
    inf = settings.infer
    if inf.classifier == "none":
        return lambda _vid, _out, _i: [("action", 1.0)]
    if inf.classifier == "file":
        if inf.classifier_file is None:
            raise UserError("infer.classifier is 'file' but infer.classifier_file is not set")
        source = ClassifierFile(inf.classifier_file, detector.classes)
        return lambda vid, _out, _i: top_classes(source.scores(vid), source.names, inf.top_k_classes)
    if detector.model.classifier is None:
        raise UserError(
            "infer.classifier is 'builtin' but the checkpoint has no classifier head "
            "(train with model.classifier_head: true, or use infer.classifier: file)"
        )
    return lambda _vid, out, i: top_classes(out["class_probs"][i], detector.classes, inf.top_k_classes)


def dataset_for(settings, detector: Detector) -> tuple[DetectionDataset, list[str]]:
    d = settings.data
    kind = "snippets" if detector.encoder is not None else "features"
    cache = VideoCache(snippets_dir(settings) if kind == "snippets" else features_dir(settings), kind)
    load = window_reader(cache, d.temporal_scale)
    items, classes, notes = build_items(settings, d.eval_subset, cache.length, training=False)
    if classes != detector.classes:
        notes.append("the annotation file's classes differ from the checkpoint's; using the checkpoint's")
    return DetectionDataset(items, detector.classes, settings, load, "test"), notes


def run(
    settings,
    checkpoint: Path,
    plot_videos: int = 0,
    on_start: Callable[[int], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> InferSummary:
    inf = settings.infer
    began = time.perf_counter()
    detector = Detector(settings, checkpoint)
    dataset, notes = dataset_for(settings, detector)
    scorer = class_scorer(settings, detector)
    t = settings.data.temporal_scale
    anchors = proposal_map(t, detector.model_settings.max_duration)[None]
    timeline = Timeline(settings.data.fps, settings.data.snippet_stride, settings.data.snippet_length)
    data = torch.utils.data.DataLoader(dataset, batch_size=inf.batch_size, num_workers=settings.train.workers)
    if on_start:
        on_start(len(dataset))
    kept: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    labels: dict[str, list[tuple[str, float]]] = {}
    items: dict[str, Item] = {}
    for batch in data:
        out = detector(batch["inputs"], anchors)
        for row, index in enumerate(batch["index"].tolist()):
            item = dataset.items[index]
            segs, scores = candidates(out["proposals"][row], out["iou"][row], out["tem"][row])
            segs, scores = soft_nms(segs, scores, inf.soft_nms_sigma, inf.top_k, inf.min_score)
            to_seconds = seconds_per_unit(item, t, timeline)
            kept.setdefault(item.video_id, []).append((to_seconds(segs), scores))
            items.setdefault(item.video_id, item)
            if item.video_id not in labels:
                labels[item.video_id] = scorer(item.video_id, out, row)
        if on_batch:
            on_batch(len(batch["index"]))
    results = {}
    for video_id, parts in kept.items():
        segs = np.concatenate([p[0] for p in parts]).reshape(-1, 2)
        scores = np.concatenate([p[1] for p in parts])
        if len(parts) > 1:  # THUMOS: merge the windows of a video
            segs, scores = soft_nms(segs, scores, inf.soft_nms_sigma, inf.top_k, inf.min_score)
        results[video_id] = fuse(segs, scores, labels[video_id])
    output = output_path(settings)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_json(output, {"version": "ActivityNet 1.3", "results": results, "external_data": {}}, indent=None)
    summary = InferSummary(output, len(results), sum(len(v) for v in results.values()), notes=notes)
    if plot_videos:
        folder = output.parent / "plots"
        folder.mkdir(parents=True, exist_ok=True)
        for video_id in list(results)[:plot_videos]:
            path = safe_path(folder, video_id, "{id}.png")
            plot_timeline(items[video_id], results[video_id], path)
            summary.plots.append(path)
    summary.seconds = time.perf_counter() - began
    return summary


def plot_timeline(item: Item, detections: list[dict], path: Path, top: int = 10) -> None:
    """Ground truth above, the top detections below, on the video's time axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = sorted(detections, key=lambda d: -d["score"])[:top]
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.3 * (len(best) + 1)))
    for s, e, label in item.segments:
        ax.barh(0, e - s, left=s, color="tab:green", height=0.6)
        ax.text(s, 0, f" {label}", va="center", fontsize=7)
    for row, det in enumerate(best, start=1):
        s, e = det["segment"]
        ax.barh(
            row, e - s, left=s, color="tab:blue", alpha=0.3 + 0.7 * min(1.0, det["score"] / best[0]["score"])
        )
        ax.text(s, row, f" {det['label']} {det['score']:.2f}", va="center", fontsize=7)
    ax.set_yticks([0, *range(1, len(best) + 1)], ["truth", *[f"#{i}" for i in range(1, len(best) + 1)]])
    ax.invert_yaxis()
    ax.set_xlim(0, item.duration)
    ax.set_xlabel("seconds")
    ax.set_title(item.video_id)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
