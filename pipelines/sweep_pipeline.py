"""The budget sweep: fetch -> sample -> Fisher once, then for every constraint (``dsl.ParallelFor``) search ->
rearrange -> tune -> export -> evaluate -> profile; ``select-candidate`` collects them (``dsl.Collected``), keeps
the smallest (or fastest) candidate that passes the accuracy gate, attaches the Pareto plot as an HTML page, and
only then (``dsl.If``) ``register-model`` registers it.

The steps, their caching, retries, GPU requests and secrets are those of the pruning pipeline. Fisher is the
one-shot kind (iterative Fisher, ``fisher_steps > 1`` in the pruning pipeline, aims at a single constraint).
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
from ..components.select import select_candidate
from ..components.tune import tune_masks
from .steps import accelerated, external_io

SWEEP_PIPELINE_NAME = "fastprune-sweep"


def build_sweep_pipeline(image: str = BASE_IMAGE, retries: int = 3, parallelism: int = 4, accelerators: bool = True):
    """The sweep with every step running ``image``; at most ``parallelism`` candidates at once (each asks for
    ``gpu_limit`` accelerators on its GPU steps). ``accelerators=False`` leaves the GPU requests out: kfp.local
    (2.17) cannot resolve them inside a ParallelFor, and ignores them anyway."""

    @dsl.pipeline(name=SWEEP_PIPELINE_NAME, description="Post-training structured pruning at several budgets from "
                  "one Fisher computation; registers the smallest (or fastest) model that passes the accuracy gate.")
    def fastprune_sweep(
        model: str = "textattack/bert-base-uncased-SST-2",
        task: str = "sst2",
        train_data: str = "sst2",
        dev_data: str = "sst2",
        constraints: list = [0.4, 0.5, 0.6, 0.7],  # noqa: B006 - KFP reads the default from the signature
        constraint_metric: str = "flops",
        objective: str = "smallest",
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
        fisher = compute_fisher(model=source, sample=sample, device=device, labels=fisher_labels)  # one-shot Fisher
        grads = fisher.outputs["grads"]
        with dsl.ParallelFor(constraints, parallelism=parallelism, name="budgets") as constraint:
            searched = search_masks(model=source, grads=grads, constraint=constraint, metric=constraint_metric,
                                    device=device, latency_dtype=serving_dtype, allocation=search_allocation)
            rearranged = rearrange_masks(grads=grads, masks=searched.outputs["masks"])
            tuned = tune_masks(model=source, sample=sample, grads=grads, searched=searched.outputs["masks"],
                               masks=rearranged.outputs["rearranged"], device=device, mode=tuning_mode,
                               teacher=tuning_teacher, ridge=tuning_ridge, resplit=tuning_resplit)
            exported = export_model(model=source, masks=tuned.outputs["tuned"])
            evaluated = evaluate_models(model=source, pruned=exported.outputs["pruned"],
                                        searched=searched.outputs["masks"], rearranged=rearranged.outputs["rearranged"],
                                        tuned=tuned.outputs["tuned"], dev_data=dev_data, device=device)
            profiled = profile_latency(model=source, pruned=exported.outputs["pruned"], device=device,
                                       batch_size=profile_batch_size, seq_len=profile_seq_len, dtype=serving_dtype)
        selected = select_candidate(
            searched=dsl.Collected(searched.outputs["masks"]),
            rearranged=dsl.Collected(rearranged.outputs["rearranged"]),
            tuned=dsl.Collected(tuned.outputs["tuned"]), pruned=dsl.Collected(exported.outputs["pruned"]),
            evaluation=dsl.Collected(evaluated.outputs["evaluation"]),
            profile=dsl.Collected(profiled.outputs["profile"]), objective=objective, max_drop=max_metric_drop,
        )
        with dsl.If(selected.outputs["Output"] == True, name="a-candidate-passed"):  # noqa: E712 - a KFP condition
            registered = register_model(
                model=source, sample=sample, grads=grads, searched=selected.outputs["chosen_searched"],
                rearranged=selected.outputs["chosen_rearranged"], tuned=selected.outputs["chosen_tuned"],
                pruned=selected.outputs["chosen_pruned"], evaluation=selected.outputs["chosen_evaluation"],
                profile=selected.outputs["chosen_profile"], model_name=registered_model_name,
                max_drop=max_metric_drop, alias=alias, tracking_uri=mlflow_uri, experiment=mlflow_experiment,
                pipeline_run=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            )
        for step in (fetched, sampled, evaluated, registered):
            external_io(step, s3_secret, retries)
        for step in (fisher, searched, rearranged, tuned, exported):
            step.set_caching_options(enable_caching=True)
        for step in (profiled, selected):
            step.set_caching_options(enable_caching=False)
        for step in (fisher, searched, tuned, evaluated, profiled) if accelerators else ():
            accelerated(step, accelerator_type, gpu_limit)
        steps = (fetched, sampled, fisher, searched, rearranged, tuned, exported, evaluated, profiled, selected,
                 registered)
        for step in steps:
            step.container_spec.image = image
        return selected.outputs["sweep"]

    return fastprune_sweep


def compile_sweep_pipeline(output: str, image: str = BASE_IMAGE, parallelism: int = 4) -> str:
    """Write the sweep (every step running ``image``) as KFP YAML; returns the path."""
    from kfp import compiler

    compiler.Compiler().compile(build_sweep_pipeline(image, parallelism=parallelism), output)
    return output
