"""Step: rearrange the masks with the block-diagonal Fisher."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Metrics, Output

from . import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def rearrange_masks(
    grads: Input[Artifact],
    masks: Input[Artifact],
    rearranged: Output[Artifact],
    metrics: Output[Metrics],
    enabled: bool = True,
):
    """Re-choose which units each layer prunes (per-layer counts unchanged)."""
    from fastprune.components.runtime import run_component

    run_component("rearrange", rearranged, metrics, {"enabled": enabled}, grads=grads, masks=masks)
