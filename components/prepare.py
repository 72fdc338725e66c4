"""Step: fetch the fine-tuned model (s3:// URI, local folder or hub id) into the pipeline."""

from kfp import dsl
from kfp.dsl import Metrics, Model, Output

from . import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def fetch_model(
    source: str,
    task: str,
    model: Output[Model],
    metrics: Output[Metrics],
    tracking_uri: str = "",
    trust_remote_code: bool = False,
    dev_data: str = "",
    allow_pickle: bool = False,
):
    """Fetch the model, check it is fine-tuned for the task, save it as a checked folder; also check that the
    MLflow tracking server answers and the dev data is readable for the task, so bad settings fail before any
    compute."""
    from fastprune.components.runtime import run_component

    params = {"source": source, "task": task, "tracking_uri": tracking_uri, "trust_remote_code": trust_remote_code,
              "dev_file": dev_data, "allow_pickle": allow_pickle}
    run_component("prepare", model, metrics, params)
