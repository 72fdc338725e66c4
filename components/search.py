"""Step: search the masks within the FLOPs (or latency) budget."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Metrics, Model, Output

from . import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def search_masks(
    model: Input[Model],
    grads: Input[Artifact],
    masks: Output[Artifact],
    metrics: Output[Metrics],
    constraint: float = 0.6,
    metric: str = "flops",
    device: str = "auto",
    latency_dtype: str = "float32",
    allocation: str = "global",
):
    """Keep the heads and neurons of largest Fisher importance within ``constraint`` of the FLOPs (or latency,
    measured on this step's device)."""
    from fastprune.components.runtime import run_component

    params = {"constraint": constraint, "metric": metric, "device": device, "latency_dtype": latency_dtype,
              "allocation": allocation}
    run_component("search", masks, metrics, params, model=model, grads=grads)
