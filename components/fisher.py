"""Step: mask gradients (the Fisher information) over the pruning sample."""

from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from . import component


@component
def compute_fisher(
    model: Input[Model],
    sample: Input[Dataset],
    grads: Output[Artifact],
    metrics: Output[Metrics],
    device: str = "auto",
    fisher_labels: str = "data",
    fisher_rows: str = "by-task",
    fisher_max_rows: int = 0,
    fisher_samples: int = 0,
    calib_generate: int = 0,
    fisher_steps: int = 1,
    constraint: float = 0.6,
    constraint_metric: str = "flops",
):
    """Per-example gradients of the task loss w.r.t. every head and neuron mask (``fisher_steps > 1``: iterative
    Fisher toward ``constraint``, which must be the search's)."""
    from fastprune.components.runtime import run_component

    run_component("fisher", grads, metrics, locals())
