"""Step: fetch the fine-tuned model (s3:// URI, models:/ URI, local folder or hub id) into the pipeline."""

from kfp.dsl import Metrics, Model, Output

from . import component


@component
def fetch_model(
    model: str,
    task: str,
    fetched: Output[Model],
    metrics: Output[Metrics],
    mlflow_uri: str = "",
    trust_remote_code: bool = False,
    dev_data: str = "",
    allow_pickle: bool = False,
):
    """Fetch the model, check it is fine-tuned for the task, save it as a checked folder; also check that the
    MLflow tracking server answers and the dev data is readable for the task (each when given), so bad settings
    fail before any compute."""
    from fastprune.components.runtime import run_component

    run_component("prepare", fetched, metrics, locals())
