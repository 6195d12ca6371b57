"""Reading a settings file: safe YAML (no object tags, no duplicate keys), `--set` overrides, and
validation against the schema (stages/core/settings.py), every problem as one line naming the file
or the `--set`, the dotted key, the value and what was expected."""

from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from stages.core.errors import UserError
from stages.core.settings import Settings


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
    if not error["loc"]:  # a check across sections: its message names the keys
        return f"{source}: {message}"
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
    path: Path | None, overrides: list[str] | None = None, parts: dict[str, dict] | None = None
) -> Settings:
    """Load and validate a settings file, then `--set` overrides; None gives the defaults. `parts`
    maps a part-naming key to its registry (stages.core.setting_types.part): those names are checked."""
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
        return Settings.model_validate(raw, context={"base_dir": base_dir, "parts": parts or {}})
    except ValidationError as exc:
        raise UserError("\n".join(_describe(e, source, overrides) for e in exc.errors())) from None


def settings_as_yaml(settings: Settings) -> str:
    """The fully resolved settings, as YAML (what `etad config show` prints and each stage logs)."""
    return yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False)
