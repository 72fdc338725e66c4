"""Step: tune the mask values by layer-wise least squares."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from . import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def tune_masks(
    model: Input[Model],
    sample: Input[Dataset],
    grads: Input[Artifact],
    searched: Input[Artifact],
    masks: Input[Artifact],
    tuned: Output[Artifact],
    metrics: Output[Metrics],
    device: str = "auto",
    enabled: bool = True,
    mode: str = "",
    teacher: str = "",
    policy: str = "",
    ridge: str = "",
    resplit: bool = True,
):
    """Real-valued scales for the kept units (or refit output projections) so that each block reproduces the
    teacher."""
    from fastprune.components.runtime import run_component

    chosen = {"mode": mode, "teacher": teacher, "policy": policy, "ridge": ridge}
    params = {"device": device, "enabled": enabled, "resplit": resplit,
              **{k: v for k, v in chosen.items() if v}}  # "": the default
    run_component("tune", tuned, metrics, params, model=model, sample=sample, grads=grads, searched=searched,
                  masks=masks)
