"""The value types of the settings schema: paths resolved against the YAML file, ratios, tIoUs, and
the names of parts (checked against the registries the caller hands in)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import (
    AfterValidator,
    Field,
    ValidationInfo,
)


def _resolve(path: Path | None, info: ValidationInfo) -> Path | None:
    """Make a relative path absolute against the YAML file's folder (passed in the validation context)."""
    if path is None or path.is_absolute():
        return path
    base = (info.context or {}).get("base_dir")
    return (Path(base) / path).resolve() if base is not None else path


FilePath = Annotated[Path, AfterValidator(_resolve)]


Ratio = Annotated[float, Field(ge=0.0, le=1.0)]


def part(key: str) -> AfterValidator:
    """A setting that names a part (an encoder, a sampler, a protocol...). The registries are plain
    dicts in the modules that own the parts; the schema never imports them. The caller of
    `load_settings` hands them in (`parts={"model.encoder.name": ENCODERS, ...}`, see
    stages.api.registries) and each name is checked against its registry; a key the caller left out is
    not checked here, and the stage that looks the name up refuses an unknown one."""

    def check(value: str, info: ValidationInfo) -> str:
        names = ((info.context or {}).get("parts") or {}).get(key)
        if names is not None and value not in names:
            raise ValueError(f"expected one of {', '.join(names)}")
        return value

    check.part_key = key  # the settings reference lists the names
    return AfterValidator(check)


EncoderName = Annotated[str, part("model.encoder.name")]


ProposalSampler = Annotated[str, part("model.proposal_sampling")]


SnippetSampler = Annotated[str, part("e2e.snippet_sampling")]


GradMode = Annotated[str, part("e2e.grad_mode")]


VariantName = Annotated[str, part("model.variant")]


ProtocolName = Annotated[str, part("data.protocol")]


ClassifierName = Annotated[str, part("infer.classifier")]


PostProcessingName = Annotated[str, part("infer.post_processing")]


BenchmarkName = Annotated[str, part("eval.benchmark")]


def _tiou(value: float) -> float:
    if not 0.0 < value <= 1.0:
        raise ValueError("a tIoU threshold must be in (0, 1]")
    return value


TIoU = Annotated[float, AfterValidator(_tiou)]
