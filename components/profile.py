"""Step: measure the latency of the original and the pruned model on this step's device."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Markdown, Metrics, Model, Output

from . import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def profile_latency(
    model: Input[Model],
    pruned: Input[Model],
    profile: Output[Artifact],
    metrics: Output[Metrics],
    report: Output[Markdown],
    device: str = "auto",
    batch_size: int = 32,
    seq_len: int = 128,
    repeats: int = 20,
    dtype: str = "float32",
):
    """End-to-end latency of both models on the same inputs, timed interleaved; speedup of the pruned one."""
    from fastprune.components.runtime import run_component

    params = {"device": device, "batch_size": batch_size, "seq_len": seq_len, "repeats": repeats, "dtype": dtype}
    run_component("profile", profile, metrics, params, report, model=model, pruned=pruned)
