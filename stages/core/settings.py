"""One YAML file configures every stage; these pydantic models validate it.

Every section forbids unknown keys, so a typo is an error rather than a silently ignored setting.
Relative paths are resolved against the folder of the YAML file (also for `--set` overrides),
so a config file and the data it names can move together.
"""

from __future__ import annotations

import reprlib
import types
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from stages.core.errors import UserError


def _resolve(path: Path | None, info: ValidationInfo) -> Path | None:
    """Make a relative path absolute against the YAML file's folder (passed in the validation context)."""
    if path is None or path.is_absolute():
        return path
    base = (info.context or {}).get("base_dir")
    return (Path(base) / path).resolve() if base is not None else path


FilePath = Annotated[Path, AfterValidator(_resolve)]
Ratio = Annotated[float, Field(ge=0.0, le=1.0)]


def _one_of(registry: Callable[[], dict], in_torch_module: bool = False) -> AfterValidator:
    """Check a name against a registry (a plain dict in the module that owns the parts). The
    registry is imported when a value is checked, so loading settings stays light. Registries that
    live in torch modules (encoders, samplers, variants, grad modes) are skipped when the caller
    loads with `check_parts=False` (`etad eval`, `etad config show`), which then never import torch;
    the stages that use those parts load with the check, and so does `etad config validate`."""

    def check(value: str, info: ValidationInfo) -> str:
        if in_torch_module and not (info.context or {}).get("check_parts", True):
            return value
        names = registry()
        if value not in names:
            raise ValueError(f"expected one of {', '.join(names)}")
        return value

    check.registry = registry  # the settings reference lists the names
    return AfterValidator(check)


def _encoders() -> dict:
    from stages.model.encoder import ENCODERS

    return ENCODERS


def _proposal_samplers() -> dict:
    from stages.model.sampling import PROPOSAL_SAMPLERS

    return PROPOSAL_SAMPLERS


def _snippet_samplers() -> dict:
    from stages.model.sampling import SNIPPET_SAMPLERS

    return SNIPPET_SAMPLERS


def _variants() -> dict:
    from stages.model.detector import VARIANTS

    return VARIANTS


def _grad_modes() -> dict:
    from stages.model.backward import GRAD_MODES

    return GRAD_MODES


def _protocols() -> dict:
    from stages.data.protocols import PROTOCOLS

    return PROTOCOLS


def _post_processing() -> dict:
    from stages.evaluation.postprocess import POST_PROCESSING

    return POST_PROCESSING


def _classifiers() -> dict:
    from stages.evaluation.postprocess import CLASSIFIERS

    return CLASSIFIERS


EncoderName = Annotated[str, _one_of(_encoders, in_torch_module=True)]
ProposalSampler = Annotated[str, _one_of(_proposal_samplers, in_torch_module=True)]
SnippetSampler = Annotated[str, _one_of(_snippet_samplers, in_torch_module=True)]
GradMode = Annotated[str, _one_of(_grad_modes, in_torch_module=True)]
VariantName = Annotated[str, _one_of(_variants, in_torch_module=True)]
DatasetName = Annotated[str, _one_of(_protocols)]
ClassifierName = Annotated[str, _one_of(_classifiers)]
PostProcessingName = Annotated[str, _one_of(_post_processing)]


def _tiou(value: float) -> float:
    if not 0.0 < value <= 1.0:
        raise ValueError("a tIoU threshold must be in (0, 1]")
    return value


TIoU = Annotated[float, AfterValidator(_tiou)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class DataSettings(Section):
    """What the videos and annotations are, and how frames and snippets are sampled from them."""

    dataset: DatasetName = Field(
        "anet",
        description="temporal protocol (stages/data/protocols.py): anet: the whole video resized to "
        "temporal_scale snippets; thumos: sliding windows",
    )
    annotations: FilePath | None = Field(
        None, description="ActivityNet-1.3 or THUMOS-14 style JSON ('database')"
    )
    video_dir: FilePath | None = Field(None, description="folder of the video files")
    video_name: str = Field(
        "{id}.mp4", description="file name of a video in video_dir; '{id}' is the video id"
    )
    train_subset: str = Field("training", description="subset of the annotation file that training uses")
    eval_subset: str = Field("validation", description="subset that `etad infer` detects and evaluates")
    fps: float = Field(15.0, gt=0, description="frames per second after extraction")
    frame_height: int = Field(128, ge=8, description="frame height after extraction (ETAD: 128)")
    frame_width: int = Field(171, ge=8, description="frame width after extraction (ETAD: 171)")
    snippet_length: int = Field(16, ge=1, description="frames per snippet")
    snippet_stride: int = Field(16, ge=1, description="frames between snippet starts (thumos, fixed stride)")
    temporal_scale: int = Field(128, ge=4, description="snippets per video (anet) or per window (thumos)")
    window_overlap: Ratio = Field(0.5, description="thumos: overlap between sliding windows")
    window_ioa_threshold: Ratio = Field(
        0.9, description="thumos: keep a GT in a training window above this IoA"
    )
    blocked: FilePath | None = Field(
        None, description="JSON list of video ids left out of evaluation (not of training, as the original)"
    )
    decoder: Literal["auto", "decord", "pyav"] = Field(
        "auto", description="auto: decord if installed, else PyAV"
    )

    @field_validator("video_name")
    @classmethod
    def _has_id(cls, value: str) -> str:
        if "{id}" not in value or "/" in value or "\\" in value:
            raise ValueError("expected a file name containing '{id}', e.g. 'v_{id}.mp4'")
        return value


class EncoderSettings(Section):
    """The video encoder that turns a snippet of frames into one feature vector."""

    name: EncoderName = Field(
        "r2plus1d_34_tsp",
        description="a name of the encoder registry (stages/model/encoder.py): r2plus1d_34_tsp (ETAD), "
        "torchvision r2plus1d_18, or tiny (CPU demo and tests)",
    )
    checkpoint: FilePath | None = Field(
        None, description="weights; TSP layout (key 'model', 'features.' prefix)"
    )
    crop_size: int = Field(
        112, ge=8, description="frames are centre-cropped (random crop in e2e training) to this size"
    )
    frozen_stages: int = Field(2, ge=-1, le=4, description="stem + this many residual stages are frozen")
    norm_eval: bool = Field(True, description="keep every BatchNorm in eval mode (running statistics frozen)")


class ModelSettings(Section):
    """The ETAD detector (docs/method.md) and the encoder in front of it."""

    variant: VariantName = Field(
        "original", description="original: sming256/ETAD; opentad: OpenTAD's (docs/method.md §3.5)"
    )
    in_channels: int | None = Field(
        None,
        ge=4,
        multiple_of=4,
        description="feature width; unset: the encoder's output width (or the cached features' width)",
    )
    hidden_channels: int = Field(
        256, ge=32, multiple_of=32, description="width of the detector's temporal and proposal layers"
    )
    max_duration: int = Field(128, ge=1, description="longest proposal, in snippets (dscale)")
    roi_size: int = Field(24, ge=4, description="samples per extended proposal in RoI alignment")
    fc_channels: int | None = Field(
        None, ge=1, description="width of the proposal head's first FC; unset: 2 x hidden_channels"
    )
    extend_ratio: float = Field(
        0.5, ge=0.0, description="a proposal is extended by this share of its length on each side"
    )
    stage_iou_thresholds: list[Ratio] = Field(
        default_factory=lambda: [0.7, 0.8, 0.9],
        min_length=1,
        description="one refinement stage per threshold (positive IoU)",
    )
    proposal_sampling: ProposalSampler = Field(
        "random", description="which proposals train the detector per video (stages/model/sampling.py)"
    )
    proposal_ratio: Ratio = Field(0.06, description="share of all proposals sampled per video in training")
    classifier_head: bool = Field(False, description="train a video-level multi-label classifier too")
    classifier_refit_steps: int = Field(
        0,
        ge=0,
        description="after the last epoch, fit the classifier head again, alone and from fresh weights, on "
        "the final features of the training items (full-batch Adam steps; 0: keep the head as trained)",
    )
    encoder: EncoderSettings = Field(default_factory=EncoderSettings)


class CacheSettings(Section):
    """HDF5 caches written by `etad cache` and read by training."""

    snippets_dir: str = Field("cache/snippets", description="under work_dir: one <id>.h5 per video")
    features_dir: str = Field("cache/features", description="under work_dir: one <id>.h5 per video")
    compression: Literal["none", "gzip", "lzf"] = Field("none", description="of the snippet cache (see docs)")
    batch_size: int = Field(32, ge=1, description="snippets per encoder forward when caching features")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="where `etad cache --what features` runs the encoder"
    )
    dtype: Literal["float32", "float16", "bfloat16"] = Field(
        "float32", description="encoder precision when caching features (stored as float32)"
    )
    workers: int = Field(1, ge=1, description="processes cutting snippets")


class Optimisation(Section):
    """What `train` and `e2e` both set: the optimiser, the schedule, the loop. Each section has
    its own values (its own defaults below)."""

    optimizer: Literal["adamw", "adam"] = Field("adamw", description="AdamW (ETAD) or Adam")
    lr: float = Field(1e-3, gt=0, le=1, description="learning rate (of the detector)")
    weight_decay: float = Field(1e-4, ge=0, description="weight decay (decoupled with AdamW)")
    batch_size: int = Field(16, ge=1, description="videos (or windows) per step")
    epochs: int = Field(6, ge=1, description="training epochs")
    lr_step: int = Field(5, ge=1, description="epochs between lr decays")
    lr_gamma: float = Field(0.1, gt=0, le=1, description="lr decay factor")
    grad_clip: float = Field(0.0, ge=0, description="max gradient L2 norm; 0 turns clipping off")
    workers: int = Field(0, ge=0, description="DataLoader worker processes")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when available")
    amp: Literal["none", "bf16", "fp16"] = Field("none", description="mixed precision on GPU")
    log_every: int = Field(10, ge=1, description="steps between metrics.jsonl records")


class TrainSettings(Optimisation):
    """Frozen-feature pretraining of the detector (ETAD ANet TSP recipe by default)."""


class E2ESettings(Optimisation):
    """End-to-end training: sequential forward, sampled-snippet backward (docs/method.md)."""

    lr: float = Field(5e-4, gt=0, le=1, description="detector learning rate")
    batch_size: int = Field(4, ge=1, description="videos per step")
    encoder_lr: float = Field(5e-7, ge=0, le=1, description="encoder learning rate (0 freezes it)")
    snippet_ratio: Ratio = Field(
        0.3, description="share of snippets re-encoded with gradients (sampled mode)"
    )
    snippet_sampling: SnippetSampler = Field(
        "random", description="which snippets (stages/model/sampling.py): random (original), uniform, block"
    )
    chunk_size: int = Field(4, ge=1, description="snippets per encoder forward, with and without gradients")
    grad_mode: GradMode = Field(
        "sampled",
        description="sampled (ETAD), checkpoint (every snippet, recomputed), full (plain back-propagation)",
    )
    init_from: FilePath | None = Field(
        None, description="detector checkpoint from frozen-feature pretraining"
    )
    augment: bool = Field(True, description="random crop, flip and colour jitter, drawn once per video")
    amp: Literal["none", "bf16", "fp16"] = Field(
        "none", description="bf16 on GPU (fp16 is refused end to end)"
    )


class EncoderTrainSettings(Optimisation):
    """`etad train --encoder`: temporally sensitive pretraining of the encoder (TSP, Alwassel et
    al. 2021) on the snippet cache (docs/method.md §2.1)."""

    lr: float = Field(1e-3, gt=0, le=1, description="learning rate of the encoder and its two heads")
    batch_size: int = Field(32, ge=1, description="clips (snippets) per step")
    epochs: int = Field(10, ge=1, description="training epochs")
    lr_step: int = Field(8, ge=1, description="epochs between lr decays")
    subset: str | None = Field(
        None, description="annotation subset whose clips train the encoder; unset: data.train_subset"
    )
    init_from: FilePath | None = Field(
        None, description="start from these encoder weights (TSP layout); unset: random initialisation"
    )
    clips_per_epoch: int = Field(
        1024, ge=2, description="clips drawn per epoch, half inside an action and half outside"
    )
    augment: bool = Field(True, description="random crop and horizontal flip per clip")
    output: str = Field(
        "encoder/encoder_tsp.pth", description="the trained encoder in TSP's layout, relative to work_dir"
    )


class InferSettings(Section):
    """Detection and ETAD post-processing (docs/method.md)."""

    batch_size: int = Field(16, ge=1, description="videos (or windows) per detector forward")
    chunk_size: int = Field(
        32, ge=1, description="snippets per encoder forward (end-to-end checkpoints, --video)"
    )
    workers: int = Field(0, ge=0, description="DataLoader worker processes")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when available")
    crop_size: int | None = Field(
        None, ge=8, description="end to end: test-time centre crop; unset: the encoder's training crop"
    )
    post_processing: PostProcessingName = Field(
        "original",
        description="original: sming256/ETAD's; opentad: OpenTAD's (stages/evaluation/postprocess.py)",
    )
    soft_nms_sigma: float = Field(0.35, gt=0, description="Gaussian Soft-NMS decay")
    top_k: int = Field(100, ge=1, description="proposals kept per video after Soft-NMS")
    min_score: float = Field(0.0, ge=0, description="detections below are dropped")
    voting_iou: float = Field(
        0.0, ge=0, le=1, description="opentad post-processing: score voting above this IoU (0: off)"
    )
    classifier: ClassifierName = Field(
        "builtin",
        description="labels: builtin head, a file (CUHK json / UntrimmedNet npy), truth (the annotation "
        "file's labels: localisation alone, a diagnostic), or none (proposals)",
    )
    classifier_file: FilePath | None = Field(None, description="CUHK json or UntrimmedNet npy")
    top_k_classes: int = Field(2, ge=1, description="classes that label every proposal")
    output: str = Field("results/detections.json", description="result JSON, relative to work_dir")


class EvalSettings(Section):
    """mAP evaluation (docs/infer_eval.md)."""

    tiou_thresholds: list[TIoU] | None = Field(
        None, min_length=1, description="default: anet 0.5:0.05:0.95, thumos 0.3:0.1:0.7; each in (0, 1]"
    )
    protocol: Literal["official", "actionformer"] = Field(
        "official", description="official (ActivityNet code) or actionformer (duplicate ground truth dropped)"
    )
    task: Literal["detection", "proposals"] = Field(
        "detection", description="detection (mAP) or proposals (AR@AN and AUC)"
    )


class Settings(Section):
    seed: int = Field(2023, description="seeds every random draw; the same seed gives the same CPU run")
    threads: int | None = Field(
        None,
        ge=1,
        description="CPU threads of torch; unset: every core this process may use (set it lower on a "
        "busy machine; a fixed count keeps CPU runs bitwise reproducible)",
    )
    work_dir: FilePath = Field(
        Path("work"),
        description="every stage writes under this folder (frames/, cache/, pretrain/, results/, ...)",
    )
    data: DataSettings = Field(default_factory=DataSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    e2e: E2ESettings = Field(default_factory=E2ESettings)
    encoder_train: EncoderTrainSettings = Field(default_factory=EncoderTrainSettings)
    infer: InferSettings = Field(default_factory=InferSettings)
    eval: EvalSettings = Field(default_factory=EvalSettings)


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Apply one `--set a.b.c=value` to the raw mapping; the value is parsed as YAML (numbers, lists...)."""
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {override}: expected KEY=VALUE, e.g. --set train.lr=1e-4")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise UserError(f"--set {override}: '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


_SHORT = reprlib.Repr()  # keyword arguments only from Python 3.12
_SHORT.maxlevel, _SHORT.maxtuple, _SHORT.maxlist, _SHORT.maxdict = 2, 4, 4, 4
_SHORT.maxstring = _SHORT.maxother = 60


def short_repr(value: Any) -> str:
    """A value as it is echoed in an error: cut short, never expanded (a YAML alias bomb stays small)."""
    return _SHORT.repr(value)


def _describe(error: dict[str, Any], source: str, overrides: list[str]) -> str:
    """One line per problem: where it came from, the dotted key, the value, what was expected."""
    key = ".".join(str(p) for p in error["loc"]) or "(top level)"
    for override in reversed(overrides):  # the last --set of a key wins, so it is the one to blame
        set_key = override.partition("=")[0].strip()
        if key == set_key or key.startswith(set_key + ".") or set_key.startswith(key + "."):
            source = f"--set {short_repr(override)[1:-1]}"
            break
    if error["type"] == "extra_forbidden":
        return f"{source}: {key}: unknown key"
    if error["type"] == "missing":
        return f"{source}: {key}: missing"
    message = error["msg"].removeprefix("Value error, ")[:200]
    return f"{source}: {key}: got {short_repr(error['input'])}: {message}"


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (YAML would keep the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {short_repr(key)} appears twice in one mapping", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> Any:
    """Read a YAML file safely (no tags that build objects, no duplicate keys), turning every
    failure into a one-line UserError naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read: {exc.__class__.__name__}") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: same tags as yaml.safe_load
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{path}: invalid YAML: {where}{problem[:200]}") from None


def load_settings(
    path: Path | None, overrides: list[str] | None = None, check_parts: bool = True
) -> Settings:
    """Load and validate a settings file, then `--set` overrides; None gives the defaults.
    `check_parts=False` leaves out the names whose registries import torch (see `_one_of`)."""
    raw: dict[str, Any] = {}
    base_dir = Path.cwd()
    source = "settings"
    if path is not None:
        raw = read_yaml(path)
        base_dir = path.resolve().parent
        source = str(path)
        raw = {} if raw is None else raw
        if not isinstance(raw, dict):
            raise UserError(
                f"{source}: expected a mapping of sections at the top level, got {type(raw).__name__}"
            )
    overrides = overrides or []
    for override in overrides:
        apply_override(raw, override)
    try:
        return Settings.model_validate(raw, context={"base_dir": base_dir, "check_parts": check_parts})
    except ValidationError as exc:
        raise UserError("\n".join(_describe(e, source, overrides) for e in exc.errors())) from None


def settings_as_yaml(settings: Settings) -> str:
    """The fully resolved settings, as YAML (what `etad config show` prints and each stage logs)."""
    return yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False)


def _type_name(annotation: Any) -> str:
    """A short readable type: `int`, `float ≥ 0`, `'a' | 'b'`, `path or null`, `list of float`."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin is Annotated:
        return _choices(args[1:]) or _type_name(args[0]) + _bounds(args[1:])
    if origin in (Union, types.UnionType):
        names = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in args else "")
    if origin is list:
        return f"list of {_type_name(args[0])}"
    if annotation is Path:
        return "path"
    return getattr(annotation, "__name__", str(annotation))


def _choices(metadata: Any) -> str:
    """The names of a registry-checked field, e.g. `'random' | 'grid'` (empty for other fields)."""
    for m in metadata:
        registry = getattr(getattr(m, "func", None), "registry", None)
        if registry is not None:
            return " \\| ".join(f"`{name}`" for name in registry())
    return ""


def _bounds(metadata: Any) -> str:
    """Range constraints of a field as text, e.g. ` ≥ 0, ≤ 1`."""
    signs = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<", "multiple_of": "multiple of"}
    found = [f"{sign} {getattr(m, key)}" for m in metadata for key, sign in signs.items() if hasattr(m, key)]
    return (" " + ", ".join(found)) if found else ""


def _default(field: Any) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
        return "" if isinstance(value, BaseModel) else f"`{value}`"
    return "null" if field.default is None else f"`{field.default}`"


def settings_reference() -> str:
    """docs/settings.md: every setting with its type, default and meaning, from the models above
    (`etad config reference`; a test keeps the page in sync)."""
    lines = [
        "# Settings reference",
        "",
        "Generated from the pydantic models in `stages/core/settings.py` by `etad config reference`;",
        "do not edit by hand (a test checks that this page matches the code). Every stage reads the",
        "same YAML file; `--set section.key=value` overrides one setting on the command line. Relative",
        "paths are resolved against the YAML file's folder.",
        "",
    ]

    def section(model: type[BaseModel], prefix: str) -> None:
        nested = []
        lines.extend(["| key | type | default | meaning |", "|---|---|---|---|"])
        for name, field in model.model_fields.items():
            kind = field.annotation
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                nested.append((f"{prefix}{name}", kind))
                continue
            meaning = (field.description or "").replace("|", "\\|")
            kind_text = _choices(field.metadata) or _type_name(kind) + _bounds(field.metadata)
            lines.append(f"| `{prefix}{name}` | {kind_text} | {_default(field)} | {meaning} |")
        lines.append("")
        for key, kind in nested:
            lines.extend([f"## `{key}`", "", (kind.__doc__ or "").strip(), ""])
            section(kind, f"{key}.")

    lines.extend(["## Top level", ""])
    section(Settings, "")
    return "\n".join(lines).rstrip() + "\n"
