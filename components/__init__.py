"""Kubeflow Pipelines components: one module per pipeline step, each a thin typed wrapper that calls one stage
of :mod:`fastprune.common.stages` through :func:`fastprune.components.runtime.run_component`.

A component's parameters carry the names of the options they set (:mod:`fastprune.common.stages.options`), and
its ``Args:`` are generated from the same declarations (:func:`component`); ``tests/test_components.py`` checks
the literal signatures against them."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import BaseModel

BASE_IMAGE = "ghcr.io/fastprune/fastprune:0.1.0"
"""The project image every step runs in (see the Dockerfile); ``fastprune compile --image`` sets another."""

ARTIFACTS = {
    "model": "the fine-tuned model folder (the fetch step's)",
    "fetched": "the fetched model, saved as a checked folder",
    "sample": "the pruning sample (parquet) with its batch settings and its held-out part (holdout)",
    "grads": "the mask gradients (safetensors)",
    "searched": "the masks of the search",
    "masks": "the masks this step reads or (search) writes",
    "rearranged": "the rearranged masks",
    "tuned": "the tuned masks (scales or refit weights)",
    "pruned": "the exported, physically pruned model",
    "evaluation": "the dev metric of every stage",
    "profile": "the latency of both models",
    "registration": "the registered version, its gate decision and run",
    "metrics": "the step's figures, shown in the Kubeflow UI",
    "report": "the step's report, shown in the Kubeflow UI",
    "report_page": "the HTML report (with the kept units per layer), shown in the Kubeflow UI",
    "sweep": "the sweep's candidates, gate decisions and choice",
}
"""What each artifact a component reads or writes holds (its ``Args:`` entry)."""


def describe(name: str) -> str:
    """The description of a component parameter: its option's, a run parameter's, or an artifact's."""
    from ..common.stages.options import Objective, RunOptions
    from ..common.stages.run import STAGES
    from .runtime import STAGE_NAMES

    models: list[type[BaseModel]] = [RunOptions, Objective, *(s.params for s in STAGES.values())]
    for model in models:
        field = model.model_fields.get(STAGE_NAMES.get(name, name)) or model.model_fields.get(name)
        if field is not None and field.description:
            return field.description
    if name.startswith("chosen_"):
        return f"the chosen candidate's {name.removeprefix('chosen_')} (empty when none passed)"
    if name == "pipeline_run":
        return "the pipeline run that made the model, a tag (empty: none)"
    return ARTIFACTS[name]


def component(func: Callable[..., Any]):
    """``@dsl.component`` on the project image, with a Google-style ``Args:`` section generated from the
    declarations of the function's parameters."""
    import inspect

    from kfp import dsl

    lines = [f"    {name}: {describe(name)}" for name in inspect.signature(func).parameters]
    func.__doc__ = f"{(func.__doc__ or '').strip()}\n\nArgs:\n" + "\n".join(lines) + "\n"
    return dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)(func)
