"""The pruning pipeline: fetch -> sample -> Fisher -> search -> rearrange -> tune -> export -> evaluate / profile ->
register. One definition runs on a Kubeflow cluster (compiled YAML), locally with kfp.local, and stage by stage
from ``fastprune step``.

Steps that reach storage outside KFP's own artifact passing (fetching the model and the data, MLflow) get the S3
credentials from a Kubernetes secret, retries, and no caching; the pure compute steps are cached. The steps that
profit from a GPU ask for ``gpu_limit`` accelerators of ``accelerator_type`` (``gpu_limit=0``: CPU only).
"""

from kfp import dsl
from kfp.dsl import Artifact

from ..components import BASE_IMAGE
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
from .steps import accelerated, external_io

PIPELINE_NAME = "fastprune"
def build_pipeline(image: str = BASE_IMAGE, retries: int = 3):
    """The pipeline with every step running ``image``; steps reaching external storage are retried ``retries``
    times (kfp.local honours retries too: local runs use 0, so that a bad input fails at once)."""

    @dsl.pipeline(name=PIPELINE_NAME, description="Post-training structured pruning of a fine-tuned Transformer "
                  "(Kwon et al., NeurIPS 2022), registered in MLflow behind an accuracy gate.")
    def fastprune(
        model: str = "textattack/bert-base-uncased-SST-2",
        task: str = "sst2",
        train_data: str = "sst2",
        dev_data: str = "sst2",
        constraint: float = 0.6,
        constraint_metric: str = "flops",
        num_samples: int = 2048,
        seed: int = 0,
        registered_model_name: str = "fastprune-pruned",
        max_metric_drop: float = 1.0,
        alias: str = "pruned-candidate",
        mlflow_uri: str = "",
        mlflow_experiment: str = "fastprune",
        device: str = "auto",
        accelerator_type: str = "nvidia.com/gpu",
        gpu_limit: int = 1,
        s3_secret: str = "fastprune-s3",
        profile_batch_size: int = 32,
        profile_seq_len: int = 128,
        serving_dtype: str = "float32",
        search_allocation: str = "global",
        fisher_steps: int = 1,
        fisher_labels: str = "",
        tuning_mode: str = "",
        tuning_teacher: str = "",
        tuning_ridge: str = "",
        tuning_resplit: bool = True,
    ) -> Artifact:
        fetched = fetch_model(source=model, task=task, tracking_uri=mlflow_uri, dev_data=dev_data)
        source = fetched.outputs["model"]
        sampled = sample_data(train_data=train_data, task=task, num_samples=num_samples, seed=seed).after(fetched)
        sample = sampled.outputs["sample"]
        fisher = compute_fisher(model=source, sample=sample, device=device, labels=fisher_labels, steps=fisher_steps,
                                constraint=constraint, metric=constraint_metric)
        grads = fisher.outputs["grads"]
        searched = search_masks(model=source, grads=grads, constraint=constraint, metric=constraint_metric,
                                device=device, latency_dtype=serving_dtype, allocation=search_allocation)
        rearranged = rearrange_masks(grads=grads, masks=searched.outputs["masks"])
        tuned = tune_masks(model=source, sample=sample, grads=grads, searched=searched.outputs["masks"],
                           masks=rearranged.outputs["rearranged"], device=device, mode=tuning_mode,
                           teacher=tuning_teacher, ridge=tuning_ridge, resplit=tuning_resplit)
        exported = export_model(model=source, masks=tuned.outputs["tuned"])
        pruned = exported.outputs["pruned"]
        evaluated = evaluate_models(model=source, pruned=pruned, searched=searched.outputs["masks"],
                                    rearranged=rearranged.outputs["rearranged"], tuned=tuned.outputs["tuned"],
                                    dev_data=dev_data, device=device)
        profiled = profile_latency(model=source, pruned=pruned, device=device, batch_size=profile_batch_size,
                                   seq_len=profile_seq_len, dtype=serving_dtype)
        registered = register_model(
            model=source, sample=sample, grads=grads, searched=searched.outputs["masks"],
            rearranged=rearranged.outputs["rearranged"], tuned=tuned.outputs["tuned"], pruned=pruned,
            evaluation=evaluated.outputs["evaluation"], profile=profiled.outputs["profile"],
            model_name=registered_model_name, max_drop=max_metric_drop, alias=alias, tracking_uri=mlflow_uri,
            experiment=mlflow_experiment, pipeline_run=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        )
        for step in (fetched, sampled, evaluated, registered):
            external_io(step, s3_secret, retries)
        for step in (fisher, searched, rearranged, tuned, exported):
            step.set_caching_options(enable_caching=True)
        profiled.set_caching_options(enable_caching=False)  # a measurement of this run's device
        for step in (fisher, searched, tuned, evaluated, profiled):
            accelerated(step, accelerator_type, gpu_limit)
        for step in (fetched, sampled, fisher, searched, rearranged, tuned, exported, evaluated, profiled, registered):
            step.container_spec.image = image
        return registered.outputs["registration"]

    return fastprune


fastprune_pipeline = build_pipeline()


def compile_pipeline(output: str, image: str = BASE_IMAGE) -> str:
    """Write the pipeline (every step running ``image``) as KFP YAML; returns the path."""
    from kfp import compiler

    compiler.Compiler().compile(build_pipeline(image), output)
    return output

