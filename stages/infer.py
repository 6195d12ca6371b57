"""`etad infer`: detections for the evaluation subset (or one video file) from a checkpoint.

Runs the detector on every item (cached features for frozen-feature checkpoints, cached snippets
through the trained encoder for end-to-end ones; `--video` decodes and encodes one file), then
post-processes (stages.evaluation.postprocess, the original's or OpenTAD's form): boundary-peak filter,
IoU-cls x IoU-reg score, Soft-NMS, seconds, classifier fusion; windows of a video are merged with a
second Soft-NMS. Writes an ActivityNet-format result JSON atomically.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from stages.core.checkpoints import load_weights, read_checkpoint, released_model_settings
from stages.core.errors import UserError
from stages.core.files import ensure_writable_dir, write_json
from stages.core.progress import SILENT, Progress
from stages.core.runtime import autocast, pick_device, use_threads
from stages.core.settings import ModelSettings, Settings
from stages.core.workdir import (
    RUN_KINDS,
    beside_output,
    features_dir,
    last_checkpoint,
    output_path,
    snippets_dir,
)
from stages.data.annotations import read_json, safe_path
from stages.data.datasets import CacheReader, DetectionDataset, build_items
from stages.data.fingerprints import Expected
from stages.data.frame_codec import decode_jpeg, encode_jpeg
from stages.data.hdf5_cache import VideoCache
from stages.data.protocols import Item, protocol
from stages.data.video_io import TimedVideo, VideoError, VideoFacts
from stages.data.video_selection import WHOLE, Shard
from stages.evaluation.detections import check_results
from stages.evaluation.postprocess import CLASSIFIERS, POST_PROCESSING, Labeller
from stages.evaluation.timeline import plot_timeline
from stages.model.classifier import VideoClassifier
from stages.model.detector import build_detector, final_proposals
from stages.model.encoder import build_encoder, clips_that_fit, encode_chunks
from stages.model.frozen_encoder import FeatureEncoder
from stages.model.targets import proposal_map


@dataclass
class InferSummary:
    output: Path
    kind: str  # the checkpoint's: pretrain (frozen features) or e2e (end to end)
    checkpoint: Path
    task: str  # what the output can be scored as: detection, or proposals (no classes)
    videos: int = 0
    detections: int = 0
    seconds: float = 0.0
    plots: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    top: list[dict] = field(default_factory=list)  # --video: the detections, best first
    shard: Shard = WHOLE
    complete: bool = True  # False: this shard's part is written, infer.output waits for the others


def find_checkpoint(settings: Settings) -> Path:
    """The last.pt of the end-to-end run, else of the frozen-feature run."""
    for kind in reversed(RUN_KINDS):
        candidate = last_checkpoint(settings, kind)
        if candidate.is_file():
            return candidate
    raise UserError(f"{settings.work_dir}: no checkpoint yet; run `etad train` or give --checkpoint")


class Detector:
    """A checkpoint ready to run: the detector, its classes, and (end to end) its encoder."""

    def __init__(self, settings: Settings, checkpoint: Path) -> None:
        state = read_checkpoint(checkpoint)  # etad's, or a released layout
        self.kind = state.get("kind", "pretrain")
        try:
            self.classes: list[str] = [str(c) for c in state["classes"]]
            model = released_model_settings(settings, state)
            # the encoder's weight file was needed to train, not to run: it may not exist here
            model["encoder"] = {**model["encoder"], "checkpoint": None}
            self.model_settings = ModelSettings.model_validate(model)
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(
                f"{checkpoint}: the checkpoint's settings are incomplete ({exc.__class__.__name__})"
            ) from None
        ours, theirs = settings.model, self.model_settings
        if ours.classifier_head and theirs.classifier_head and ours.classifier != theirs.classifier:
            raise UserError(f"{checkpoint}: trained with model.classifier {theirs.classifier!r}, these "
                            f"settings say {ours.classifier!r}; infer with the settings it was trained with")
        self.device = pick_device(settings.infer.device)
        self.model = build_detector(self.model_settings, len(self.classes))
        load_weights(self.model, state, checkpoint, "model")
        if not all(torch.isfinite(w).all() for w in self.model.state_dict().values()):
            raise UserError(f"{checkpoint}: holds non-finite (NaN or inf) weights; it cannot detect anything")
        self.model.to(self.device).eval()
        self.encoder = None
        # what it reads (cached snippets through its encoder, or cached features), made with the
        # settings it was trained on (its checkpoint's record; earlier and released ones have none)
        self.input_kind = "snippets" if "encoder" in state else "features"
        self.expected = Expected.of(settings, self.input_kind)
        trained_on = self.trained_on = state.get("inputs")
        if isinstance(trained_on, dict) and (differs := self.expected.differences(trained_on, "at training")):
            raise UserError(f"{checkpoint}: trained on {self.input_kind} made with other settings than "
                            f"these: {differs}; infer with the settings it was trained with")  # fmt: skip
        if "encoder" in state:
            e = self.model_settings.encoder
            self.encoder = build_encoder(e.name, None, e.frozen_stages, e.norm_eval)
            load_weights(self.encoder, state, checkpoint, "encoder")
            self.encoder.to(self.device).eval()
        self.chunk_size = settings.infer.chunk_size
        self.crop_size = settings.infer.crop_size or self.model_settings.encoder.crop_size
        self.amp = settings.infer.amp
        self.max_clips = settings.infer.max_clips
        if self.encoder is not None and self.max_clips is None:
            shape = (settings.data.snippet_length, self.crop_size)
            with autocast(self.device, self.amp):
                self.max_clips = clips_that_fit(self.encoder, shape, self.device)

    @torch.no_grad()
    def __call__(self, inputs: torch.Tensor, anchors: torch.Tensor, *, snippets: bool) -> dict:
        """inputs: features [B, C, T], or with `snippets` uint8 snippets [B, T, L, H, W, 3] that
        the trained encoder (end to end) turns into features first."""
        if snippets:
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
        if "proposal_classes" in out:
            result["proposal_probs"] = torch.sigmoid(out["proposal_classes"]).cpu().numpy()
        return result

    def encode(self, snippets: torch.Tensor) -> torch.Tensor:
        """uint8 snippets [B, T, L, H, W, 3] -> features [B, D, T] with the trained encoder."""
        if self.encoder is None:
            raise UserError("this checkpoint has no encoder; it runs on cached features")
        with autocast(self.device, self.amp):  # bf16 features come back as float32 for the detector
            return encode_chunks(self.encoder, snippets, self.chunk_size, self.crop_size, device=self.device,
                                 max_clips=self.max_clips).float()  # fmt: skip


def labeller(settings: Settings, detector: Detector) -> Labeller:
    """How a video's proposals get their classes (infer.classifier)."""
    make = CLASSIFIERS[settings.infer.classifier]
    return make(settings, detector.classes, detector.model.classifier is not None)


def cached_dataset(
    settings: Settings, detector: Detector, shard: Shard = WHOLE
) -> tuple[DetectionDataset, list[str]]:
    """The evaluation subset's items (of this shard's videos: every N-th of the sorted ids)."""
    d = settings.data
    if d.annotations is None:
        raise UserError("data.annotations is not set")
    kind = detector.input_kind
    folder = snippets_dir(settings) if kind == "snippets" else features_dir(settings)
    cache = VideoCache(folder, kind, detector.expected)
    trained_on = detector.trained_on  # the features' origin is known once the folder is opened
    if isinstance(trained_on, dict) and (differs := cache.expected.differences(trained_on, "at training")):
        raise UserError(f"{folder}: the checkpoint was trained on other features: {differs}")
    items, classes, notes = build_items(settings, d.eval_subset, cache.length, training=False)
    if shard.count > 1:
        mine = set(sorted({item.video_id for item in items})[shard.index - 1 :: shard.count])
        items = [item for item in items if item.video_id in mine]
    if classes != detector.classes:
        notes.append("the annotation file's classes differ from the checkpoint's; using the checkpoint's")
    return DetectionDataset(
        items, detector.classes, settings, CacheReader(cache, settings), mode="test"
    ), notes


def detect(
    settings: Settings,
    detector: Detector,
    items: list[Item],
    inputs: torch.utils.data.Dataset,
    *,
    label: Labeller,
    snippets: bool,
    progress: Progress = SILENT,
) -> tuple[dict[str, list[dict]], dict[str, list[float]]]:
    """Detections per video, in seconds: the detector over every item (`inputs[i]` is
    {"inputs", "index": i}; uint8 snippets with `snippets`, else features), then
    post-processing. Also the built-in video head's class scores (those that labelled each video;
    empty without one). With the per-proposal head and infer.classifier builtin, each kept
    proposal is labelled by its own classes instead."""
    inf, d = settings.infer, settings.data
    proto = protocol(d)
    anchors = proposal_map(d.temporal_scale, detector.model_settings.max_duration)[None]
    data = torch.utils.data.DataLoader(inputs, batch_size=inf.batch_size, num_workers=inf.workers)
    kept: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    labels: dict[str, list[tuple[str, float]]] = {}
    class_scores: dict[str, list[float]] = {}
    post = POST_PROCESSING[inf.post_processing]
    for batch in data:
        out = detector(batch["inputs"], anchors, snippets=snippets)
        per_proposal = "proposal_probs" in out and inf.classifier == "builtin"
        for row, index in enumerate(batch["index"].tolist()):
            item = items[index]
            segs, scores, rows = post.item(inf, out["proposals"][row], out["iou"][row], out["tem"][row])
            if per_proposal:
                classes = [label(item.video_id, probs) for probs in out["proposal_probs"][row][rows]]
            else:
                if item.video_id not in labels:
                    probs = out["class_probs"][row] if "class_probs" in out else None
                    labels[item.video_id] = label(item.video_id, probs)
                    if probs is not None:
                        class_scores[item.video_id] = probs.round(6).tolist()
                classes = [labels[item.video_id]] * len(segs)
            kept.setdefault(item.video_id, []).append((proto.to_seconds(item)(segs), scores, classes))
        progress.advance(len(batch["index"]))
    results = {video_id: post.video(inf, parts) for video_id, parts in kept.items()}
    return results, class_scores


def classes_path(output: Path) -> Path:
    """Where `etad infer` saves the built-in head's video-level scores, in the CUHK classifier layout."""
    return output.with_suffix(".classes.json")


def write_results(path: Path, results: dict[str, list[dict]]) -> None:
    write_json(path, {"version": "ActivityNet 1.3", "results": results, "external_data": {}}, indent=None)


def writable_output(settings: Settings) -> Path:
    """infer.output, after checking (before any work) that its folder can be written."""
    output = output_path(settings)
    try:
        ensure_writable_dir(output.parent)
    except OSError as exc:
        raise UserError(f"{output.parent}: cannot write results: {exc.strerror or exc}") from None
    if output.is_dir():
        raise UserError(f"{output}: is a folder; infer.output must name a file")
    return output


def run(
    settings: Settings,
    *,
    checkpoint: Path | None = None,
    plot: int = 0,
    video: Path | None = None,
    shard: Shard = WHOLE,
    progress: Progress = SILENT,
) -> InferSummary:
    """Detect the evaluation subset (or this `shard` of its videos, or one `video` file) with a
    checkpoint (default: the newest run's)."""
    began = time.perf_counter()
    use_threads(settings.threads)
    checkpoint = checkpoint or find_checkpoint(settings)
    output = writable_output(settings)
    detector = Detector(settings, checkpoint)
    if video is not None:
        summary = run_video(settings, detector, checkpoint, video, plot=plot > 0, progress=progress)
        summary.seconds = time.perf_counter() - began
        return summary
    dataset, notes = cached_dataset(settings, detector, shard)
    label = labeller(settings, detector)
    progress.start(len(dataset))
    results, class_scores = detect(
        settings, detector, dataset.items, dataset,
        label=label, snippets=dataset.load.kind == "snippets", progress=progress,
    )  # fmt: skip
    summary = InferSummary(output, detector.kind, checkpoint, task_of(settings), notes=notes, shard=shard)
    summary.videos, summary.detections = len(results), sum(len(v) for v in results.values())
    video_head = isinstance(detector.model.classifier, VideoClassifier)  # the proposal head: no video scores
    classes = detector.classes if settings.infer.classifier == "builtin" and video_head else None
    if shard.count > 1:
        summary.complete = write_shard(output, shard, checkpoint, settings, results=results,
                                       class_scores=class_scores, classes=classes)  # fmt: skip
    else:
        write_outputs(output, results, class_scores, classes)
        if classes is not None and (accuracy := classifier_accuracy(dataset.items, classes, class_scores)):
            notes.append(accuracy)
    if plot:
        items = {item.video_id: item for item in dataset.items}
        folder = beside_output(output, "plots")
        folder.mkdir(parents=True, exist_ok=True)
        for video_id in list(results)[:plot]:
            path = safe_path(folder, video_id, "{id}.png")
            plot_timeline(items[video_id], results[video_id], path)
            summary.plots.append(path)
    summary.seconds = time.perf_counter() - began
    return summary


def write_outputs(output: Path, results: dict, class_scores: dict, classes: list[str] | None) -> None:
    """infer.output, and with the built-in head (`classes`) its video-level scores beside it
    (reusable as infer.classifier_file for another model)."""
    write_results(output, results)
    if classes is not None:
        write_json(classes_path(output), {"class": classes, "results": class_scores}, indent=None)


def shard_output(output: Path, shard: Shard) -> Path:
    """Where a shard writes its part of infer.output: <stem>.shard2of8.json beside it."""
    return output.with_name(f"{output.stem}{shard.suffix}{output.suffix}")


# the settings that leave a part's content unchanged: where it goes and how fast it is made
SPEED_ONLY = {"output", "device", "workers", "batch_size", "max_clips"}


def _identity(checkpoint: Path, settings: Settings) -> str:
    """What a shard's part was made by: the checkpoint (path, size, modification time) and the
    settings that change detections (infer's, but for speed and output; data's): parts of another
    checkpoint or other settings (top_k, classifier, ...) are never merged with this run's."""
    stat = checkpoint.stat()
    infer = {k: v for k, v in settings.infer.model_dump(mode="json").items() if k not in SPEED_ONLY}
    values = json.dumps({"infer": infer, "data": settings.data.model_dump(mode="json")}, sort_keys=True)
    digest = hashlib.sha256(values.encode()).hexdigest()[:16]
    return f"{checkpoint.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:{digest}"


def write_shard(output: Path, shard: Shard, checkpoint: Path, settings: Settings, *, results: dict,
                class_scores: dict, classes: list[str] | None) -> bool:  # fmt: skip
    """Write this shard's part; when every shard's part of this checkpoint and these settings is
    there, merge them into infer.output (post-processing is per video, so the merge equals one
    run's output). Returns whether infer.output was written. Two shards that finish at once both
    merge the same parts. A part is checked as `etad eval` checks a prediction file before merging."""
    mark = {"of": shard.count, "checkpoint": _identity(checkpoint, settings)}
    part = {"results": results, "class_scores": class_scores, "shard": mark}
    write_json(shard_output(output, shard), part)
    parts = []
    for index in range(1, shard.count + 1):
        path = shard_output(output, Shard(index, shard.count))
        if not path.is_file():
            return False
        try:
            held = read_json(path, "shard part")
        except UserError:
            return False  # being written by its shard (the rename is atomic: a kill mid-write)
        if not isinstance(held, dict):
            raise UserError(f"{path}: not a shard part (expected a JSON object); delete it and rerun shard "
                            f"{index}/{shard.count}")  # fmt: skip
        if held.get("shard") != mark:
            return False  # another checkpoint's part, other settings, or another split: wait for this run's
        parts.append(_checked_part(path, held, len(classes) if classes is not None else None))
    results = dict(sorted((k, v) for held in parts for k, v in held["results"].items()))
    write_outputs(output, results, {k: v for held in parts for k, v in held["class_scores"].items()}, classes)
    return True


def _checked_part(path: Path, part: dict, classes: int | None) -> dict:
    """A shard's part whose detections and class scores are well formed (edited by hand, or of a
    damaged disk: never merged into an output that `etad eval` would refuse, or NaN in JSON)."""
    check_results(path, part.get("results"))
    scores = part.get("class_scores")
    if not isinstance(scores, dict):
        raise UserError(f"{path}: 'class_scores' is not a mapping; delete it and rerun its shard")
    for video_id, values in scores.items():
        ok = isinstance(values, list) and all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values
        )
        if not ok or (classes is not None and len(values) != classes):
            raise UserError(f"{path}: video {video_id!r}: class scores are not {classes or 'the'} finite "
                            "numbers; delete it and rerun its shard")  # fmt: skip
    return part


def classifier_accuracy(
    items: list[Item], classes: list[str], class_scores: dict[str, list[float]]
) -> str | None:
    """How often the built-in head's top class is one of the video's own, over the videos with an
    annotated instance (read from the items, which carry the whole video's segments): the head's
    share of the mAP, in one line."""
    own = {item.video_id: {label for _, _, label in item.segments} for item in items}
    hits = [classes[int(np.argmax(scores))] in own[v] for v, scores in class_scores.items() if own.get(v)]
    if not hits:
        return None
    return (
        f"built-in classifier: the top class is one of the video's own for {sum(hits)} of {len(hits)} "
        f"labelled videos ({100 * sum(hits) / len(hits):.0f}%)"
    )


def task_of(settings: Settings) -> str:
    return "proposals" if settings.infer.classifier == "none" else "detection"


def video_features(
    settings: Settings, detector: Detector, video: Path, progress: Progress = SILENT
) -> tuple[np.ndarray, float, VideoFacts]:
    """Features [N, D] of one video file, its duration in seconds and what decoding found (the
    notes `extract` and `cache` print): decoded at data.fps and the
    data frame size (through cache.codec, as the snippet cache stores them), cut into snippets by
    the protocol, encoded in batches (the trained encoder of
    an end-to-end checkpoint, else model.encoder of the settings, as `etad cache` does)."""
    d = settings.data
    try:
        reader = TimedVideo(video, d.fps, d.decoder, height=d.frame_height, width=d.frame_width,
                            resize=d.resize)
    except VideoError as exc:
        raise UserError(str(exc)) from None
    positions = protocol(d).snippet_frames(len(reader))  # [N, L] frames at data.fps
    batch = settings.infer.chunk_size
    frozen = (
        None
        if detector.encoder is not None
        else FeatureEncoder(settings, settings.infer.device, batch_size=batch)
    )
    progress.start(len(positions))
    out = []
    for start in range(0, len(positions), batch):
        rows = positions[start : start + batch]
        wanted, where = np.unique(rows, return_inverse=True)
        try:
            frames = reader.read(wanted)
        except VideoError as exc:
            raise UserError(str(exc)) from None
        if settings.cache.codec == "jpeg":  # the frames as the snippet cache gives them to training
            frames = decode_jpeg(encode_jpeg(frames, settings.cache.jpeg_quality))
        snippets = frames[where.reshape(rows.shape)]  # [n, L, H, W, 3]
        if frozen is not None:
            out.append(frozen.encode(snippets))
        else:
            out.append(detector.encode(torch.from_numpy(snippets)[None])[0].T.cpu().numpy())
        progress.advance(len(rows))
    features = np.concatenate(out)
    if features.shape[1] != detector.model_settings.in_channels:
        raise UserError(
            f"{video}: the encoder gives {features.shape[1]}-d features but the checkpoint's detector "
            f"expects {detector.model_settings.in_channels} (model.encoder differs from training)"
        )
    facts = reader.finish()
    return features, len(reader) / d.fps, facts  # the frames the snippets cover (docs/method.md)


def video_inputs(
    settings: Settings, detector: Detector, features: np.ndarray, items: list[Item]
) -> list[torch.Tensor]:
    """The detector's input [C, T] for each item of a video, built as the checkpoint was trained:
    a frozen-feature detector reads features as `etad train` does; an end-to-end one takes the
    encoder's output as it is (as the snippet cache is read)."""
    d = settings.data
    proto = protocol(d)
    out = []
    for item in items:
        rows = proto.rows(item) or slice(None)
        if detector.encoder is None:
            out.append(proto.feature_input(features[rows]))
        else:
            out.append(proto.encoded_input(torch.from_numpy(features[rows]).T))
    return out


def run_video(settings: Settings, detector: Detector, checkpoint: Path, video: Path, *, plot: bool = False,
              progress: Progress = SILENT) -> InferSummary:  # fmt: skip
    """Detections of one video file that is in no annotation file, best first; saved as
    ActivityNet-format JSON beside infer.output as `<video stem>.json` (cityCC0.mpg -> cityCC0.json);
    with `plot`, their timeline as `<video stem>.png` in the model's plots folder (beside_output)."""
    notes = []
    if settings.infer.classifier in ("file", "truth"):  # neither knows a new video
        choice = "builtin" if detector.model.classifier is not None else "none"
        notes.append(
            f"infer.classifier {settings.infer.classifier!r} cannot label a new video; using {choice!r}"
        )
        settings = settings.model_copy(
            update={"infer": settings.infer.model_copy(update={"classifier": choice})}
        )
    # named for the video, as an id is (cityCC0.mpg -> cityCC0.json); a hidden file's (.clip.mp4)
    # without its leading dots
    stem = Path(video.name.lstrip(".")).stem or "video"
    output = safe_path(output_path(settings).parent, stem, "{id}.json")
    subset = output_path(settings)
    companions = {subset.name, f"{subset.stem}.classes.json", f"{subset.stem}.metrics.json"}
    shard_part = rf"{re.escape(subset.stem)}\.shard\d+of\d+\.json"
    if output.name in companions or re.fullmatch(shard_part, output.name):
        raise UserError(
            f"--video {video}: its detections would be written to {output}, a file of the "
            "subset's detections (infer.output); rename the video or set infer.output"
        )
    label = labeller(settings, detector)
    features, duration, facts = video_features(settings, detector, video, progress)
    notes.extend(f"{video}: {phrase}" for _, phrase in facts.anomalies(settings.data.fps))
    frames, length = round(duration * settings.data.fps), settings.data.snippet_length
    if frames < length:
        notes.append(f"{video}: {frames} frame(s) at data.fps, shorter than one snippet ({length} frames): "
                     "its detections are drawn from a few repeated frames")  # fmt: skip
    video_id = video.stem
    items = protocol(settings.data).items(video_id, duration, [], len(features))
    inputs = [
        {"inputs": x, "index": i} for i, x in enumerate(video_inputs(settings, detector, features, items))
    ]
    results, _ = detect(settings, detector, items, inputs, label=label, snippets=False)
    detections = sorted(results[video_id], key=lambda det: -det["score"])
    # both outputs checked before either is written; the plot beside the model's detections
    plot_path = _writable_plot(beside_output(output_path(settings), "plots"), output.stem) if plot else None
    write_results(output, {video_id: detections})
    summary = InferSummary(
        output,
        detector.kind,
        checkpoint,
        task_of(settings),
        videos=1,
        detections=len(detections),
        notes=notes,
    )
    summary.top = detections
    if plot_path is not None:
        plot_timeline(Item(video_id, duration, []), detections, plot_path)
        summary.plots.append(plot_path)
    return summary


def _writable_plot(folder: Path, name: str) -> Path:
    """Where `--video --plot` draws the timeline (<folder>/<name>.png), the folder made and proven
    writable."""
    path = safe_path(folder, name, "{id}.png")
    try:
        ensure_writable_dir(path.parent)
    except OSError as exc:
        raise UserError(f"{path.parent}: cannot write: {exc.strerror or exc}") from None
    return path
