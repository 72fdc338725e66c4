"""Step: search the masks within the FLOPs (or latency) budget."""

from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from . import component


@component
def search_masks(
    model: Input[Model],
    grads: Input[Artifact],
    sample: Input[Dataset],
    masks: Output[Artifact],
    metrics: Output[Metrics],
    constraint: float = 0.6,
    constraint_metric: str = "flops",
    device: str = "auto",
    latency_mode: str = "prefill",
    latency_batch_size: int = 32,
    latency_seq_len: int = 128,
    serving_dtype: str = "float32",
    allocation: str = "global",
):
    """Keep the heads and neurons of largest Fisher importance within ``constraint`` of the FLOPs (or latency,
    measured on this step's device)."""
    from fastprune.components.runtime import run_component

    run_component("search", masks, metrics, locals())
