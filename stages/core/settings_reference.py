"""docs/settings.md, generated from the schema (stages/core/settings.py): every setting with its
type, default and meaning (`etad config reference`; a test keeps the page in sync)."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

from stages.core.settings import Settings


def _type_name(annotation: Any) -> str:
    """A short readable type: `int`, `float ≥ 0`, `'a' | 'b'`, `path or null`, `list of float`."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin is Annotated:
        return _type_name(args[0]) + _bounds(args[1:])
    if origin in (Union, types.UnionType):
        names = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in args else "")
    if origin is list:
        return f"list of {_type_name(args[0])}"
    if annotation is Path:
        return "path"
    return getattr(annotation, "__name__", str(annotation))


def _choices(metadata: Any, parts: dict[str, dict]) -> str:
    """The names of a part-naming field, e.g. `'random' | 'grid'` (empty for other fields)."""
    for m in metadata:
        key = getattr(getattr(m, "func", None), "part_key", None)
        if key in parts:
            return " \\| ".join(f"`{name}`" for name in parts[key])
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


def settings_reference(parts: dict[str, dict]) -> str:
    """docs/settings.md: every setting with its type, default and meaning; `parts` gives the names
    of the part-naming settings (etad_cli/parts.py)."""
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
            named = _choices(field.metadata, parts)
            inner = [get_args(a)[1:] for a in get_args(kind) if get_origin(a) is Annotated]  # a part | None
            if not named and inner and _choices(inner[0], parts):
                named = _choices(inner[0], parts) + " or null"
            kind_text = named or _type_name(kind) + _bounds(field.metadata)
            lines.append(f"| `{prefix}{name}` | {kind_text} | {_default(field)} | {meaning} |")
        lines.append("")
        for key, kind in nested:
            lines.extend([f"## `{key}`", "", (kind.__doc__ or "").strip(), ""])
            section(kind, f"{key}.")

    lines.extend(["## Top level", ""])
    section(Settings, "")
    return "\n".join(lines).rstrip() + "\n"
