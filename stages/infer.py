"""`etad infer`: detections for the evaluation subset (or one video file) from a checkpoint.

Runs the detector on every item (cached features for pretraining checkpoints, cached snippets
through the fine-tuned encoder for end-to-end ones; `--video` decodes and encodes one file), then
post-processes (stages.postprocess): boundary-peak filter, IoU-cls x IoU-reg score, Soft-NMS,
classifier fusion, seconds. THUMOS windows are merged per video with a second Soft-NMS. Writes an
ActivityNet-format result JSON atomically.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from stages.annotations import safe_path
from stages.cache import FeatureEncoder, features_dir, snippet_frame_indices, snippets_dir
from stages.datasets import (
    DetectionDataset,
    Item,
    Timeline,
    build_items,
    seconds_per_unit,
    video_items,
    window_reader,
)
from stages.errors import UserError
from stages.files import atomic_output, write_json
from stages.model.detector import build_detector, final_proposals
from stages.model.encoder import build_encoder, encode_chunks
from stages.model.targets import proposal_map
from stages.postprocess import ClassifierFile, candidates, fuse, soft_nms, top_classes
from stages.snippets import resample_frame_indices
from stages.store import VideoCache
from stages.training import load_checkpoint, pick_device
from stages.video import VideoError, VideoReader


@dataclass
class InferSummary:
    output: Path
    kind: str  # the checkpoint's: pretrain (frozen features) or finetune (end to end)
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
        model = dict(state["settings"]["model"])
        # the encoder's weight file was needed to train, not to run: it may not exist on this machine
        model["encoder"] = {**model["encoder"], "checkpoint": None}
        self.model_settings = ModelSettings.model_validate(model)
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
        if inputs.dtype == torch.uint8:
            inputs = self.encode(inputs)
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

    def encode(self, snippets: torch.Tensor) -> torch.Tensor:
        """uint8 snippets [B, T, L, H, W, 3] -> features [B, D, T] with the fine-tuned encoder."""
        if self.encoder is None:
            raise UserError("this checkpoint has no encoder; it runs on cached features")
        crop = self.model_settings.encoder.crop_size
        return encode_chunks(self.encoder, snippets, self.chunk_size, crop, self.device)


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


def detect(
    settings,
    detector: Detector,
    items: list[Item],
    inputs: torch.utils.data.Dataset,
    scorer: Callable[[str, dict, int], list[tuple[str, float]]],
    on_batch: Callable[[int], None] | None = None,
) -> tuple[dict[str, list[dict]], dict[str, list[float]]]:
    """Detections per video, in seconds: the detector over every item (`inputs[i]` is
    {"inputs", "index": i}), then post-processing. Also the built-in head's video-level class
    scores (those that labelled each video; empty without a head)."""
    inf = settings.infer
    t = settings.data.temporal_scale
    anchors = proposal_map(t, detector.model_settings.max_duration)[None]
    timeline = Timeline(settings.data.fps, settings.data.snippet_stride, settings.data.snippet_length)
    data = torch.utils.data.DataLoader(inputs, batch_size=inf.batch_size, num_workers=settings.train.workers)
    kept: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    labels: dict[str, list[tuple[str, float]]] = {}
    class_scores: dict[str, list[float]] = {}
    for batch in data:
        out = detector(batch["inputs"], anchors)
        for row, index in enumerate(batch["index"].tolist()):
            item = items[index]
            segs, scores = candidates(out["proposals"][row], out["iou"][row], out["tem"][row])
            segs, scores = soft_nms(segs, scores, inf.soft_nms_sigma, inf.top_k, inf.min_score)
            to_seconds = seconds_per_unit(item, t, timeline)
            kept.setdefault(item.video_id, []).append((to_seconds(segs), scores))
            if item.video_id not in labels:
                labels[item.video_id] = scorer(item.video_id, out, row)
                if "class_probs" in out:
                    class_scores[item.video_id] = out["class_probs"][row].round(6).tolist()
        if on_batch:
            on_batch(len(batch["index"]))
    results = {}
    for video_id, parts in kept.items():
        segs = np.concatenate([p[0] for p in parts]).reshape(-1, 2)
        scores = np.concatenate([p[1] for p in parts])
        if len(parts) > 1:  # THUMOS: merge the windows of a video
            segs, scores = soft_nms(segs, scores, inf.soft_nms_sigma, inf.top_k, inf.min_score)
        results[video_id] = fuse(segs, scores, labels[video_id])
    return results, class_scores


def classes_path(output: Path) -> Path:
    """Where `etad infer` saves the built-in head's video-level scores, in the CUHK classifier layout."""
    return output.with_suffix(".classes.json")


def write_results(path: Path, results: dict[str, list[dict]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"version": "ActivityNet 1.3", "results": results, "external_data": {}}, indent=None)


def run(
    settings,
    checkpoint: Path,
    plot_videos: int = 0,
    on_start: Callable[[int], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> InferSummary:
    began = time.perf_counter()
    detector = Detector(settings, checkpoint)
    dataset, notes = dataset_for(settings, detector)
    scorer = class_scorer(settings, detector)
    if on_start:
        on_start(len(dataset))
    results, class_scores = detect(settings, detector, dataset.items, dataset, scorer, on_batch)
    output = output_path(settings)
    write_results(output, results)
    if settings.infer.classifier == "builtin":  # reusable as infer.classifier_file for another model
        write_json(classes_path(output), {"class": detector.classes, "results": class_scores}, indent=None)
    detections = sum(len(v) for v in results.values())
    summary = InferSummary(output, detector.kind, len(results), detections, notes=notes)
    if plot_videos:
        items = {item.video_id: item for item in dataset.items}
        folder = output.parent / "plots"
        folder.mkdir(parents=True, exist_ok=True)
        for video_id in list(results)[:plot_videos]:
            path = safe_path(folder, video_id, "{id}.png")
            plot_timeline(items[video_id], results[video_id], path)
            summary.plots.append(path)
    summary.seconds = time.perf_counter() - began
    return summary


def video_features(
    settings, detector: Detector, video: Path, on_snippets: Callable[[int, int], None] | None = None
) -> tuple[np.ndarray, float]:
    """Features [N, D] of one video file and its duration in seconds: decoded at data.fps and the
    data frame size, cut into snippets by the dataset's rule, encoded in batches (the fine-tuned
    encoder of an end-to-end checkpoint, else model.encoder of the settings, as `etad cache` does)."""
    d = settings.data
    try:
        reader = VideoReader(video, d.decoder, d.frame_height, d.frame_width)
    except VideoError as exc:
        raise UserError(str(exc)) from None
    keep = resample_frame_indices(len(reader), reader.info.fps or d.fps, d.fps)
    positions = keep[snippet_frame_indices(settings, len(keep))]  # [N, L] source frame indices
    frozen = None if detector.encoder is not None else FeatureEncoder(settings)
    batch = settings.cache.batch_size
    out = []
    for start in range(0, len(positions), batch):
        rows = positions[start : start + batch]
        wanted, where = np.unique(rows, return_inverse=True)
        try:
            frames = reader.get_frames(wanted)
        except VideoError as exc:
            raise UserError(str(exc)) from None
        snippets = frames[where.reshape(rows.shape)]  # [n, L, H, W, 3]
        if frozen is not None:
            out.append(frozen.encode(snippets))
        else:
            out.append(detector.encode(torch.from_numpy(snippets)[None])[0].T.cpu().numpy())
        if on_snippets:
            on_snippets(start + len(rows), len(positions))
    features = np.concatenate(out)
    if features.shape[1] != detector.model_settings.in_channels:
        raise UserError(
            f"{video}: the encoder gives {features.shape[1]}-d features but the checkpoint's detector "
            f"expects {detector.model_settings.in_channels} (model.encoder differs from training)"
        )
    return features, len(keep) / d.fps


def video_inputs(settings, detector: Detector, features: np.ndarray, items: list[Item]) -> list[torch.Tensor]:
    """The detector's input [C, t] for each item of a video, built as the checkpoint was trained:
    a frozen-feature detector reads features as `etad train` does (resized, or zero-padded
    windows); an end-to-end one takes the encoder's output as it is, a short window padded with its
    last snippet (as the snippet cache is read)."""
    t = settings.data.temporal_scale
    if detector.encoder is None:

        def load(_video_id: str, window: int | None) -> np.ndarray:
            return features if window is None else features[window : window + t]

        dataset = DetectionDataset(items, detector.classes, settings, load, "test")
        return [dataset.inputs(item) for item in items]
    x = torch.from_numpy(features).T
    out = []
    for item in items:
        part = x if item.window is None else x[:, item.window : item.window + t]
        out.append(torch.cat([part, part[:, -1:].expand(-1, t - part.shape[1])], dim=1))
    return out


def run_video(
    settings, checkpoint: Path, video: Path, on_snippets: Callable[[int, int], None] | None = None
) -> tuple[list[dict], Path, list[str]]:
    """Detections of one video file that is in no annotation file, best first; saved as
    ActivityNet-format JSON beside infer.output as `<video name>.json`."""
    detector = Detector(settings, checkpoint)
    notes = []
    if settings.infer.classifier == "file":  # a classifier file has no scores for a new video
        settings = settings.model_copy(deep=True)
        settings.infer.classifier = "builtin" if detector.model.classifier is not None else "none"
        notes.append(f"infer.classifier 'file' cannot score a new video; using {settings.infer.classifier!r}")
    scorer = class_scorer(settings, detector)
    features, duration = video_features(settings, detector, video, on_snippets)
    video_id = video.stem
    items = video_items(settings, video_id, duration, [], len(features))
    inputs = [
        {"inputs": x, "index": i} for i, x in enumerate(video_inputs(settings, detector, features, items))
    ]
    results, _ = detect(settings, detector, items, inputs, scorer)
    detections = sorted(results[video_id], key=lambda det: -det["score"])
    output = safe_path(output_path(settings).parent, video.name, "{id}.json")
    write_results(output, {video_id: detections})
    return detections, output, notes


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
