"""Step: evaluate the original, masked and pruned models on the dev set."""

from kfp.dsl import Artifact, Input, Metrics, Model, Output

from . import component


@component
def evaluate_models(
    model: Input[Model],
    pruned: Input[Model],
    searched: Input[Artifact],
    rearranged: Input[Artifact],
    tuned: Input[Artifact],
    dev_data: str,
    evaluation: Output[Artifact],
    metrics: Output[Metrics],
    device: str = "auto",
    eval_batch_size: int = 64,
):
    """The task metric before pruning, after each stage (masked) and of the exported model."""
    from fastprune.components.runtime import run_component

    run_component("evaluate", evaluation, metrics, locals())
