"""Step: mask gradients (the Fisher information) over the pruning sample."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from . import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def compute_fisher(
    model: Input[Model],
    sample: Input[Dataset],
    grads: Output[Artifact],
    metrics: Output[Metrics],
    device: str = "auto",
    labels: str = "",
    steps: int = 1,
    constraint: float = 0.0,
    metric: str = "flops",
):
    """Per-example gradients of the task loss w.r.t. every head and neuron mask (``steps > 1``: iterative Fisher
    toward ``constraint``, which must be the search's)."""
    from fastprune.components.runtime import run_component

    params = {"device": device, "steps": steps, "constraint": constraint or None, "metric": metric,
              **({"labels": labels} if labels else {})}  # "": the library's default
    run_component("fisher", grads, metrics, params, model=model, sample=sample)
