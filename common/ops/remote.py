"""Bounded waits for every remote call (S3, MLflow, the Kubeflow Pipelines API, the Hugging Face hub), and the
secrets kept out of what fastprune prints.

One setting bounds them all: ``FASTPRUNE_REMOTE_TIMEOUT`` (seconds, default 15), the connect and read timeout of
each request. Each remote call makes at most :data:`ATTEMPTS` attempts with a short backoff, so an unreachable or
hung service is reported within ``ATTEMPTS * timeout`` plus a few seconds of backoff (about 50 s by default, under
a minute; large uploads over a slow link may need more).
MLflow's own variables (``MLFLOW_HTTP_REQUEST_TIMEOUT``, ``..._MAX_RETRIES``, ``..._BACKOFF_FACTOR``) and the hub's
(``HF_HUB_DOWNLOAD_TIMEOUT``, ``HF_HUB_ETAG_TIMEOUT``) are derived from it unless set explicitly, and so is
``AWS_MAX_ATTEMPTS`` for boto3 clients fastprune does not make (MLflow's S3 artifact store; their timeouts stay
botocore's 60 s).
"""

from __future__ import annotations

import logging
import os
import re

from ..errors import ConfigError

TIMEOUT_ENV = "FASTPRUNE_REMOTE_TIMEOUT"
DEFAULT_TIMEOUT = 15.0
ATTEMPTS = 3
"""Attempts per remote call (the first and two retries)."""
BACKOFF = 0.5
"""Seconds before the first retry (doubled for the next)."""


def remote_timeout() -> float:
    """The connect and read timeout of one request, in seconds (``FASTPRUNE_REMOTE_TIMEOUT``, default 15)."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 3600:
        raise ConfigError(
            f"{TIMEOUT_ENV}={text!r} is not a timeout: give seconds, a number in (0, 3600] "
            f"(default {DEFAULT_TIMEOUT:g})"
        )
    return value


def bound_description() -> str:
    """How long a remote call may take at most, in words, for error messages."""
    t = remote_timeout()
    return f"{t:g} s per attempt, {ATTEMPTS} attempts ({TIMEOUT_ENV}={t:g})"


def boto_config(**options):
    """A botocore ``Config`` with the connect/read timeouts and the bounded retries."""
    from botocore.config import Config

    t = remote_timeout()
    return Config(
        connect_timeout=t, read_timeout=t, retries={"total_max_attempts": ATTEMPTS, "mode": "standard"}, **options
    )


def apply_remote_timeouts() -> None:
    """Bound MLflow's and the hub's HTTP requests by the same timeout (their own variables, when set, win). Call it
    before the first request; it is idempotent."""
    t = remote_timeout()
    whole = str(max(1, round(t)))  # MLflow and the hub read integers
    derived = {
        "MLFLOW_HTTP_REQUEST_TIMEOUT": whole,
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(ATTEMPTS - 1),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",  # an integer for MLflow
        "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
        "HF_HUB_DOWNLOAD_TIMEOUT": whole,
        "HF_HUB_ETAG_TIMEOUT": whole,
        "AWS_MAX_ATTEMPTS": str(ATTEMPTS),
    }  # boto3 clients made by others (MLflow's S3 artifact store)
    ours = os.environ.get("_FASTPRUNE_DERIVED", "")
    for name, value in derived.items():
        if name not in os.environ or name in ours.split(","):
            os.environ[name] = value
    os.environ["_FASTPRUNE_DERIVED"] = ",".join(n for n in derived if os.environ.get(n) == derived[n])


# ----- secrets --------------------------------------------------------------------------------------------------
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/@\s'\"]+)@")
SECRET_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "KFP_TOKEN",
    "KFP_COOKIES",
    "HF_TOKEN",
)
THIRD_PARTY_LOGGERS = (
    "botocore",
    "boto3",
    "s3transfer",
    "urllib3",
    "requests",
    "mlflow",
    "kfp",
    "kfp_server_api",
    "kubernetes",
    "huggingface_hub",
    "httpx",
    "httpcore",
    "filelock",
    "git",
    "alembic",
    "sqlalchemy",
    "datasets",
    "fsspec",
)


def redact(text: str) -> str:
    """``text`` with the user information of every URL (``https://user:password@host``) and the values of the
    credential variables in the environment replaced by ``***``."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}***@", str(text))
    for name in SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


class RedactingFilter(logging.Filter):
    """Rewrites every record's message with :func:`redact` (installed on the handlers of the root logger)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def secure_logging() -> None:
    """Third-party loggers stay at INFO or above even with ``-v`` (botocore's debug output carries the access key
    id and the session token), and every handler of the root logger redacts secrets and URL passwords."""
    for name in THIRD_PARTY_LOGGERS:
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.INFO:
            logger.setLevel(logging.INFO)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
