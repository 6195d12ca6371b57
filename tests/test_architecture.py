"""The shape the architecture promises: no stage imports the CLI or another stage, and the worked
examples of docs/architecture.md (a new encoder, a new sampling strategy) work by adding one entry."""

from __future__ import annotations

import ast
import re

import pytest
import torch

from etad_cli.parts import registries
from stages.core.settings_file import load_settings
from tests.conftest import REPO, demo_config

STAGE_MODULES = {"extract", "cache", "pretrain", "e2e", "infer", "evaluate", "synth"}


def _imports(path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_no_stage_imports_the_cli_or_another_stage():
    for path in sorted((REPO / "stages").rglob("*.py")):
        imports = _imports(path)
        assert not any(name.startswith("etad_cli") for name in imports), path
        me = path.stem if path.parent.name == "stages" else None
        others = {f"stages.{s}" for s in STAGE_MODULES - {me}}
        assert not imports & others, (path, imports & others)


def test_cli_commands_are_thin():
    tree = ast.parse((REPO / "etad_cli" / "app.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.decorator_list:
            body = node.body[1:] if ast.get_docstring(node) else node.body  # the body, not the options
            lines = body[-1].end_lineno - body[0].lineno + 1 if body else 0
            assert lines <= 20, (node.name, lines)


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
    picks = sample_snippets(12, 0.5, 2, s.e2e.snippet_sampling, torch.Generator().manual_seed(0)).flatten()
    assert len(picks) == 6 and (picks.diff() == 2).all()
    with pytest.raises(Exception, match="every_other"):  # the error lists the registered names
        load_settings(None, ["e2e.snippet_sampling=nope"], parts=registries())


@pytest.mark.slow
def test_a_new_encoder_is_one_entry(worked_examples, tmp_path, cli, synth_dir, feature_work):
    snippets = feature_work / "work" / "cache" / "snippets"
    config = demo_config(
        tmp_path, synth_dir, cache={"snippets_dir": str(snippets)}, train={"epochs": 1},
        model={"in_channels": None, "encoder": {"name": "mean_colour_8", "crop_size": 40}},
    )  # fmt: skip
    result = cli("cache", "-c", config, "--what", "features")
    assert result.exit_code == 0, result.output
    result = cli("train", "-c", config)
    assert result.exit_code == 0, result.output
    state = torch.load(tmp_path / "work" / "pretrain" / "checkpoints" / "last.pt", weights_only=True)
    assert state["settings"]["model"]["in_channels"] == 24  # derived from the encoder's features
    assert state["model"]["temporal.layer1.0.weight"].shape[1] == 24 // 4  # grouped conv, 4 groups
