"""How the pipelines' steps reach the outside: the S3 secret, retries and caching for steps that do I/O beyond KFP's
own artifact passing, and accelerator requests for the compute steps. Shared by both pipelines."""

from kfp import dsl, kubernetes

S3_SECRET_KEYS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_DEFAULT_REGION",
    "MLFLOW_S3_ENDPOINT_URL",
)
"""Keys read from the secret (each optional) into the environment variables of the same name."""


def external_io(task: dsl.PipelineTask, secret: str, retries: int) -> None:
    """Retries (30 s backoff), no caching, and the S3/MLflow credentials from the Kubernetes secret ``secret``."""
    if retries:
        task.set_retry(num_retries=retries, backoff_duration="30s", backoff_factor=2.0)
    task.set_caching_options(enable_caching=False)
    kubernetes.use_secret_as_env(
        task, secret_name=secret, secret_key_to_env={k: k for k in S3_SECRET_KEYS}, optional=True
    )


def accelerated(task: dsl.PipelineTask, accelerator_type: str, gpu_limit: int) -> None:
    """Request ``gpu_limit`` accelerators of ``accelerator_type`` (0: CPU only)."""
    task.set_accelerator_type(accelerator_type).set_accelerator_limit(gpu_limit)
