"""One video that is in no annotation file (a file, or frames already decoded): its features through
the checkpoint's encoder (or the settings' frozen one), in batches of snippets, and the detector's
inputs built from them as the checkpoint was trained."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from stages.core.errors import UserError
from stages.core.progress import SILENT, Progress
from stages.core.settings import Settings
from stages.data.frame_codec import decode_jpeg, encode_jpeg
from stages.data.protocols import Item, protocol
from stages.data.video_io import TimedVideo, VideoError, VideoFacts
from stages.inference.batches import detect
from stages.inference.checkpoint import LoadedCheckpoint, labeller
from stages.model.frozen_encoder import FeatureEncoder


class FrameArray:
    """Frames already decoded, at data.fps and the data frame size ([N, H, W, 3] uint8): read as a
    video file is (TimedVideo), with nothing to note about their timing."""

    def __init__(self, frames: np.ndarray) -> None:
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
            raise UserError(
                f"frames: expected uint8 [N, H, W, 3] with N >= 1, got {frames.dtype} {frames.shape}"
            )
        self.frames = frames

    def __len__(self) -> int:
        return len(self.frames)

    def read(self, wanted: np.ndarray) -> np.ndarray:
        return self.frames[wanted]

    def finish(self) -> VideoFacts | None:
        return None


def open_video(settings: Settings, video: Path) -> TimedVideo:
    """A video file read at data.fps and the data frame size (the player's clock, upright)."""
    d = settings.data
    try:
        return TimedVideo(
            video, d.fps, d.decoder, height=d.frame_height, width=d.frame_width, resize=d.resize
        )
    except VideoError as exc:
        raise UserError(str(exc)) from None


def video_features(
    settings: Settings, loaded: LoadedCheckpoint, source: TimedVideo | FrameArray, progress: Progress = SILENT
) -> np.ndarray:
    """Features [N, D] of one video's frames: through cache.codec (as the snippet cache stores
    them), cut into snippets by the protocol and encoded in batches of infer.chunk_size snippets (the
    trained encoder of an end-to-end checkpoint, else model.encoder of the settings, as `etad cache`
    does): the frames of one batch at a time in memory, whatever the video's length."""
    positions = protocol(settings.data).snippet_frames(len(source))  # [N, L] frames at data.fps
    batch = settings.infer.chunk_size
    frozen = (
        None
        if loaded.encoder is not None
        else FeatureEncoder(settings, settings.infer.device, batch_size=batch)
    )
    progress.start(len(positions))
    out = []
    for start in range(0, len(positions), batch):
        rows = positions[start : start + batch]
        wanted, where = np.unique(rows, return_inverse=True)
        try:
            frames = source.read(wanted)
        except VideoError as exc:
            raise UserError(str(exc)) from None
        if settings.cache.codec == "jpeg":  # the frames as the snippet cache gives them to training
            frames = decode_jpeg(encode_jpeg(frames, settings.cache.jpeg_quality))
        snippets = frames[where.reshape(rows.shape)]  # [n, L, H, W, 3]
        if frozen is not None:
            out.append(frozen.encode(snippets))
        else:
            out.append(loaded.encode(torch.from_numpy(snippets)[None])[0].T.cpu().numpy())
        progress.advance(len(rows))
    features = np.concatenate(out)
    if features.shape[1] != loaded.model_settings.in_channels:
        raise UserError(
            f"the encoder gives {features.shape[1]}-d features but the checkpoint's detector "
            f"expects {loaded.model_settings.in_channels} (model.encoder differs from training)"
        )
    return features


@dataclass
class VideoDetections:
    """One video's detections, best first ({"segment": [start, end] seconds, "label", "score"}), its
    duration (the frames the snippets cover, docs/method.md) and what a user should know of it."""

    video_id: str
    duration: float
    detections: list[dict]
    notes: list[str] = field(default_factory=list)


def for_new_videos(settings: Settings, loaded: LoadedCheckpoint) -> tuple[Settings, list[str]]:
    """The settings a video in no annotation file is detected with: infer.classifier file or truth
    know no such video, so the checkpoint's own head labels it (or none)."""
    if settings.infer.classifier not in ("file", "truth"):
        return settings, []
    choice = "builtin" if loaded.model.classifier is not None else "none"
    note = f"infer.classifier {settings.infer.classifier!r} cannot label a new video; using {choice!r}"
    return settings.model_copy(update={"infer": settings.infer.model_copy(update={"classifier": choice})}), [
        note
    ]


def detect_one(
    settings: Settings,
    loaded: LoadedCheckpoint,
    source: TimedVideo | FrameArray,
    *,
    video_id: str,
    progress: Progress = SILENT,
) -> VideoDetections:
    """Detections of one video (a file opened with open_video, or a FrameArray), best first, with
    the notes of its decoding; `settings` as for_new_videos returns them."""
    features = video_features(settings, loaded, source, progress)
    fps, length = settings.data.fps, settings.data.snippet_length
    facts, where = source.finish(), source.path if isinstance(source, TimedVideo) else video_id
    notes = [f"{where}: {phrase}" for _, phrase in facts.anomalies(fps)] if facts is not None else []
    if len(source) < length:
        notes.append(
            f"{where}: {len(source)} frame(s) at data.fps, shorter than one snippet ({length} frames): "
            "its detections are drawn from a few repeated frames"
        )
    duration = len(source) / fps
    items = protocol(settings.data).items(video_id, duration, [], len(features))
    inputs = [
        {"inputs": x, "index": i} for i, x in enumerate(video_inputs(settings, loaded, features, items))
    ]
    results, _ = detect(settings, loaded, items, inputs, label=labeller(settings, loaded), snippets=False)
    return VideoDetections(
        video_id, duration, sorted(results[video_id], key=lambda det: -det["score"]), notes
    )


def video_inputs(
    settings: Settings, loaded: LoadedCheckpoint, features: np.ndarray, items: list[Item]
) -> list[torch.Tensor]:
    """The detector's input [C, T] for each item of a video, built as the checkpoint was trained:
    a frozen-feature detector reads features as `etad train` does; an end-to-end one takes the
    encoder's output as it is (as the snippet cache is read)."""
    d = settings.data
    proto = protocol(d)
    out = []
    for item in items:
        rows = proto.rows(item) or slice(None)
        if loaded.encoder is None:
            out.append(proto.feature_input(features[rows]))
        else:
            out.append(proto.encoded_input(torch.from_numpy(features[rows]).T))
    return out
