"""Step: draw the pruning sample from the task's training data."""

from kfp.dsl import Dataset, Metrics, Output

from . import component


@component
def sample_data(
    train_data: str,
    task: str,
    sample: Output[Dataset],
    metrics: Output[Metrics],
    num_samples: int = 2048,
    seed: int = 0,
    batch_size: int = 0,
    max_length: int = 0,
    holdout: float = 0.0,
):
    """Fetch the training data (s3:// URI, local file or hub id), record its sha256, draw ``num_samples`` (for
    causal-lm: windows of ``max_length`` tokens)."""
    from fastprune.components.runtime import run_component

    run_component("sample", sample, metrics, locals())
