"""The shape docs/architecture.md promises, checked on the source: the top of stages/ holds only the
command modules the CLI runs, no command imports another, the packages keep their layers, no
import circle anywhere, one home for checkpoint I/O, short functions and keyword arguments; and the
worked examples (a new encoder, a new sampling strategy) work by adding one entry."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch

from stages.api import registries
from stages.core.settings_file import load_settings
from tests.helpers import REPO, demo_config

# who may import whom, package by package (docs/architecture.md has the picture)
LAYERS = {
    "core": {"core"},
    "model": {"core", "model"},
    "data": {"core", "data"},  # the training targets live with the model (stages/model/targets.py)
    "evaluation": {"core", "data", "evaluation"},
    "training": {"core", "model", "data", "training"},
    "inference": {"core", "model", "data", "evaluation", "inference"},
    "studies": {"core", "data", "studies"},
}
SOURCES = sorted([*(REPO / "stages").rglob("*.py"), *(REPO / "etad_cli").rglob("*.py")])


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_lines(tree: ast.Module) -> set[int]:
    """Lines inside `if TYPE_CHECKING:` blocks (imports for type hints only, never executed)."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            lines.update(range(node.lineno, node.end_lineno + 1))
    return lines


def imports(path: Path) -> set[str]:
    """The project modules a file imports when it runs (function-level imports included), as
    module names: `from stages import train` gives `stages.train`."""
    tree = ast.parse(path.read_text())
    hints = _type_checking_lines(tree)
    found = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in hints:
            continue
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.split(".")[0] in ("stages", "etad_cli")
        ):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if _is_module(candidate) else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] in ("stages", "etad_cli"))
    return found


def _is_module(name: str) -> bool:
    base = REPO.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


GRAPH = {module_name(p): imports(p) for p in SOURCES}
FACADE = "stages.api"  # the Python API: the one module of stages/ that runs the command modules
COMMANDS = {
    m.removeprefix("stages.")
    for p in [*(REPO / "etad_cli").rglob("*.py"), REPO / "stages" / "api.py"]
    for m in imports(p)
    if m.count(".") == 1 and m.startswith("stages.") and m.split(".")[1] not in LAYERS and m != FACADE
}


def test_the_top_of_stages_holds_exactly_the_command_modules_the_cli_runs():
    top = {p.stem for p in (REPO / "stages").glob("*.py") if p.stem not in ("__init__", "api")}
    assert top == COMMANDS
    assert {
        "synth",
        "extract",
        "cache",
        "train",
        "train_e2e",
        "train_encoder",
        "infer",
        "evaluate",
        "study",
    } <= top
    packages = {p.name for p in (REPO / "stages").iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(LAYERS)


def test_no_command_imports_another_and_no_stage_imports_the_cli():
    for name, found in GRAPH.items():
        if not name.startswith("stages") or name == FACADE:
            continue
        assert not any(m.startswith("etad_cli") for m in found), name
        others = {f"stages.{c}" for c in COMMANDS} - {name}
        assert not found & others, (name, found & others)


def test_each_package_imports_only_its_layers():
    for name, found in GRAPH.items():
        parts = name.split(".")
        if parts[0] != "stages" or len(parts) < 3:
            continue
        allowed = LAYERS[parts[1]]
        used = {m.split(".")[1] for m in found if m.startswith("stages.") and m.count(".") >= 2}
        assert used <= allowed, (name, used - allowed)


def test_no_import_circle_anywhere():
    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(m for m in GRAPH.get(node, ()) if m in GRAPH):
            assert nxt not in path, "import circle: " + " -> ".join([*path[path.index(nxt) :], nxt])
            if nxt not in done:
                visit(nxt, [*path, nxt])
        done.add(node)

    done: set[str] = set()
    for start in GRAPH:
        visit(start, [start])


def test_torch_save_and_load_live_in_the_checkpoints_module_only():
    for path in SOURCES:
        if path != REPO / "stages" / "core" / "checkpoints.py":
            assert not re.search(r"torch\.(save|load)\(", path.read_text()), path


def _functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_no_function_over_60_lines_and_thin_commands():
    for path in SOURCES:
        for node in _functions(path):
            assert node.end_lineno - node.lineno + 1 <= 60, (path.name, node.name)
            if path.parent.name == "commands" and not node.name.startswith("_"):  # a Typer command
                body = node.body[1:] if ast.get_docstring(node) else node.body  # after the docstring
                assert body[-1].end_lineno - body[0].lineno + 1 <= 25, (path.name, node.name)


def test_no_call_passes_more_than_four_values_by_position():
    """To a function or class of the project (library calls such as tensor.view are theirs)."""
    ours = set()
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                ours.add(node.name)
    for path in SOURCES:
        tree = ast.parse(path.read_text())
        theirs = {  # names this file imports from libraries (rich's Progress is not ours)
            a.asname or a.name
            for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom)
            and n.module
            and n.module.split(".")[0] not in ("stages", "etad_cli")
            for a in n.names
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and len(node.args) > 4:
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                assert name not in ours - theirs, (path.name, node.lineno, name)


def _example(heading: str) -> str:
    page = (REPO / "docs" / "architecture.md").read_text()
    section = page.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture
def worked_examples():
    """Run the two examples of docs/architecture.md in their modules' namespaces, as if written there."""
    from stages.model import encoder, sampling

    exec(_example("Adding an encoder"), dict(vars(encoder)))
    exec(_example("Adding a sampling strategy"), dict(vars(sampling)))
    yield
    encoder.ENCODERS.pop("mean_colour_8")
    sampling.SNIPPET_SAMPLERS.pop("every_other")


def test_a_new_sampling_strategy_is_one_entry(worked_examples):
    from stages.model.sampling import sample_snippets

    s = load_settings(None, ["e2e.snippet_sampling=every_other"], parts=registries())
    generator = torch.Generator().manual_seed(0)
    picks = sample_snippets(12, 0.5, 2, s.e2e.snippet_sampling, generator=generator).flatten()
    assert len(picks) == 6 and (picks.diff() == 2).all()
    with pytest.raises(Exception, match="every_other"):  # the error lists the registered names
        load_settings(None, ["e2e.snippet_sampling=nope"], parts=registries())


@pytest.mark.slow
def test_a_new_encoder_is_one_entry(worked_examples, tmp_path, cli, synth_dir, feature_work):
    snippets = feature_work / "work" / "cache" / "snippets"
    config = demo_config(
        tmp_path,
        synth_dir,
        cache={"snippets_dir": str(snippets)},
        train={"epochs": 1},
        model={"in_channels": None, "encoder": {"name": "mean_colour_8", "crop_size": 40}},
    )
    result = cli("cache", "-c", config, "--what", "features")
    assert result.returncode == 0, result.output
    result = cli("train", "-c", config)
    assert result.returncode == 0, result.output
    state = torch.load(tmp_path / "work" / "pretrain" / "checkpoints" / "last.pt", weights_only=True)
    assert state["settings"]["model"]["in_channels"] == 24  # derived from the encoder's features
    assert state["model"]["temporal.layer1.0.weight"].shape[1] == 24 // 4  # grouped conv, 4 groups
