"""Step: register the pruned model in MLflow, moving the alias only when the accuracy gate passes."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from . import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
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
    model_name: str = "fastprune-pruned",
    max_drop: float = 1.0,
    alias: str = "pruned-candidate",
    tracking_uri: str = "",
    experiment: str = "fastprune",
    pipeline_run: str = "",
):
    """A new model version with the run's params, metrics, masks and report (Markdown, and an HTML page with the
    kept heads per layer); tags link the source model, the data checksum and the pipeline run. The alias moves to
    it only when the metric drop is within max_drop."""
    from fastprune.components.runtime import run_component

    params = {"model_name": model_name, "max_drop": max_drop, "alias": alias, "tracking_uri": tracking_uri,
              "experiment": experiment, "pipeline_run": pipeline_run}
    run_component("register", registration, metrics, params, report, report_page, model=model, sample=sample,
                  grads=grads, searched=searched, rearranged=rearranged, tuned=tuned, pruned=pruned,
                  evaluation=evaluation, profile=profile)
