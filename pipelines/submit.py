"""Submitting to a Kubeflow Pipelines cluster: upload the compiled pipeline as a new pipeline version (once per
distinct spec), then start a run or create a recurring run from a cron expression.

Host, namespace and credentials come from arguments or the environment (``KFP_HOST``, ``KFP_NAMESPACE``,
``KFP_TOKEN``, ``KFP_TOKEN_FILE``, ``KFP_COOKIES``, ``KFP_SSL_CA_CERT``, ``KFP_UI_HOST``); tokens and cookies are
kept in ``SecretStr`` and never printed or logged.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from ..common.errors import ConfigError, FastpruneError
from ..common.ops.remote import redact
from .params import PipelineParams, PruneRunParams, SweepRunParams, params_model, validate_params

log = logging.getLogger(__name__)

PipelineKind = Literal["prune", "sweep"]


class SubmitError(FastpruneError):
    """The Kubeflow Pipelines server refused a request or could not be reached."""


# ----- cron --------------------------------------------------------------------------------------------------
_FIELDS = (  # name, low, high, names
    ("second", 0, 59, None),
    ("minute", 0, 59, None),
    ("hour", 0, 23, None),
    ("day-of-month", 1, 31, None),
    ("month", 1, 12, ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")),
    ("day-of-week", 0, 6, ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")),
)
_MACROS = {
    "@yearly": "0 0 0 1 1 *",
    "@annually": "0 0 0 1 1 *",
    "@monthly": "0 0 0 1 * *",
    "@weekly": "0 0 0 * * 0",
    "@daily": "0 0 0 * * *",
    "@midnight": "0 0 0 * * *",
    "@hourly": "0 0 * * * *",
}
_CRON_HELP = (
    "a cron expression has 5 fields 'minute hour day-of-month month day-of-week' (e.g. '0 3 * * *': "
    "every day at 03:00), or 6 with seconds first as Kubeflow writes them, or one of " + ", ".join(_MACROS)
)


def kfp_cron(expression: str) -> str:
    """The 6-field cron expression (seconds first) Kubeflow Pipelines expects, from the usual 5-field form (a
    6-field one is checked and kept, a macro like ``@daily`` expanded). A bad expression raises a
    :class:`ConfigError` naming the field, its value and the valid range."""
    text = " ".join(expression.split())
    if text.startswith("@"):
        if text.lower() not in _MACROS:
            raise ConfigError(f"bad cron expression {expression!r}: unknown macro; {_CRON_HELP}")
        return _MACROS[text.lower()]
    fields = text.split(" ") if text else []
    if len(fields) == 5:
        fields = ["0", *fields]
    elif len(fields) != 6:
        raise ConfigError(f"bad cron expression {expression!r}: {len(fields)} fields; {_CRON_HELP}")
    for value, spec in zip(fields, _FIELDS, strict=True):
        _check_field(expression, value, *spec)
    return " ".join(fields)


def _check_field(expression: str, value: str, name: str, low: int, high: int, names: tuple[str, ...] | None) -> None:
    def bad(why: str) -> ConfigError:
        valid = f"{low}-{high}" + (f" or {names[0]}-{names[-1]}" if names else "")
        return ConfigError(
            f"bad cron expression {expression!r}: {name} field {value!r} {why} (valid: {valid}, "
            f"'*', lists 'a,b', ranges 'a-b' and steps '*/n' or 'a-b/n')"
        )

    def number(token: str) -> int:
        if names and token.upper() in names:
            return names.index(token.upper()) + low
        if not token.isdigit():
            raise bad(f"has {token!r}, which is not a number" + (" or a name" if names else ""))
        n = int(token)
        if not low <= n <= high:
            raise bad(f"is out of range: {n} is not within {low}-{high}")
        return n

    for item in value.split(","):
        base, _, step = item.partition("/")
        if "/" in item and not (step.isdigit() and int(step) > 0):
            raise bad(f"has the step {step!r}, which must be a positive number")
        if base == "*" or (base == "?" and name in ("day-of-month", "day-of-week")):
            continue
        first, dash, last = base.partition("-")
        if not first:
            raise bad("has an empty value")
        start = number(first)
        if dash and start > number(last):
            raise bad(f"has the range {base!r}, whose start is after its end")


# ----- the cluster -----------------------------------------------------------------------------------------------
def _env(*names: str) -> str | None:
    return next((os.environ[n] for n in names if os.environ.get(n)), None)


class ClusterConfig(BaseModel):
    """Where the Kubeflow Pipelines API is and how to authenticate; each field falls back to the environment."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(description="the KFP API endpoint, e.g. https://kubeflow.example.com/pipeline")
    namespace: str | None = Field(None, description="the user namespace of a multi-user installation")
    ui_host: str | None = Field(None, description="the UI's address for links (default: the host)")
    token: SecretStr | None = Field(None, description="a bearer token (from KFP_TOKEN or a token file)")
    cookies: SecretStr | None = Field(None, description="session cookies, e.g. 'authservice_session=...'")
    ssl_ca_cert: str | None = None
    verify_ssl: bool | None = None

    @classmethod
    def from_env(
        cls,
        host: str | None = None,
        namespace: str | None = None,
        ui_host: str | None = None,
        token_file: str | None = None,
        ssl_ca_cert: str | None = None,
        verify_ssl: bool | None = None,
    ) -> ClusterConfig:
        """Arguments first, then ``KFP_HOST`` (or ``KF_PIPELINES_ENDPOINT``), ``KFP_NAMESPACE``, ``KFP_UI_HOST``,
        ``KFP_TOKEN`` / ``KFP_TOKEN_FILE``, ``KFP_COOKIES``, ``KFP_SSL_CA_CERT``."""
        host = host or _env("KFP_HOST", "KF_PIPELINES_ENDPOINT")
        if not host:
            raise ConfigError(
                "no Kubeflow Pipelines host: pass --host URL or set KFP_HOST "
                "(e.g. https://kubeflow.example.com/pipeline)"
            )
        if not host.startswith(("http://", "https://")):
            raise ConfigError(f"the Kubeflow Pipelines host must be an http(s) URL, got {redact(host)!r}")
        token = _env("KFP_TOKEN")
        token_file = token_file or _env("KFP_TOKEN_FILE")
        if token_file:
            path = Path(token_file).expanduser()
            if not path.is_file():
                raise ConfigError(f"token file {str(path)!r} does not exist")
            token = path.read_text().strip()
        return cls(
            host=host.rstrip("/"),
            namespace=namespace or _env("KFP_NAMESPACE"),
            ui_host=ui_host or _env("KFP_UI_HOST"),
            token=token,
            cookies=_env("KFP_COOKIES"),
            ssl_ca_cert=ssl_ca_cert or _env("KFP_SSL_CA_CERT"),
            verify_ssl=verify_ssl,
        )

    def client(self):
        """A ``kfp.Client`` for this cluster."""
        from .kfp_client import new_client

        kwargs: dict[str, Any] = {
            "host": self.host,
            "ui_host": self.ui_host,
            "ssl_ca_cert": self.ssl_ca_cert,
            "verify_ssl": self.verify_ssl,
        }
        if self.namespace:
            kwargs["namespace"] = self.namespace
        if self.token is not None:
            kwargs["existing_token"] = self.token.get_secret_value()
        if self.cookies is not None:
            kwargs["cookies"] = self.cookies.get_secret_value()
        with _quiet(f"connecting to {self.host}"):
            return new_client(**{k: v for k, v in kwargs.items() if v is not None})

    def link(self, kind: Literal["run", "recurring run", "pipeline version"], *ids: str) -> str:
        """The UI page of a run, recurring run or pipeline version."""
        base = redact(self.ui_host or self.host).rstrip("/")
        path = {
            "run": "runs/details/{}",
            "recurring run": "recurringrun/details/{}",
            "pipeline version": "pipelines/details/{}/version/{}",
        }[kind]
        return f"{base}/#/{path.format(*ids)}"


@contextlib.contextmanager
def _quiet(action: str):
    """kfp's client prints links and warnings itself: keep them out of our output (at debug level instead),
    and turn its errors into one that says what we were doing (its messages carry no credentials)."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    except FastpruneError:
        raise
    except Exception as e:
        raise SubmitError(redact(f"Kubeflow Pipelines refused {action}: {_reason(e)}")) from e
    finally:
        if buffer.getvalue().strip():
            log.debug("kfp: %s", buffer.getvalue().strip())


def _reason(error: Exception) -> str:
    """The server's message (``ApiException`` carries HTTP status, reason and a JSON body), else the error."""
    status, body = getattr(error, "status", None), getattr(error, "body", None)
    message = None
    if body:
        try:
            message = json.loads(body).get("message")
        except (ValueError, AttributeError):
            message = str(body)[:300]
    if status == 401:
        from .kfp_client import AUTH_HINT

        return f"HTTP 401: authentication failed: {AUTH_HINT}"
    if status:
        return f"HTTP {status} {getattr(error, 'reason', '') or ''}".strip() + (f": {message}" if message else "")
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


# ----- pipelines ------------------------------------------------------------------------------------------------
@functools.cache
def pipeline_factory(kind: PipelineKind) -> tuple[Callable[..., Any], type[PipelineParams], str]:
    """The pipeline builder, the model of its parameters (one field per pipeline input) and its name, per kind."""
    if kind == "prune":
        from .prune_pipeline import PIPELINE_NAME, build_pipeline

        base: type[PruneRunParams] | type[SweepRunParams]
        build, base, name = build_pipeline, PruneRunParams, PIPELINE_NAME
    elif kind == "sweep":
        from .sweep_pipeline import SWEEP_PIPELINE_NAME, build_sweep_pipeline

        build, base, name = build_sweep_pipeline, SweepRunParams, SWEEP_PIPELINE_NAME
    else:
        raise ConfigError(f"unknown pipeline {kind!r}; pipelines: prune, sweep")
    inputs = {name: spec.type for name, spec in build().component_spec.inputs.items()}
    return build, params_model(base, inputs), name


def compile_package(kind: PipelineKind, output: str | Path, image: str | None = None) -> Path:
    """Compile the pipeline of ``kind`` (every step running ``image``) to a YAML package."""
    from kfp import compiler

    build, _, _ = pipeline_factory(kind)
    compiler.Compiler().compile(build(image) if image else build(), str(output))
    return Path(output)


def spec_version_name(package: Path) -> str:
    """A pipeline version name that identifies the compiled spec: ``<fastprune version>-<sha256 prefix>``, so
    submitting an unchanged pipeline reuses its version and a changed one uploads a new one."""
    from .. import __version__

    return f"v{__version__}-{hashlib.sha256(package.read_bytes()).hexdigest()[:12]}"


@dataclass(frozen=True)
class PipelineVersion:
    pipeline_id: str
    version_id: str
    name: str
    uploaded: bool  # False: an existing version with the same spec was reused
    pipeline_name: str = ""


def upload_version(
    client,
    package: Path,
    pipeline_name: str,
    version_name: str | None = None,
    namespace: str | None = None,
    description: str | None = None,
) -> PipelineVersion:
    """Upload ``package`` as a new version of ``pipeline_name`` (creating the pipeline if needed); a version of
    that name that exists already is reused."""
    version_name = version_name or spec_version_name(package)
    with _quiet(f"looking up pipeline {pipeline_name!r}"):
        pipeline_id = client.get_pipeline_id(pipeline_name)
    if pipeline_id is None:
        with _quiet(f"creating pipeline {pipeline_name!r}"):
            pipeline_id = client.upload_pipeline(
                str(package), pipeline_name=pipeline_name, description=description, namespace=namespace
            ).pipeline_id
        log.info("created pipeline %s (%s)", pipeline_name, pipeline_id)
    else:
        existing = _find_version(client, pipeline_id, version_name)
        if existing is not None:
            log.info("pipeline %s version %s exists: reusing it", pipeline_name, version_name)
            return PipelineVersion(pipeline_id, existing, version_name, False, pipeline_name)
    with _quiet(f"uploading version {version_name!r} of pipeline {pipeline_name!r}"):
        version = client.upload_pipeline_version(
            str(package), version_name, pipeline_id=pipeline_id, description=description
        )
    log.info("uploaded pipeline %s version %s", pipeline_name, version_name)
    return PipelineVersion(pipeline_id, version.pipeline_version_id, version_name, True, pipeline_name)


def _find_version(client, pipeline_id: str, version_name: str) -> str | None:
    query = json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": version_name}]})
    with _quiet(f"listing the versions of pipeline {pipeline_id}"):
        listed = client.list_pipeline_versions(pipeline_id, page_size=1, filter=query)
    versions = getattr(listed, "pipeline_versions", None) or []
    return versions[0].pipeline_version_id if versions else None


# ----- runs and recurring runs -------------------------------------------------------------------------------------
class SubmitOptions(BaseModel):
    """How a run (or recurring run) is created, beyond its parameters."""

    model_config = ConfigDict(extra="forbid")

    pipeline: PipelineKind = "prune"
    pipeline_name: str | None = Field(None, description="the pipeline's name in KFP (default: its own name)")
    version_name: str | None = Field(None, description="default: <fastprune version>-<spec sha256 prefix>")
    experiment: str = "fastprune"
    run_name: str | None = None
    image: str | None = Field(None, description="the image every step runs (default: the project image)")
    schedule: str | None = Field(None, description="cron expression: a recurring run instead of one run")
    max_concurrency: int = Field(1, gt=0, description="recurring runs: how many may run at once")
    catchup: bool = Field(False, description="recurring runs: backfill the intervals missed while paused")
    enable_caching: bool | None = Field(None, description="override the steps' compiled caching settings")
    service_account: str | None = None


@dataclass(frozen=True)
class Submitted:
    kind: Literal["run", "recurring run"]
    id: str
    name: str
    url: str
    pipeline: PipelineVersion
    arguments: dict
    cron: str | None = None


@dataclass(frozen=True)
class Target:
    """A pipeline version uploaded and an experiment found on a cluster: where runs are created."""

    cluster: ClusterConfig
    client: Any
    options: SubmitOptions
    pipeline: PipelineVersion
    experiment_id: str
    params_model: type[PipelineParams]

    def start(self, params: PipelineParams | dict, run_name: str | None = None) -> Submitted:
        """A run of the pipeline version with ``params``, or a recurring run when the options have a schedule."""
        o, arguments = self.options, _checked(self.params_model, params).arguments()
        cron = kfp_cron(o.schedule) if o.schedule else None
        name = run_name or o.run_name or _default_run_name(self.pipeline.pipeline_name, arguments, cron is not None)
        ids = {"pipeline_id": self.pipeline.pipeline_id, "version_id": self.pipeline.version_id}
        if cron is None:
            with _quiet(f"starting run {name!r}"):
                run = self.client.run_pipeline(
                    self.experiment_id,
                    name,
                    params=arguments,
                    **ids,
                    enable_caching=o.enable_caching,
                    service_account=o.service_account,
                )
            return Submitted("run", run.run_id, name, self.cluster.link("run", run.run_id), self.pipeline, arguments)
        with _quiet(f"creating recurring run {name!r}"):
            job = self.client.create_recurring_run(
                self.experiment_id,
                name,
                cron_expression=cron,
                max_concurrency=o.max_concurrency,
                no_catchup=not o.catchup,
                params=arguments,
                **ids,
                enable_caching=o.enable_caching,
                service_account=o.service_account,
            )
        return Submitted(
            "recurring run",
            job.recurring_run_id,
            name,
            self.cluster.link("recurring run", job.recurring_run_id),
            self.pipeline,
            arguments,
            cron,
        )


def prepare(cluster: ClusterConfig, options: SubmitOptions | None = None, client=None) -> Target:
    """Compile the pipeline, upload it as a new version when its spec changed, and find (or create) the
    experiment. A bad cron expression fails first, before anything is sent."""
    options = options or SubmitOptions()
    if options.schedule:
        kfp_cron(options.schedule)
    _, model, default_name = pipeline_factory(options.pipeline)
    client = client or cluster.client()
    name = options.pipeline_name or default_name
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_package(options.pipeline, Path(tmp) / f"{name}.yaml", options.image)
        version = upload_version(
            client,
            package,
            name,
            options.version_name,
            cluster.namespace,
            description=f"fastprune {options.pipeline} pipeline",
        )
    with _quiet(f"creating experiment {options.experiment!r}"):
        experiment = client.create_experiment(options.experiment, namespace=cluster.namespace)
    return Target(cluster, client, options, version, experiment.experiment_id, model)


def submit(
    cluster: ClusterConfig, params: PipelineParams | dict, options: SubmitOptions | None = None, client=None
) -> Submitted:
    """Upload the pipeline (a new version when its spec changed) and start a run, or create a recurring run when
    ``options.schedule`` is set. Returns the run's id and UI link. Bad parameters fail before anything is sent."""
    options = options or SubmitOptions()
    params = _checked(pipeline_factory(options.pipeline)[1], params)
    return prepare(cluster, options, client).start(params)


def _checked(model: type[PipelineParams], params: PipelineParams | dict) -> PipelineParams:
    if isinstance(params, model):
        return params
    values = params.arguments() if isinstance(params, PipelineParams) else params
    return validate_params(model, values)


def _default_run_name(pipeline: str, arguments: dict, recurring: bool) -> str:
    model = str(arguments.get("model", "default-model")).rstrip("/").split("/")[-1]
    model = re.sub(r"[^A-Za-z0-9._@-]+", "-", model)[:40] or "model"
    return f"{pipeline}-{model}" + ("-scheduled" if recurring else "")


# ----- a run's state, for the CI trigger -----------------------------------------------------------------------------
def run_state(client, run_id: str) -> str:
    """The run's state as KFP reports it: PENDING, RUNNING, SUCCEEDED, FAILED, CANCELED, ... (the trigger's
    :data:`~fastprune.common.ops.trigger.RUNNING_STATES` and ``FAILED_STATES`` sort them)."""
    with _quiet(f"reading run {run_id}"):
        state = client.get_run(run_id).state
    return str(getattr(state, "value", state) or "RUNTIME_STATE_UNSPECIFIED").upper()
