"""Step: evaluate the original, masked and pruned models on the dev set."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Metrics, Model, Output

from . import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
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
):
    """The task metric before pruning, after each stage (masked) and of the exported model."""
    from fastprune.components.runtime import run_component

    run_component("evaluate", evaluation, metrics, {"dev_file": dev_data, "device": device}, model=model,
                  pruned=pruned, searched=searched, rearranged=rearranged, tuned=tuned)
