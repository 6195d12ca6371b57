"""Every checkpoint format etad reads or writes; `torch.save` and `torch.load` appear nowhere else.

Files are always read with `torch.load(weights_only=True)`: no code is unpickled.

- etad's own (`format: etad-checkpoint-1`): what `etad train` writes once per epoch
  (`save_checkpoint`: epoch_NNN.pt written atomically, `last.pt`/`best.pt` hard links to it) and
  `load_checkpoint` reads back (resume, `etad infer`).
- TSP encoder weights (`load_tsp_checkpoint`, `export_tsp`): `{"model": {...}}`, backbone keys
  under `features.`, heads `fc*`; what `model.encoder.checkpoint` names and `etad train --encoder`
  writes. ENCODER_FORMATS maps a format name (an encoder's `formats`) to its loader.
- Released detector files, converted to an etad checkpoint by `read_checkpoint(path)` (LAYOUTS
  lists them; each entry: how to recognise it, how to map its keys), so that `etad infer
  --checkpoint`, `--init-from` and `etad checkpoint convert` accept a file as it was downloaded:
  - `etad-original`: sming256/ETAD's `{"state_dict": ...}` (`tools/train.py` saves the model
    without its DataParallel wrapper; files saved with it carry a `module.` prefix, also
    accepted). Detector keys live under `base_detector.`; the end-to-end release adds the
    mmaction2 `Recognizer3D` backbone under `feature_extractor.model.backbone.` (torchvision
    VideoResNet key names).
  - `opentad`: sming256/OpenTAD's `{"state_dict": ..., "state_dict_ema": ...}` (DDP `module.`
    prefix), the `opentad` variant of the model: `projection.`, `neck.`, `rpn_head.`,
    `roi_head.` keys, and for end to end the backbone under `backbone.model.backbone.`. The EMA
    weights are used when the file has them (OpenTAD tests with them exactly when it trained
    with EMA).
  A released file holds weights only: the model's shapes (and variant) come from the weights,
  every other model setting from the user's settings file (`released_model_settings`).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from stages.core.errors import FULL, UserError, disk_full
from stages.core.files import atomic_output, temporary

if TYPE_CHECKING:  # the settings models, for type hints only
    from stages.core.settings import Settings

CHECKPOINT_FORMAT = "etad-checkpoint-1"


def load_weights(module: torch.nn.Module, state: dict, source: object, what: str = "model") -> None:
    """module.load_state_dict(state[what]), or a one-line UserError saying why it does not fit."""
    if not isinstance(state.get(what), dict):
        raise UserError(f"{source}: holds no {what!r} weights")
    try:
        module.load_state_dict(state[what])
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        first = next((line for line in lines if "size mismatch" in line), None)
        detail = first or (lines[1] if len(lines) > 1 else lines[0])  # not "Error(s) in loading ..."
        raise UserError(f"{source}: the {what} weights do not fit this model: {detail[:200]}") from None


def save_checkpoint(folder: Path, epoch: int, state: dict, best: bool) -> Path:
    """Write checkpoints/epoch_NNN.pt atomically, then point last.pt (and best.pt) at it (hard links,
    so each pointer is a complete checkpoint that survives the epoch file being deleted)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"epoch_{epoch:03d}.pt"
    tmp = temporary(path)
    try:
        torch.save({"format": CHECKPOINT_FORMAT, **state}, tmp)
    except (OSError, RuntimeError) as exc:  # torch reports a full disk as a RuntimeError
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in FULL:
            raise disk_full(path, exc) from None
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else exc.__class__.__name__
        raise UserError(
            f"{path}: cannot write the checkpoint ({reason}); free space on the disk and rerun "
            "with --resume: the earlier checkpoints are kept"
        ) from None
    os.replace(tmp, path)
    for name in ("last.pt", "best.pt") if best else ("last.pt",):
        pointer = folder / name
        link_tmp = temporary(folder / name)
        link_tmp.unlink(missing_ok=True)
        try:
            os.link(path, link_tmp)
        except OSError:
            shutil.copyfile(path, link_tmp)
        os.replace(link_tmp, pointer)
    return path


def read_weights_file(path: Path) -> object:
    """torch.load with weights_only (no code is unpickled), failures as one-line UserErrors."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a truncated or foreign file
        raise UserError(f"{path}: not a loadable checkpoint ({exc.__class__.__name__})") from None


def as_etad_checkpoint(state: object, path: Path) -> dict:
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path}: not an etad checkpoint (no '{CHECKPOINT_FORMAT}' format tag)")
    if state.get("kind") == "finetune":  # the name of end-to-end runs before 0.2
        state["kind"] = "e2e"
    return state


def load_checkpoint(path: Path) -> dict:
    """A checkpoint written by etad."""
    return as_etad_checkpoint(read_weights_file(path), path)


def load_tsp_checkpoint(backbone: torch.nn.Module, path: Path) -> None:
    """Load weights in the public TSP layout: dict key 'model', drop 'fc' keys, strip 'features.'."""
    checkpoint = read_weights_file(path)
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise UserError(f"{path}: expected a dict with a 'model' state dict")
    state = {k.removeprefix("features."): v for k, v in state.items()}
    _load_trunk(backbone, state, path)  # TSP's heads: fc, fc_action, fc_region


HEADS = ("fc", "fc_action", "fc_region", "head", "classifier")  # top-level names of classification heads


def _load_trunk(backbone: torch.nn.Module, state: dict, path: Path) -> None:
    """Load every key of `state` but its classification heads' (top-level names in HEADS: a ViT
    block's `mlp.fc1` stays), strictly: any other missing or unexpected key is an error."""
    state = {k: v for k, v in state.items() if k.split(".")[0] not in HEADS}
    try:
        missing, unexpected = backbone.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a tensor of another shape
        reason = str(exc).strip().splitlines()[-1].strip()[:160]
        raise UserError(f"{path}: weights of another shape: {reason}") from None
    if missing or unexpected:
        raise UserError(
            f"{path}: keys do not match the encoder: "
            f"{len(missing)} missing (e.g. {', '.join(missing[:3]) or '-'}), "
            f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3]) or '-'})"
        )


def load_torchvision_checkpoint(backbone: torch.nn.Module, path: Path) -> None:
    """torchvision's own weight file of the model (`torch.save(model.state_dict())`, e.g.
    r3d_18-b3b3357e.pth; also under 'state_dict' or 'model'), its classification head left out."""
    checkpoint = read_weights_file(path)
    if isinstance(checkpoint, dict):
        checkpoint = checkpoint.get("state_dict", checkpoint.get("model", checkpoint))
    if not isinstance(checkpoint, dict) or not all(torch.is_tensor(v) for v in checkpoint.values()):
        raise UserError(f"{path}: expected a state dict (parameter name -> tensor)")
    _load_trunk(backbone, checkpoint, path)


def export_tsp(backbone: torch.nn.Module, heads: torch.nn.Module, path: Path) -> None:
    """An encoder in TSP's checkpoint layout (what `model.encoder.checkpoint` reads): the backbone's
    keys under `features.`, the pretraining heads' (fc_action, fc_region) beside them."""
    state = {f"features.{k}": v.detach().cpu() for k, v in backbone.state_dict().items()}
    state.update({k: v.detach().cpu() for k, v in heads.state_dict().items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        torch.save({"model": state, "format": "tsp", "source": "etad train --encoder"}, tmp)


def released_model_settings(settings: Settings, state: dict) -> dict:
    """The model settings a checkpoint runs with. etad's own carry all of them; a released file
    only what its weights' shapes give, the rest comes from the settings file."""
    model = dict(state["settings"]["model"])
    if state.get("source_layout", "etad") == "etad":
        return model
    mine = settings.model.model_dump()
    return {**mine, **model, "encoder": {**mine["encoder"], **model["encoder"]}}


# A format name of an encoder's `formats` (stages/model/encoder.py) -> the function that loads such a
# file into its backbone (Hugging Face folders are read in stages/model/video_backbones.py).
ENCODER_FORMATS: dict[str, Callable[[torch.nn.Module, Path], None]] = {
    "tsp": load_tsp_checkpoint,
    "torchvision": load_torchvision_checkpoint,
}


def load_encoder_weights(backbone: torch.nn.Module, loaders: dict[str, Callable], path: Path) -> None:
    """Load an encoder weight file into a backbone with the first of its formats' loaders (name ->
    loader, in order) that fits the file; the error names what each said."""
    if not loaders:
        raise UserError(f"{path}: this encoder has no checkpoint loader")
    reasons = []
    for name, load in loaders.items():
        try:
            return load(backbone, path)
        except UserError as exc:
            reasons.append(f"as {name}: {str(exc).removeprefix(f'{path}: ')}")
    raise UserError(f"{path}: " + "; ".join(reasons))


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
    return _released(
        path,
        "etad-original",
        model,
        encoder,
        model_settings={
            "variant": "original",
            "in_channels": model["temporal.layer1.0.weight"].shape[1] * 4,  # grouped conv, 4 groups
            "hidden_channels": model["temporal.layer1.0.weight"].shape[0],
            "roi_size": model["stages.0.fc.0.weight"].shape[1] // model["stages.0.reduce.0.weight"].shape[0],
            "stage_iou_thresholds": _thresholds(stages),
        },
    )


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
    return _released(
        path,
        "opentad",
        model,
        encoder,
        model_settings={
            "variant": "opentad",
            "in_channels": model["temporal.layer1.0.weight"].shape[1] * 4,  # grouped conv, 4 groups
            "hidden_channels": hidden,
            "roi_size": fc.shape[1] // hidden,
            "fc_channels": fc.shape[0],
            "stage_iou_thresholds": _thresholds(stages),
        },
    )


def _thresholds(stages: int) -> list[float]:
    """The stage IoU thresholds of both releases (0.7, 0.8, 0.9), for however many stages."""
    return [0.7, 0.8, 0.9][:stages] + [0.9] * max(0, stages - 3)


def _released(path: Path, layout: str, model: dict, encoder: dict, *, model_settings: dict) -> dict:
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
    """Write `source` (any known layout) as an etad checkpoint at `target`; never over a file. The
    checkpoint is checked before anything is written, and written under a temporary name."""
    state = read_checkpoint(source)
    target = Path(target)
    if target.exists():
        raise UserError(f"{target}: exists; give a new file name")
    described = _described(state, source)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(target) as tmp:
            torch.save(state, tmp)
    except OSError as exc:
        raise UserError(f"{target}: cannot write: {exc.strerror or exc}") from None
    except RuntimeError as exc:  # torch's zip writer reports a full disk as RuntimeError
        first = str(exc).splitlines()[0][:120] if str(exc) else exc.__class__.__name__
        raise UserError(f"{target}: cannot write ({first}); is the disk full?") from None
    return described


def describe_state(state: dict) -> dict:
    """What a checkpoint holds: its kind, parts and their sizes, the model settings that matter."""
    parts = {
        name: sum(v.numel() for v in state[name].values() if torch.is_tensor(v))
        for name in ("model", "encoder")
        if isinstance(state.get(name), dict)
    }
    settings = _mapping(state.get("settings"), "settings")
    model = _mapping(settings.get("model"), "settings.model")
    classes = state.get("classes") or []
    if not isinstance(classes, list):
        raise ValueError(f"'classes' is {type(classes).__name__}, expected a list of class names")
    return {
        "layout": state.get("source_layout", "etad"),
        "kind": state.get("kind"),
        "epoch": state.get("epoch"),
        "parameters": parts,
        "classes": len(classes),
        "head": (model.get("classifier") or "video") if model.get("classifier_head") else None,
        "model": {
            k: model.get(k)
            for k in ("variant", "in_channels", "hidden_channels", "roi_size", "fc_channels", "max_duration")
        },
        "encoder": _mapping(model.get("encoder"), "settings.model.encoder").get("name")
        if "encoder" in parts
        else None,
    }


def _mapping(value: object, where: str) -> dict:
    """A checkpoint's sub-mapping (absent: empty), or ValueError naming the key."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"'{where}' is {type(value).__name__}, expected a mapping")
    return value


def describe(path: Path) -> dict:
    return _described(read_checkpoint(path), path)


def _described(state: dict, path: Path) -> dict:
    """describe_state, or one line naming the checkpoint and its malformed field."""
    try:
        return describe_state(state)
    except ValueError as exc:
        raise UserError(f"{path}: malformed checkpoint: {exc}") from None
