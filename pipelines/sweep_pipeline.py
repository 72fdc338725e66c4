"""The budget sweep: fetch -> sample -> Fisher once, then for every constraint (``dsl.ParallelFor``) search ->
rearrange -> tune -> export -> evaluate -> profile; ``select-candidate`` collects them (``dsl.Collected``), keeps
the smallest (or fastest) candidate that passes the accuracy gate, attaches the Pareto plot as an HTML page, and
only then (``dsl.If``) ``register-model`` registers it.

Its parameters are the fields of :class:`~fastprune.pipelines.params.SweepRunParams`; the steps, their wiring,
caching, retries, GPU requests and secrets are those of the pruning pipeline (:mod:`.wiring`). Fisher is the
one-shot kind (iterative Fisher, ``fisher_steps > 1`` in the pruning pipeline, aims at a single constraint).
"""

from kfp import dsl

from ..components import BASE_IMAGE
from ..components.select import select_candidate
from .params import SweepRunParams
from .steps import accelerated, external_io
from .wiring import call, candidate, pipeline, prepare, register

SWEEP_PIPELINE_NAME = "fastprune-sweep"


def build_sweep_pipeline(image: str = BASE_IMAGE, retries: int = 3, parallelism: int = 4, accelerators: bool = True):
    """The sweep with every step running ``image``; at most ``parallelism`` candidates at once (each asks for
    ``gpu_limit`` accelerators on its GPU steps). ``accelerators=False`` leaves the GPU requests out: kfp.local
    (2.17) cannot resolve them inside a ParallelFor, and ignores them anyway."""

    def body(p: dict):
        prepared = prepare(p)
        with dsl.ParallelFor(p["constraints"], parallelism=parallelism, name="budgets") as constraint:
            c = candidate(p, prepared, constraint)
        collected = {part: dsl.Collected(output) for part, output in c.outputs().items()}
        selected = call(select_candidate, p, **collected)
        with dsl.If(selected.outputs["Output"] == True, name="a-candidate-passed"):  # noqa: E712 - a KFP condition
            chosen = {part: selected.outputs[f"chosen_{part}"] for part in collected}
            registered = register(p, prepared, chosen)
        for step in (prepared.fetched, prepared.sampled, c.evaluated, registered):
            external_io(step, p["s3_secret"], retries)
        for step in (prepared.fisher, c.searched, c.rearranged, c.tuned, c.exported):
            step.set_caching_options(enable_caching=True)
        for step in (c.profiled, selected):
            step.set_caching_options(enable_caching=False)
        for step in (prepared.fisher, c.searched, c.tuned, c.evaluated, c.profiled) if accelerators else ():
            accelerated(step, p["accelerator_type"], p["gpu_limit"])
        for step in (
            prepared.fetched,
            prepared.sampled,
            prepared.fisher,
            c.searched,
            c.rearranged,
            c.tuned,
            c.exported,
            c.evaluated,
            c.profiled,
            selected,
            registered,
        ):
            step.container_spec.image = image
        return selected.outputs["sweep"]

    return pipeline(
        SWEEP_PIPELINE_NAME,
        "Post-training structured pruning at several budgets from one Fisher "
        "computation; registers the smallest (or fastest) model that passes the accuracy gate.",
        SweepRunParams,
        body,
    )


def compile_sweep_pipeline(output: str, image: str = BASE_IMAGE, parallelism: int = 4) -> str:
    """Write the sweep (every step running ``image``) as KFP YAML; returns the path."""
    from kfp import compiler

    compiler.Compiler().compile(build_sweep_pipeline(image, parallelism=parallelism), output)
    return output
