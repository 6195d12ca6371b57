"""The registries of every part chosen by name in the settings, for checking and documenting those
names. Each registry is a plain dict in the module that owns its parts; the settings schema never
imports them (stages.core.settings.part): the CLI hands them to `load_settings`."""

from __future__ import annotations


def registries(with_torch: bool = True) -> dict[str, dict]:
    """Setting key -> registry. `with_torch=False` leaves out the registries that live in torch
    modules, so that `etad eval` and `etad config show` start without importing torch."""
    from stages.data.protocols import PROTOCOLS
    from stages.evaluation.benchmarks import BENCHMARKS
    from stages.evaluation.postprocess import CLASSIFIERS, POST_PROCESSING

    parts = {
        "data.protocol": PROTOCOLS,
        "infer.classifier": CLASSIFIERS,
        "infer.post_processing": POST_PROCESSING,
        "eval.benchmark": BENCHMARKS,
    }
    if with_torch:
        from stages.model.backward import GRAD_MODES
        from stages.model.detector import VARIANTS
        from stages.model.encoder import ENCODERS
        from stages.model.sampling import PROPOSAL_SAMPLERS, SNIPPET_SAMPLERS

        parts.update({
            "model.encoder.name": ENCODERS,
            "model.variant": VARIANTS,
            "model.proposal_sampling": PROPOSAL_SAMPLERS,
            "e2e.snippet_sampling": SNIPPET_SAMPLERS,
            "e2e.grad_mode": GRAD_MODES,
        })  # fmt: skip
    return parts
