"""The detector over a dataset's items in batches, then post-processing (stages.evaluation.postprocess,
the original's or OpenTAD's form): boundary-peak filter, IoU-cls x IoU-reg score, Soft-NMS,
seconds, classifier fusion; windows of a video merged with a second Soft-NMS."""

from __future__ import annotations

import numpy as np
import torch

from stages.core.errors import UserError
from stages.core.progress import SILENT, Progress
from stages.core.settings import Settings
from stages.core.workdir import (
    features_dir,
    snippets_dir,
)
from stages.data.datasets import CacheReader, DetectionDataset, build_items
from stages.data.hdf5_cache import VideoCache
from stages.data.protocols import Item, protocol
from stages.data.video_selection import WHOLE, Shard
from stages.evaluation.postprocess import POST_PROCESSING, Labeller
from stages.inference.checkpoint import LoadedCheckpoint
from stages.model.targets import proposal_map


def cached_dataset(
    settings: Settings, loaded: LoadedCheckpoint, shard: Shard = WHOLE
) -> tuple[DetectionDataset, list[str]]:
    """The evaluation subset's items (of this shard's videos: every N-th of the sorted ids)."""
    d = settings.data
    if d.annotations is None:
        raise UserError("data.annotations is not set")
    kind = loaded.input_kind
    folder = snippets_dir(settings) if kind == "snippets" else features_dir(settings)
    cache = VideoCache(folder, kind, loaded.expected)
    trained_on = loaded.trained_on  # the features' origin is known once the folder is opened
    if isinstance(trained_on, dict) and (differs := cache.expected.differences(trained_on, "at training")):
        raise UserError(f"{folder}: the checkpoint was trained on other features: {differs}")
    items, classes, notes = build_items(settings, d.eval_subset, cache.length, training=False)
    if shard.count > 1:
        mine = set(shard.share({item.video_id for item in items}))
        items = [item for item in items if item.video_id in mine]
    if classes != loaded.classes:
        notes.append("the annotation file's classes differ from the checkpoint's; using the checkpoint's")
    return DetectionDataset(items, loaded.classes, settings, CacheReader(cache, settings), mode="test"), notes


def detect(
    settings: Settings,
    loaded: LoadedCheckpoint,
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
    anchors = proposal_map(d.temporal_scale, loaded.model_settings.max_duration)[None]
    data = torch.utils.data.DataLoader(inputs, batch_size=inf.batch_size, num_workers=inf.workers)
    kept: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    labels: dict[str, list[tuple[str, float]]] = {}
    class_scores: dict[str, list[float]] = {}
    post = POST_PROCESSING[inf.post_processing]
    for batch in data:
        out = loaded(batch["inputs"], anchors, snippets=snippets)
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
