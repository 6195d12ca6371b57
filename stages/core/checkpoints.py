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
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from stages.core.errors import FULL, UserError, disk_full
from stages.core.files import atomic_output, temporary
from stages.core.released_checkpoints import (
    CHECKPOINT_FORMAT,
    _from_opentad,
    _from_original,
    _is_opentad,
    _is_original,
)

if TYPE_CHECKING:  # the settings models, for type hints only
    from stages.core.settings import Settings


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
    load_strictly(backbone, state, path)


def load_strictly(
    module: torch.nn.Module, state: dict, path: Path, *, other: str = "shape", hint: str = ""
) -> None:
    """Load `state` into `module`: a tensor of another `other` or any missing or unexpected key is
    an error naming the file (`hint` ends the second: what the file may be instead)."""
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a tensor of another shape
        reason = str(exc).strip().splitlines()[-1].strip()[:160]
        raise UserError(f"{path}: weights of another {other}: {reason}") from None
    if missing or unexpected:
        raise UserError(
            f"{path}: keys do not match the encoder: "
            f"{len(missing)} missing (e.g. {', '.join(missing[:3]) or '-'}), "
            f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3]) or '-'}){hint}"
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


@dataclass(frozen=True)
class Layout:
    """A checkpoint layout: a test on the loaded object and a conversion to an etad checkpoint."""

    name: str
    matches: Callable[[object], bool]
    convert: Callable[[dict, Path], dict]


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
