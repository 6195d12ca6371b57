"""Checkpoints in the layouts users have: etad's own, and the original ETAD release.

`read_checkpoint(path)` detects the layout and returns an etad checkpoint (a dict with "model",
optionally "encoder", "classes", "settings", "kind"), so that `etad infer --checkpoint`,
`--init-from` and `etad checkpoint convert` accept a released file as it was downloaded.

Layouts (LAYOUTS lists them; each entry: how to recognise it, how to map its keys):
- `etad`: what `etad train` writes (`format: etad-checkpoint-1`).
- `etad-original`: sming256/ETAD's `{"state_dict": ...}` (`tools/train.py` saves the model without
  its DataParallel wrapper; files saved with it carry a `module.` prefix, also accepted). Detector
  keys live under `base_detector.`; the end-to-end release adds the mmaction2 `Recognizer3D`
  backbone under `feature_extractor.model.backbone.` (torchvision VideoResNet key names).

- `opentad`: sming256/OpenTAD's `{"state_dict": ..., "state_dict_ema": ...}` (DDP `module.` prefix),
  the `opentad` variant of the model: `projection.`, `neck.`, `rpn_head.`, `roi_head.` keys, and
  for end to end the backbone under `backbone.model.backbone.`. The EMA weights are used when the
  file has them (OpenTAD tests with them exactly when it trained with EMA).

A released file holds weights only: the model's shapes (and variant) come from the weights, every
other model setting from the user's settings file.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from stages.core.errors import UserError
from stages.training.loop import CHECKPOINT_FORMAT, as_etad_checkpoint, read_weights_file

# original ETAD detector key -> etad key (regular expressions, applied in order; first match wins)
ORIGINAL_DETECTOR_KEYS = [
    (r"^temporal_enhance\.mem_f\.", "temporal.lstm_f."),
    (r"^temporal_enhance\.mem_b\.", "temporal.lstm_b."),
    (r"^temporal_enhance\.", "temporal."),
    (r"^tem\.", "tem."),
    (r"^stage_conv\.(\d+)\.", r"stages.\1.residual."),
    (r"^stage_pem\.(\d+)\.reduce_dim_before\.", r"stages.\1.reduce."),
    (r"^stage_pem\.(\d+)\.reduce_dim_ext\.", r"stages.\1.fc."),
    (r"^stage_pem\.(\d+)\.iou_fc\.", r"stages.\1.iou_head."),
    (r"^stage_pem\.(\d+)\.cls_se_fc\.", r"stages.\1.se_head."),
    (r"^stage_pem\.(\d+)\.reg_cw_fc\.", r"stages.\1.cw_head."),
    (r"^stage_pem\.(\d+)\.reg_s_fc\.", r"stages.\1.start_head."),
    (r"^stage_pem\.(\d+)\.reg_e_fc\.", r"stages.\1.end_head."),
]
ORIGINAL_BACKBONE = "feature_extractor.model.backbone."
ORIGINAL_DETECTOR = "base_detector."


def _fc_head(match: re.Match) -> str:
    """OpenTAD's FCHead (fcs.K.0 Linear + ReLU, then `head`) -> etad's Sequential (Linear at 2K)."""
    stage, head, layer = match.group(1), match.group(2), match.group(3)
    index = 6 if layer == "head" else 2 * int(layer.split(".")[1])
    return f"stages.{stage}.{head}_head.{index}."


# OpenTAD detector key -> etad key
OPENTAD_DETECTOR_KEYS = [
    (r"^projection\.convs\.0\.conv\.", "temporal.layer1.0."),
    (r"^projection\.convs\.0\.norm\.", "temporal.layer1.1."),
    (r"^neck\.mem_f\.", "temporal.lstm_f."),
    (r"^neck\.mem_b\.", "temporal.lstm_b."),
    (r"^neck\.(layer2_f|layer2_b|layer2_d|layer3)\.conv\.", r"temporal.\1.0."),
    (r"^neck\.(layer2_f|layer2_b|layer2_d|layer3)\.norm\.", r"temporal.\1.1."),
    (r"^rpn_head\.tem\.0\.conv\.", "tem.0."),
    (r"^rpn_head\.tem\.1\.conv\.", "tem.2."),
    (r"^roi_head\.proposal_heads\.(\d+)\.shared_conv_fc\.fcs\.0\.0\.", r"stages.\1.fc.0."),
    (r"^roi_head\.proposal_heads\.(\d+)\.(iou|se|reg)_head\.(fcs\.\d+\.0|head)\.", _fc_head),
]
OPENTAD_BACKBONE = "backbone.model.backbone."


@dataclass(frozen=True)
class Layout:
    """A checkpoint layout: a test on the loaded object and a conversion to an etad checkpoint."""

    name: str
    matches: Callable[[object], bool]
    convert: Callable[[dict, Path], dict]


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
    stages = len({k.split(".")[1] for k in model if k.startswith("stages.")})
    return _released(path, "etad-original", model, encoder, {
        "variant": "original",
        "in_channels": model["temporal.layer1.0.weight"].shape[1] * 4,  # grouped conv, 4 groups
        "hidden_channels": model["temporal.layer1.0.weight"].shape[0],
        "roi_size": model["stages.0.fc.0.weight"].shape[1] // model["stages.0.reduce.0.weight"].shape[0],
        "stage_iou_thresholds": _thresholds(stages),
    })  # fmt: skip


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
    hidden = model["temporal.layer1.0.weight"].shape[0]
    fc = model["stages.0.fc.0.weight"]
    stages = len({k.split(".")[1] for k in model if k.startswith("stages.")})
    return _released(path, "opentad", model, encoder, {
        "variant": "opentad",
        "in_channels": model["temporal.layer1.0.weight"].shape[1] * 4,  # grouped conv, 4 groups
        "hidden_channels": hidden,
        "roi_size": fc.shape[1] // hidden,
        "fc_channels": fc.shape[0],
        "stage_iou_thresholds": _thresholds(stages),
    })  # fmt: skip


def _thresholds(stages: int) -> list[float]:
    """The stage IoU thresholds of both releases (0.7, 0.8, 0.9), for however many stages."""
    return [0.7, 0.8, 0.9][:stages] + [0.9] * max(0, stages - 3)


def _released(path: Path, layout: str, model: dict, encoder: dict, model_settings: dict) -> dict:
    """An etad checkpoint from a released file's weights and the settings its shapes give."""
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


LAYOUTS: dict[str, Layout] = {
    "etad": Layout(
        "etad", lambda o: isinstance(o, dict) and o.get("format") == CHECKPOINT_FORMAT, as_etad_checkpoint
    ),
    "etad-original": Layout("etad-original", _is_original, _from_original),
    "opentad": Layout("opentad", _is_opentad, _from_opentad),
}


def layout_of(obj: object) -> str | None:
    return next((name for name, layout in LAYOUTS.items() if layout.matches(obj)), None)


def read_checkpoint(path: Path) -> dict:
    """Any known layout, as an etad checkpoint; anything else is refused with the known layouts."""
    obj = read_weights_file(path)
    name = layout_of(obj)
    if name is None:
        raise UserError(f"{path}: not a checkpoint layout etad knows ({', '.join(LAYOUTS)})")
    return LAYOUTS[name].convert(obj, Path(path))


def convert(source: Path, target: Path) -> dict:
    """Write `source` (any known layout) as an etad checkpoint at `target`; never over a file."""
    from stages.core.files import atomic_output

    state = read_checkpoint(source)
    target = Path(target)
    if target.exists():
        raise UserError(f"{target}: exists; give a new file name")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(target) as tmp:
            torch.save(state, tmp)
    except OSError as exc:
        raise UserError(f"{target}: cannot write: {exc.strerror or exc}") from None
    return describe_state(state)


def describe_state(state: dict) -> dict:
    """What a checkpoint holds: its kind, parts and their sizes, the model settings that matter."""
    parts = {
        name: sum(v.numel() for v in state[name].values() if torch.is_tensor(v))
        for name in ("model", "encoder")
        if isinstance(state.get(name), dict)
    }
    model = (state.get("settings") or {}).get("model", {})
    return {
        "layout": state.get("source_layout", "etad"),
        "kind": state.get("kind"),
        "epoch": state.get("epoch"),
        "parameters": parts,
        "classes": len(state.get("classes") or []),
        "model": {
            k: model.get(k)
            for k in ("variant", "in_channels", "hidden_channels", "roi_size", "fc_channels", "max_duration")
        },
        "encoder": (model.get("encoder") or {}).get("name") if "encoder" in parts else None,
    }


def describe(path: Path) -> dict:
    return describe_state(read_checkpoint(path))
