"""Step: register the pruned model in MLflow, moving the alias only when the accuracy gate passes."""

from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from . import component


@component
def register_model(
    model: Input[Model],
    sample: Input[Dataset],
    grads: Input[Artifact],
    searched: Input[Artifact],
    rearranged: Input[Artifact],
    tuned: Input[Artifact],
    pruned: Input[Model],
    evaluation: Input[Artifact],
    profile: Input[Artifact],
    registration: Output[Artifact],
    metrics: Output[Metrics],
    report: Output[Markdown],
    report_page: Output[HTML],
    registered_model_name: str = "fastprune-pruned",
    max_metric_drop: float = 1.0,
    alias: str = "pruned-candidate",
    mlflow_uri: str = "",
    mlflow_experiment: str = "fastprune",
    pipeline_run: str = "",
):
    """A new model version with the run's params, metrics, masks and report (Markdown, and an HTML page with the
    kept heads per layer); tags link the source model, the data checksum and the pipeline run. The alias moves to
    it only when the metric drop is within max_metric_drop."""
    from fastprune.components.runtime import run_component

    run_component("register", registration, metrics, locals(), report, report_page)
