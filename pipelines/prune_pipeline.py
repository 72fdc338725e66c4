"""The pruning pipeline: fetch -> sample -> Fisher -> search -> rearrange -> tune -> export -> evaluate / profile ->
register. One definition runs on a Kubeflow cluster (compiled YAML), locally with kfp.local, and stage by stage
from ``fastprune step``.

Its parameters are the fields of :class:`~fastprune.pipelines.params.PruneRunParams`, its steps wired as the
sweep's (:mod:`.wiring`). Steps that reach storage outside KFP's own artifact passing (fetching the model and the
data, MLflow) get the S3 credentials from a Kubernetes secret, retries, and no caching; the pure compute steps are
cached. The steps that profit from a GPU ask for ``gpu_limit`` accelerators of ``accelerator_type``
(``gpu_limit=0``: CPU only).
"""

from ..components import BASE_IMAGE
from .params import PruneRunParams
from .steps import accelerated, external_io
from .wiring import candidate, pipeline, prepare, register

PIPELINE_NAME = "fastprune"


def build_pipeline(image: str = BASE_IMAGE, retries: int = 3):
    """The pipeline with every step running ``image``; steps reaching external storage are retried ``retries``
    times (kfp.local honours retries too: local runs use 0, so that a bad input fails at once)."""

    def body(p: dict):
        prepared = prepare(p)
        c = candidate(p, prepared, p["constraint"])
        registered = register(p, prepared, c.outputs())
        for step in (prepared.fetched, prepared.sampled, c.evaluated, registered):
            external_io(step, p["s3_secret"], retries)
        for step in (prepared.fisher, c.searched, c.rearranged, c.tuned, c.exported):
            step.set_caching_options(enable_caching=True)
        c.profiled.set_caching_options(enable_caching=False)  # a measurement of this run's device
        for step in (prepared.fisher, c.searched, c.tuned, c.evaluated, c.profiled):
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
            registered,
        ):
            step.container_spec.image = image
        return registered.outputs["registration"]

    return pipeline(
        PIPELINE_NAME,
        "Post-training structured pruning of a fine-tuned Transformer (Kwon et al., "
        "NeurIPS 2022), registered in MLflow behind an accuracy gate.",
        PruneRunParams,
        body,
    )


fastprune_pipeline = build_pipeline()


def compile_pipeline(output: str, image: str = BASE_IMAGE) -> str:
    """Write the pipeline (every step running ``image``) as KFP YAML; returns the path."""
    from kfp import compiler

    compiler.Compiler().compile(build_pipeline(image), output)
    return output
