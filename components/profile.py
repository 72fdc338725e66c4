"""Step: measure the latency of the original and the pruned model on this step's device."""

from kfp.dsl import Artifact, Input, Markdown, Metrics, Model, Output

from . import component


@component
def profile_latency(
    model: Input[Model],
    pruned: Input[Model],
    profile: Output[Artifact],
    metrics: Output[Metrics],
    report: Output[Markdown],
    device: str = "auto",
    profile_batch_size: int = 32,
    profile_seq_len: int = 128,
    serving_dtype: str = "float32",
    repeats: int = 20,
    warmup: int = 5,
):
    """End-to-end latency of both models on the same inputs, timed interleaved; speedup of the pruned one (a causal
    LM: for a prefill and for one decoding step over a key/value cache)."""
    from fastprune.components.runtime import run_component

    run_component("profile", profile, metrics, locals(), report)
