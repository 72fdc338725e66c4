"""Remote services that refuse, hang or listen nowhere are reported early, within the bound set by
FASTPRUNE_REMOTE_TIMEOUT, in one line that says what and where; credentials never show, at any verbosity.

Real servers where they run here: SeaweedFS (S3), MLflow with its basic-auth app. A socket that accepts and never
answers stands for a hung service; a tiny HTTP server answering 401 stands for a Kubeflow API that refuses the token
(the Kubeflow API server is the one thing that cannot run here)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import fastprune.pipelines.launchers  # noqa: F401  (imported here, so the timings below do not count the imports)
import mlflow  # noqa: F401
import pytest
import yaml
from fastprune.common.errors import StorageError
from fastprune.common.ops.registry import RegistryError, check_tracking_uri
from fastprune.common.ops.remote import redact
from fastprune.common.ops.storage import fetch
from oneline import one_line_error
from servers import closed_port, mlflow_server, seaweedfs
from stubs import hung_server, status_server

from fastprune.cli import main

ADMIN_PASSWORD = "admin-pass-4711-secret"
BOUND_S = 1  # FASTPRUNE_REMOTE_TIMEOUT in these tests: 3 attempts of 1 s
SLACK_S = 15  # backoff and a busy machine; unbounded, these calls took 9 minutes


@pytest.fixture(autouse=True)
def _short_timeouts(monkeypatch):
    monkeypatch.setenv("FASTPRUNE_REMOTE_TIMEOUT", str(BOUND_S))
    for name in (
        "MLFLOW_HTTP_REQUEST_TIMEOUT",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
        "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER",
        "_FASTPRUNE_DERIVED",
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
        "MLFLOW_TRACKING_TOKEN",
        "MLFLOW_TRACKING_URI",
        "KFP_HOST",
        "KFP_TOKEN",
        "KFP_NAMESPACE",
        "KFP_COOKIES",
    ):
        monkeypatch.delenv(name, raising=False)
    root = logging.getLogger()
    before = list(root.handlers)
    yield
    for handler in root.handlers[:]:
        if handler not in before:
            root.removeHandler(handler)
    for name in os.environ.pop("_FASTPRUNE_DERIVED", "").split(","):  # the 1 s bounds must not outlive the test
        os.environ.pop(name, None)


@pytest.fixture
def params(tmp_path) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "task": "sst2",
                "train_data": "s3://data/train.tsv",
                "dev_data": "s3://data/dev.tsv",
                "constraint": 0.5,
                "gpu_limit": 0,
            }
        )
    )
    return path


# ----- MLflow: credentials checked up front ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def auth_mlflow(tmp_path_factory):
    """MLflow with its basic-auth app (user admin), or, where Flask-WTF is missing, a server answering 401."""
    try:
        import flask_wtf  # noqa: F401
    except ImportError:
        with status_server(401, b"You are not authenticated.") as uri:
            yield uri, False
        return
    with mlflow_server(tmp_path_factory.mktemp("mlflow-auth"), admin_password=ADMIN_PASSWORD) as uri:
        yield uri, True


@pytest.mark.server
def test_the_mlflow_preflight_checks_the_credentials(auth_mlflow, monkeypatch, tmp_path, capsys, params):
    uri, real = auth_mlflow
    monkeypatch.setenv("FASTPRUNE_REMOTE_TIMEOUT", "60")  # a real server on a busy machine: not a timeout test
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong-password-0815")
    with pytest.raises(RegistryError, match="refused the credentials .*authentication failed.*MLFLOW_TRACKING_USER"):
        check_tracking_uri(uri)

    # the fetch step fails before it loads anything
    assert (
        main(
            [
                "step",
                "prepare",
                "--model",
                str(tmp_path / "nowhere"),
                "--task",
                "sst2",
                "--tracking-uri",
                uri,
                "--out",
                str(tmp_path / "model"),
            ]
        )
        == 2
    )
    line = one_line_error(capsys, "authentication failed")
    assert "wrong-password-0815" not in line

    # the trigger too, instead of a traceback
    assert (
        main(
            [
                "trigger",
                "--registered-model",
                "bert",
                "--local",
                "--dry-run",
                "--tracking-uri",
                uri,
                "--params",
                str(params),
            ]
        )
        == 2
    )
    one_line_error(capsys, f"MLflow at {uri} refused the credentials", "authentication failed")

    if real:  # the right password passes
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)
        check_tracking_uri(uri)
        password_in_uri = uri.replace("http://", f"http://admin:{ADMIN_PASSWORD}@")
        monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
        monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
        check_tracking_uri(password_in_uri)
        wrong = uri.replace("http://", "http://admin:not-it-0815@")
        with pytest.raises(RegistryError) as info:
            check_tracking_uri(wrong)
        assert "not-it-0815" not in str(info.value) and "authentication failed" in str(info.value)


# ----- bounded waits ----------------------------------------------------------------------------------------------
def _trigger(uri: str, params: Path) -> list[str]:
    return [*"trigger --registered-model bert --local --dry-run --tracking-uri".split(), uri, "--params", str(params)]


def _submit(host: str, params: Path) -> list[str]:
    return ["submit", "--host", host, "--params", str(params)]


def test_the_trigger_reports_a_closed_mlflow_port_at_once(params, capsys):
    uri = f"http://127.0.0.1:{closed_port()}"
    start = time.monotonic()
    assert main(_trigger(uri, params)) == 2
    assert time.monotonic() - start < SLACK_S
    one_line_error(capsys, f"cannot reach the MLflow tracking server at {uri}")


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (_trigger, ("the MLflow tracking server at {uri} did not answer within {bound} s", "FASTPRUNE_REMOTE_TIMEOUT")),
        (_submit, ("Kubeflow Pipelines at {uri} did not answer", "timed out after")),
    ],
    ids=["mlflow", "kubeflow"],
)
def test_a_hung_service_is_reported_within_the_bound(params, capsys, command, expected):
    with hung_server() as uri:
        start = time.monotonic()
        assert main(command(uri, params)) == 2
        elapsed = time.monotonic() - start
    assert elapsed < 3 * BOUND_S + SLACK_S, elapsed
    one_line_error(capsys, *(text.format(uri=uri, bound=BOUND_S) for text in expected))


def test_an_s3_fetch_from_a_hung_endpoint_fails_within_the_bound(monkeypatch, tmp_path, capsys):
    with hung_server() as endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "any-key-id")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "any-secret-value")
        monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
        start = time.monotonic()
        with pytest.raises(StorageError) as info:
            fetch("s3://bucket/data/train.tsv", tmp_path / "cache")
        elapsed = time.monotonic() - start
        assert (
            main(
                [
                    "step",
                    "sample",
                    "--train-data",
                    "s3://bucket/data/train.tsv",
                    "--task",
                    "sst2",
                    "--out",
                    str(tmp_path / "sample"),
                ]
            )
            == 2
        )
    assert elapsed < 3 * BOUND_S + SLACK_S, elapsed
    message = str(info.value)
    assert f"the S3 endpoint {endpoint} did not answer while listing s3://bucket/data/" in message
    assert f"timed out after {BOUND_S} s per attempt, 3 attempts (FASTPRUNE_REMOTE_TIMEOUT={BOUND_S})" in message
    one_line_error(capsys, "did not answer", "timed out after")


def test_one_setting_bounds_every_client(monkeypatch):
    from fastprune.common.ops.remote import ATTEMPTS, DEFAULT_TIMEOUT, apply_remote_timeouts
    from fastprune.common.ops.storage import s3_client

    assert ATTEMPTS * DEFAULT_TIMEOUT + 5 < 60  # a hung service is reported within a minute by default
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "any-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "any-secret-value")
    config = s3_client().meta.config
    assert (config.connect_timeout, config.read_timeout, config.retries["total_max_attempts"]) == (BOUND_S, BOUND_S, 3)
    apply_remote_timeouts()
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == str(BOUND_S)
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "300")  # the user's own MLflow setting wins
    monkeypatch.setenv("_FASTPRUNE_DERIVED", "")
    apply_remote_timeouts()
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "300"


def test_a_bad_timeout_setting_is_named(monkeypatch, capsys, params):
    monkeypatch.setenv("FASTPRUNE_REMOTE_TIMEOUT", "soon")
    assert main(_trigger("http://127.0.0.1:1", params)) == 2
    one_line_error(capsys, "FASTPRUNE_REMOTE_TIMEOUT='soon' is not a timeout")


# ----- Kubeflow: an authentication failure is called one -----------------------------------------------------------
def test_a_kubeflow_401_is_an_authentication_failure(params, capsys):
    with status_server(401) as host:
        start = time.monotonic()
        assert main(_submit(host, params)) == 2
        elapsed = time.monotonic() - start
    line = one_line_error(
        capsys, f"Kubeflow Pipelines at {host} refused the credentials", "authentication failed", "KFP_TOKEN"
    )
    assert "healthz endpoint after" not in line and elapsed < SLACK_S


# ----- no secrets -------------------------------------------------------------------------------------------------
def test_passwords_in_urls_are_redacted():
    assert redact("see https://user:hunter2@kfp.example.com/pipeline and s3://k:v@b") == (
        "see https://***@kfp.example.com/pipeline and s3://***@b"
    )


def test_a_password_in_the_host_never_shows(params, capsys):
    host = f"http://someone:hunter2-secret@127.0.0.1:{closed_port()}"
    assert main(["-v", *_submit(host, params)]) == 2
    captured = capsys.readouterr()
    assert "hunter2-secret" not in captured.out + captured.err
    assert "http://***@127.0.0.1" in captured.err.splitlines()[-1]


def test_a_password_in_the_mlflow_uri_never_shows(params, capsys):
    uri = "https://someone:hunter2-secret@mlflow.example.com"
    assert main(["submit", "--dry-run", "--params", str(params), "--mlflow-uri", uri]) == 0
    out = capsys.readouterr().out
    assert "hunter2-secret" not in out and "https://***@mlflow.example.com" in out


@pytest.mark.server
def test_verbose_output_never_shows_the_s3_credentials(tmp_path):
    """The real command line, -v, against the real SeaweedFS: the debug output of fastprune shows, botocore's (which
    carries the access key id) does not, and neither key appears anywhere."""
    with seaweedfs(tmp_path / "s3") as s3:
        bucket = s3.create_bucket(f"data-{uuid.uuid4().hex[:8]}")
        rows = "sentence\tlabel\n" + "".join(f"movie number {i}\t{i % 2}\n" for i in range(20))
        s3.client().put_object(Bucket=bucket, Key="sst2/train.tsv", Body=rows.encode())
        env = {
            **os.environ,
            **s3.env(),
            "AWS_SESSION_TOKEN": "",
            "FASTPRUNE_CACHE": str(tmp_path / "cache"),
            "OMP_NUM_THREADS": "1",
        }
        env.pop("FASTPRUNE_REMOTE_TIMEOUT", None)
        result = subprocess.run(
            [
                str(Path(sys.executable).parent / "fastprune"),
                "-v",
                "step",
                "sample",
                "--train-data",
                f"s3://{bucket}/sst2/train.tsv",
                "--task",
                "sst2",
                "--num-samples",
                "8",
                "--out",
                str(tmp_path / "sample"),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    shown = result.stdout + result.stderr
    assert result.returncode == 0, shown[-3000:]
    assert "DEBUG" in shown or "INFO fastprune" in shown  # verbose output is there
    assert s3.access_key not in shown
    assert s3.secret_key not in shown
