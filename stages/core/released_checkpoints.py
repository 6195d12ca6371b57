"""The released checkpoints' layouts (the original ETAD release and OpenTAD's): their keys renamed to
etad's, their model settings read back; checkpoints.py reads the files and calls these."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from stages.core.errors import UserError

if TYPE_CHECKING:  # the settings models, for type hints only
    pass


CHECKPOINT_FORMAT = "etad-checkpoint-1"


# OpenTAD detector key -> etad key


OPENTAD_BACKBONE = "backbone.model.backbone."


# the original's names of a cascade stage's parts -> etad's (stages/model/detector.py, ProposalStage)
ORIGINAL_STAGE_PARTS = {
    "reduce_dim_before": "reduce",
    "reduce_dim_ext": "fc",
    "iou_fc": "iou_head",
    "cls_se_fc": "se_head",
    "reg_cw_fc": "cw_head",
    "reg_s_fc": "start_head",
    "reg_e_fc": "end_head",
}


# original ETAD detector key -> etad key (regular expressions, applied in order; first match wins)
ORIGINAL_DETECTOR_KEYS = [
    (r"^temporal_enhance\.mem_([fb])\.", r"temporal.lstm_\1."),
    (r"^temporal_enhance\.", "temporal."),
    (r"^tem\.", "tem."),
    (r"^stage_conv\.(\d+)\.", r"stages.\1.residual."),
    *[
        (rf"^stage_pem\.(\d+)\.{theirs}\.", rf"stages.\1.{ours}.")
        for theirs, ours in ORIGINAL_STAGE_PARTS.items()
    ],
]


ORIGINAL_BACKBONE = "feature_extractor.model.backbone."


ORIGINAL_DETECTOR = "base_detector."


def _fc_head(match: re.Match) -> str:
    """OpenTAD's FCHead (fcs.K.0 Linear + ReLU, then `head`) -> etad's Sequential (Linear at 2K)."""
    stage, head, layer = match.group(1), match.group(2), match.group(3)
    index = 6 if layer == "head" else 2 * int(layer.split(".")[1])
    return f"stages.{stage}.{head}_head.{index}."


OPENTAD_DETECTOR_KEYS = [
    (r"^projection\.convs\.0\.conv\.", "temporal.layer1.0."),
    (r"^projection\.convs\.0\.norm\.", "temporal.layer1.1."),
    (r"^neck\.mem_([fb])\.", r"temporal.lstm_\1."),
    (r"^neck\.(layer2_f|layer2_b|layer2_d|layer3)\.conv\.", r"temporal.\1.0."),
    (r"^neck\.(layer2_f|layer2_b|layer2_d|layer3)\.norm\.", r"temporal.\1.1."),
    (r"^rpn_head\.tem\.0\.conv\.", "tem.0."),
    (r"^rpn_head\.tem\.1\.conv\.", "tem.2."),
    (r"^roi_head\.proposal_heads\.(\d+)\.shared_conv_fc\.fcs\.0\.0\.", r"stages.\1.fc.0."),
    (r"^roi_head\.proposal_heads\.(\d+)\.(iou|se|reg)_head\.(fcs\.\d+\.0|head)\.", _fc_head),
]


def _strip_module(state: dict) -> dict:
    return {k.removeprefix("module."): v for k, v in state.items()}


def _rename(key: str, rules: list[tuple[str, object]]) -> str | None:
    for pattern, replacement in rules:
        if re.match(pattern, key):
            return re.sub(pattern, replacement, key)
    return None


def _is_original(obj: object) -> bool:
    state = obj.get("state_dict") if isinstance(obj, dict) else None
    return isinstance(state, dict) and any(
        k.removeprefix("module.").startswith(ORIGINAL_DETECTOR) for k in state
    )


def _from_original(obj: dict, path: Path) -> dict:
    """The original release: detector keys renamed; the backbone (end to end) kept as the encoder."""
    state = _strip_module(obj["state_dict"])
    model, encoder, unknown = {}, {}, []
    for key, value in state.items():
        if key.startswith(ORIGINAL_DETECTOR):
            name = _rename(key.removeprefix(ORIGINAL_DETECTOR), ORIGINAL_DETECTOR_KEYS)
            (model.__setitem__(name, value) if name else unknown.append(key))
        elif key.startswith(ORIGINAL_BACKBONE):
            encoder["backbone." + key.removeprefix(ORIGINAL_BACKBONE)] = value
        elif not key.startswith("feature_extractor.model.data_preprocessor"):
            unknown.append(key)
    if unknown:
        raise UserError(f"{path}: {len(unknown)} key(s) of no known part, e.g. {unknown[0]!r}")
    roi_size = model["stages.0.fc.0.weight"].shape[1] // model["stages.0.reduce.0.weight"].shape[0]
    return _released(path, "etad-original", model, encoder, model_settings={"roi_size": roi_size})


def _is_opentad(obj: object) -> bool:
    if not isinstance(obj, dict):
        return False
    state = obj.get("state_dict_ema") or obj.get("state_dict")
    parts = ("neck.", "rpn_head.", "roi_head.", "projection.")
    return isinstance(state, dict) and any(k.removeprefix("module.").startswith(parts) for k in state)


def _from_opentad(obj: dict, path: Path) -> dict:
    """OpenTAD's ETAD: detector keys renamed to the `opentad` variant; the backbone (end to end)
    kept as the encoder."""
    state = _strip_module(obj.get("state_dict_ema") or obj["state_dict"])
    model, encoder, unknown = {}, {}, []
    for key, value in state.items():
        if key.startswith(OPENTAD_BACKBONE):
            encoder["backbone." + key.removeprefix(OPENTAD_BACKBONE)] = value
        elif key.startswith("backbone.model.data_preprocessor."):
            continue  # mean / std buffers: etad's encoder normalises by its own constants
        else:
            name = _rename(key, OPENTAD_DETECTOR_KEYS)
            (model.__setitem__(name, value) if name else unknown.append(key))
    if unknown:
        raise UserError(f"{path}: {len(unknown)} key(s) of no known part, e.g. {unknown[0]!r}")
    if "temporal.layer1.0.weight" not in model or "stages.0.fc.0.weight" not in model:
        raise UserError(f"{path}: an OpenTAD checkpoint without ETAD's projection or proposal heads")
    fc, hidden = model["stages.0.fc.0.weight"], model["temporal.layer1.0.weight"].shape[0]
    shapes = {"roi_size": fc.shape[1] // hidden, "fc_channels": fc.shape[0]}
    return _released(path, "opentad", model, encoder, model_settings=shapes)


def _thresholds(stages: int) -> list[float]:
    """The stage IoU thresholds of both releases (0.7, 0.8, 0.9), for however many stages."""
    return [0.7, 0.8, 0.9][:stages] + [0.9] * max(0, stages - 3)


def _released(path: Path, layout: str, model: dict, encoder: dict, *, model_settings: dict) -> dict:
    """An etad checkpoint from a released file's weights and the settings its shapes give (both
    releases: the variant of the layout, 4-group input convolution, their stage thresholds)."""
    stages = len({k.split(".")[1] for k in model if k.startswith("stages.")})
    model_settings = {
        "variant": "original" if layout == "etad-original" else "opentad",
        "in_channels": model["temporal.layer1.0.weight"].shape[1] * 4,  # grouped conv, 4 groups
        "hidden_channels": model["temporal.layer1.0.weight"].shape[0],
        **model_settings,
        "stage_iou_thresholds": _thresholds(stages),
    }
    converted = {
        "format": CHECKPOINT_FORMAT,
        "kind": "e2e" if encoder else "pretrain",
        "model": model,
        "source_layout": layout,
        "source": str(path),
        "settings": {"model": {**model_settings, "encoder": {"name": "r2plus1d_34_tsp"}}},
        "classes": [],
    }
    if encoder:
        converted["encoder"] = encoder
    return converted
