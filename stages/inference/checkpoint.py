"""A checkpoint loaded to detect: the loaded, its classes, its encoder (end to end) and what its
inputs must be made with; where the newest run's checkpoint is; how its proposals get classes."""

from __future__ import annotations

from pathlib import Path

import torch

from stages.core.checkpoints import load_weights, read_checkpoint, released_model_settings
from stages.core.errors import UserError
from stages.core.runtime import autocast, pick_device
from stages.core.settings import ModelSettings, Settings
from stages.core.workdir import (
    RUN_KINDS,
    last_checkpoint,
)
from stages.data.fingerprints import ExpectedFingerprint
from stages.evaluation.postprocess import CLASSIFIERS, Labeller
from stages.model.detector import build_detector, final_proposals
from stages.model.encoder import build_encoder, clips_that_fit, encode_chunks


def find_checkpoint(settings: Settings) -> Path:
    """The last.pt of the end-to-end run, else of the frozen-feature run."""
    for kind in reversed(RUN_KINDS):
        candidate = last_checkpoint(settings, kind)
        if candidate.is_file():
            return candidate
    raise UserError(f"{settings.work_dir}: no checkpoint yet; run `etad train` or give --checkpoint")


class LoadedCheckpoint:
    """A checkpoint ready to run: the loaded, its classes, and (end to end) its encoder."""

    def __init__(self, settings: Settings, checkpoint: Path) -> None:
        self.path = checkpoint  # the file it was read from (a summary names it)
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
            raise UserError(
                f"{checkpoint}: trained with model.classifier {theirs.classifier!r}, these "
                f"settings say {ours.classifier!r}; infer with the settings it was trained with"
            )
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
        self.expected = ExpectedFingerprint.of(settings, self.input_kind)
        trained_on = self.trained_on = state.get("inputs")
        if isinstance(trained_on, dict) and (differs := self.expected.differences(trained_on, "at training")):
            raise UserError(
                f"{checkpoint}: trained on {self.input_kind} made with other settings than "
                f"these: {differs}; infer with the settings it was trained with"
            )
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
        out = self.model(inputs, anchors.to(self.device).expand(len(inputs), -1, -1), boundaries=False)
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
            return encode_chunks(
                self.encoder,
                snippets,
                self.chunk_size,
                self.crop_size,
                device=self.device,
                max_clips=self.max_clips,
            ).float()


def labeller(settings: Settings, loaded: LoadedCheckpoint) -> Labeller:
    """How a video's proposals get their classes (infer.classifier)."""
    make = CLASSIFIERS[settings.infer.classifier]
    return make(settings, loaded.classes, loaded.model.classifier is not None)


def task_of(settings: Settings) -> str:
    return "proposals" if settings.infer.classifier == "none" else "detection"
