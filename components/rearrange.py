"""Step: rearrange the masks with the block-diagonal Fisher."""

from kfp.dsl import Artifact, Input, Metrics, Output

from . import component


@component
def rearrange_masks(
    grads: Input[Artifact],
    masks: Input[Artifact],
    rearranged: Output[Artifact],
    metrics: Output[Metrics],
    rearrange: bool = True,
    rearrange_shrink: str = "by-task",
):
    """Re-choose which units each layer prunes (per-layer counts unchanged)."""
    from fastprune.components.runtime import run_component

    run_component("rearrange", rearranged, metrics, locals())
