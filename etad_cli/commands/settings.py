"""`etad config show|reference|validate` and `etad encoders`: what a settings file and its parts can be."""

from __future__ import annotations

import json

from etad_cli import views
from etad_cli.console import console, user_errors
from etad_cli.options import ConfigArg, SetOpt, flag, load


def config_show(config: ConfigArg, set_: SetOpt = None) -> None:
    """Print the resolved settings (defaults filled in, paths absolute). Part names (encoder,
    samplers, variant, grad mode) are checked by `etad config validate`, which loads torch.

    Example: etad config show examples/demo.yaml --set train.lr=1e-4
    """
    from stages.core.settings_file import settings_as_yaml

    with user_errors():
        resolved = load(config, set_, check_parts=False)
        console.print(settings_as_yaml(resolved), end="")


def config_reference() -> None:
    """Print the settings reference (Markdown) generated from the settings models: docs/settings.md.

    Example: etad config reference > docs/settings.md
    """
    from stages.api import registries
    from stages.core.settings_reference import settings_reference

    console.print(settings_reference(registries()), end="", soft_wrap=True)


def config_validate(config: ConfigArg, set_: SetOpt = None) -> None:
    """Check a settings file: one line per problem and exit code 2 if it is not valid.

    Example: etad config validate examples/anet_tsp_e2e.yaml
    """
    with user_errors():
        load(config, set_)
        console.print(f"{config}: valid")


def encoders(
    as_json: flag("--json", "Print the registry as JSON.") = False,
) -> None:
    """List the encoders model.encoder.name can be, with their clip shapes and checkpoint formats.

    Each row: parameters, feature width, the clip shape the encoder takes, its stages (what
    frozen_stages counts) and the weight files it loads.

    Example: etad encoders --json
    """
    from stages.model.encoder import describe_encoders

    with user_errors():
        rows = describe_encoders()
        if as_json:
            print(json.dumps(rows, indent=1))
        else:
            views.encoder_table(rows)
