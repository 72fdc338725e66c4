"""Step: tune the mask values by layer-wise least squares."""

from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from . import component


@component
def tune_masks(
    model: Input[Model],
    sample: Input[Dataset],
    grads: Input[Artifact],
    searched: Input[Artifact],
    masks: Input[Artifact],
    tuned: Output[Artifact],
    metrics: Output[Metrics],
    device: str = "auto",
    tune: bool = True,
    tuning_mode: str = "refit",
    tuning_teacher: str = "by-mode",
    tuning_ridge: str = "by-mode",
    tuning_inputs: str = "by-task",
    tuning_resplit: bool = True,
    tuning_policy: str = "stop",
    tuning_scale_bound: float = 10.0,
    tuning_samples: int = 512,
):
    """Real-valued scales for the kept units (or refit output projections) so that each block reproduces the
    teacher."""
    from fastprune.components.runtime import run_component

    run_component("tune", tuned, metrics, locals())
