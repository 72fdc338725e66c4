"""What both pipelines share: their signatures, generated from the parameter models (one parameter per field,
with its KFP type, default and description), and the wiring of their steps, each component called with the
pipeline parameters it takes (a component parameter has the name of the pipeline parameter that sets it)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kfp import dsl
from kfp.dsl import Artifact

from ..components.evaluate import evaluate_models
from ..components.export import export_model
from ..components.fisher import compute_fisher
from ..components.prepare import fetch_model
from ..components.profile import profile_latency
from ..components.rearrange import rearrange_masks
from ..components.register import register_model
from ..components.sample import sample_data
from ..components.search import search_masks
from ..components.tune import tune_masks
from .params import PipelineParams, kfp_annotation


def signature(params: type[PipelineParams]) -> inspect.Signature:
    """The pipeline function's signature: one parameter per field of ``params``, of its KFP type and default."""
    return inspect.Signature(
        [
            inspect.Parameter(
                name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=field.default, annotation=kfp_annotation(field)
            )
            for name, field in params.model_fields.items()
        ],
        return_annotation=Artifact,
    )


def pipeline(name: str, description: str, params: type[PipelineParams], body: Callable[..., Any]):
    """``@dsl.pipeline`` over ``body(p)``, where ``p`` maps each parameter of ``params`` to its pipeline channel;
    the signature and the ``Args:`` (the descriptions the compiled spec carries) come from ``params``."""
    sig = signature(params)

    def run(*args: Any, **kwargs: Any) -> Any:
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        return body(dict(bound.arguments))

    run.__signature__ = sig  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in sig.parameters.values()} | {"return": Artifact}
    run.__name__ = run.__qualname__ = name.replace("-", "_")
    args = "\n".join(f"    {n}: {f.description or n}" for n, f in params.model_fields.items())
    run.__doc__ = f"{description}\n\nArgs:\n{args}\n"
    return dsl.pipeline(name=name, description=description)(run)


def call(component, p: dict[str, Any], **inputs: Any) -> dsl.PipelineTask:
    """``component`` with the given inputs and the pipeline parameters it takes."""
    names = component.component_spec.inputs or {}
    return component(**{k: v for k, v in p.items() if k in names and k not in inputs}, **inputs)


@dataclass
class Prepared:
    """The steps run once per pipeline run: fetch, sample and Fisher."""

    fetched: dsl.PipelineTask
    sampled: dsl.PipelineTask
    fisher: dsl.PipelineTask

    @property
    def model(self):
        return self.fetched.outputs["fetched"]

    @property
    def sample(self):
        return self.sampled.outputs["sample"]

    @property
    def grads(self):
        return self.fisher.outputs["grads"]


def prepare(p: dict[str, Any]) -> Prepared:
    """fetch -> sample -> Fisher (iterative when the pipeline has ``fisher_steps``)."""
    fetched = call(fetch_model, p)
    sampled = call(sample_data, p).after(fetched)
    fisher = call(compute_fisher, p, model=fetched.outputs["fetched"], sample=sampled.outputs["sample"])
    return Prepared(fetched, sampled, fisher)


@dataclass
class Candidate:
    """The steps of one budget: search -> rearrange -> tune -> export -> evaluate, profile."""

    searched: dsl.PipelineTask
    rearranged: dsl.PipelineTask
    tuned: dsl.PipelineTask
    exported: dsl.PipelineTask
    evaluated: dsl.PipelineTask
    profiled: dsl.PipelineTask

    def outputs(self) -> dict[str, Any]:
        """The candidate's artifacts, by the names the register and select steps take."""
        return {
            "searched": self.searched.outputs["masks"],
            "rearranged": self.rearranged.outputs["rearranged"],
            "tuned": self.tuned.outputs["tuned"],
            "pruned": self.exported.outputs["pruned"],
            "evaluation": self.evaluated.outputs["evaluation"],
            "profile": self.profiled.outputs["profile"],
        }


def candidate(p: dict[str, Any], prepared: Prepared, constraint: Any) -> Candidate:
    """Prune to ``constraint`` from the prepared steps' model, sample and gradients."""
    model, sample, grads = prepared.model, prepared.sample, prepared.grads
    searched = call(search_masks, p, model=model, grads=grads, sample=sample, constraint=constraint)
    masks = searched.outputs["masks"]
    rearranged = call(rearrange_masks, p, grads=grads, masks=masks)
    tuned = call(
        tune_masks, p, model=model, sample=sample, grads=grads, searched=masks, masks=rearranged.outputs["rearranged"]
    )
    exported = call(export_model, p, model=model, masks=tuned.outputs["tuned"])
    pruned = exported.outputs["pruned"]
    evaluated = call(
        evaluate_models,
        p,
        model=model,
        pruned=pruned,
        searched=masks,
        rearranged=rearranged.outputs["rearranged"],
        tuned=tuned.outputs["tuned"],
    )
    profiled = call(profile_latency, p, model=model, pruned=pruned)
    return Candidate(searched, rearranged, tuned, exported, evaluated, profiled)


def register(p: dict[str, Any], prepared: Prepared, chosen: dict[str, Any]) -> dsl.PipelineTask:
    """Register the chosen candidate (its artifacts by name) behind the accuracy gate."""
    return call(
        register_model,
        p,
        model=prepared.model,
        sample=prepared.sample,
        grads=prepared.grads,
        **chosen,
        pipeline_run=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
    )
