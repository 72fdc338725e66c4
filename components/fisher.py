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
):
    """Per-batch gradients of the task loss w.r.t. every head and neuron mask."""
    from fastprune.components.runtime import run_component

    run_component("fisher", grads, metrics, {"device": device}, model=model, sample=sample)
