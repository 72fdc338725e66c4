"""Real servers for tests: SeaweedFS (S3) via ``weed mini`` and an MLflow tracking server.

Both are context managers that start the server on free 127.0.0.1 ports, wait until it answers, and stop it
afterwards even when the test fails. Use them from module- or session-scoped fixtures.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BIN_DIR = Path(sys.executable).parent
ACCESS_KEY = "fastprune-test-key"
SECRET_KEY = "fastprune-test-secret-0123456789"
# Listeners of `weed mini` that take a port; each gRPC port is given explicitly too.
_WEED_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)


class ServerStartError(RuntimeError):
    """A test server did not come up; the message carries the tail of its log."""


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (held open together so they differ)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (for unreachable-endpoint tests)."""
    return free_ports(1)[0]


def _log_tail(log_path: Path, lines: int = 40) -> str:
    if not log_path.exists():
        return "(no log)"
    return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])


def _find_binary(name: str) -> Path:
    candidate = BIN_DIR / name
    if candidate.exists():
        return candidate
    found = shutil.which(name)
    if found is None:
        raise ServerStartError(f"{name} executable not found next to {sys.executable} or on PATH")
    return Path(found)


def _stop(process: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """SIGTERM the process group we started, SIGKILL it if it does not exit within grace_s."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)


def _wait_until(ready: Any, process: subprocess.Popen[bytes], log_path: Path, name: str, timeout_s: float) -> None:
    """Poll ready() until it returns True; ServerStartError with the log tail on exit or timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerStartError(f"{name} exited with {process.returncode}:\n{_log_tail(log_path)}")
        if ready():
            return
        time.sleep(0.2)
    raise ServerStartError(f"{name} not ready after {timeout_s:.0f} s:\n{_log_tail(log_path)}")


# ------------------------------------------------------------------------------------------- SeaweedFS


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    def client(self, secret_key: str | None = None) -> Any:
        """A boto3 S3 client for this server (optionally with another secret key)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            region_name=self.region,
            config=Config(
                s3={"addressing_style": "path"}, retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10
            ),
        )

    def env(self) -> dict[str, str]:
        """The environment variables that point boto3 and MLflow at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint,
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
        }

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name


def _weed_config(path: Path) -> Path:
    identity = {
        "name": "admin",
        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    path.write_text(json.dumps({"identities": [identity]}))
    return path


def _weed_command(data_dir: Path, config: Path, ports: dict[str, int]) -> list[str]:
    return [
        str(_find_binary("weed")),
        "mini",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-s3.config={config}",
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
        "-s3.autoCreateBucket=false",  # like real S3
        *(f"-{flag}={port}" for flag, port in ports.items()),
    ]


def _s3_answers(server: S3Server) -> bool:
    try:
        server.client().list_buckets()
    except Exception:  # any failure means "not ready yet"
        return False
    return True


@contextlib.contextmanager
def seaweedfs(tmp_path: Path, timeout_s: float = 30.0, attempts: int = 3) -> Iterator[S3Server]:
    """A SeaweedFS ``weed mini`` S3 server on free 127.0.0.1 ports with a known access key + secret."""
    root = Path(tmp_path) / "seaweedfs"
    config = _weed_config(_fresh_dir(root) / "s3.json")
    for attempt in range(1, attempts + 1):
        ports = dict(zip(_WEED_PORT_FLAGS, free_ports(len(_WEED_PORT_FLAGS)), strict=True))
        data_dir = _fresh_dir(root / f"data-{attempt}")
        log_path = root / f"weed-{attempt}.log"
        server = S3Server(f"http://127.0.0.1:{ports['s3.port']}", ACCESS_KEY, SECRET_KEY)
        process = _spawn(_weed_command(data_dir, config, ports), log_path, os.environ.copy())
        try:
            _wait_until(lambda s=server: _s3_answers(s), process, log_path, "SeaweedFS", timeout_s)
        except ServerStartError:
            _stop(process)
            if attempt == attempts:
                raise
            continue  # most likely a port taken between free_ports() and the bind: retry with new ports
        try:
            yield server
        finally:
            _stop(process)
            shutil.rmtree(root, ignore_errors=True)
        return


def _fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def _spawn(command: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start command in its own session (so _stop can signal its whole group), cwd = the log's folder."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=log_path.parent,
            start_new_session=True,
        )


# ---------------------------------------------------------------------------------------------- MLflow


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def mlflow_command(tmp_path: Path, port: int, artifacts_destination: str | None, auth: bool = False) -> list[str]:
    """The `mlflow server` command line: SQLite backend, one uvicorn worker, bound to 127.0.0.1 (with MLflow's
    basic-auth app when ``auth``)."""
    command = [
        str(_find_binary("mlflow")),
        "server",
        "--backend-store-uri",
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    if auth:
        command += ["--app-name", "basic-auth"]
    if artifacts_destination:
        command += ["--artifacts-destination", artifacts_destination]
    return command


@contextlib.contextmanager
def mlflow_server(
    tmp_path: Path,
    artifacts_destination: str | None = None,
    env: dict[str, str] | None = None,
    timeout_s: float = 90.0,
    admin_password: str | None = None,
) -> Iterator[str]:
    """An MLflow tracking server on a free port; yields its tracking URI (``http://127.0.0.1:PORT``).

    env is added to this process's environment (e.g. the S3 endpoint and credentials for an
    ``s3://`` artifacts destination). With ``admin_password`` the server runs MLflow's basic-auth app (it needs
    Flask-WTF) and accepts the user ``admin`` with that password only.
    """
    root = _fresh_dir(Path(tmp_path) / "mlflow-server")
    port = free_ports(1)[0]
    uri = f"http://127.0.0.1:{port}"
    log_path = root / "mlflow.log"
    command = mlflow_command(root, port, artifacts_destination, auth=admin_password is not None)
    # The huey job runner (MLflow 3 "jobs") is not needed by tests and slows the start down.
    defaults = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    if admin_password is not None:
        defaults |= {"MLFLOW_AUTH_ADMIN_PASSWORD": admin_password, "MLFLOW_FLASK_SERVER_SECRET_KEY": "fastprune-tests"}
    process = _spawn(command, log_path, {**os.environ, **defaults, **(env or {})})
    try:
        _wait_until(lambda: _http_ok(f"{uri}/health"), process, log_path, "MLflow server", timeout_s)
        yield uri
    finally:
        _stop(process)


# ------------------------------------------------------------------------------------ MLflow model serving


@contextlib.contextmanager
def mlflow_model_server(
    python: Path, model_uri: str, root: Path, env: dict[str, str], timeout_s: float = 300.0
) -> Iterator[str]:
    """``python -m mlflow models serve -m MODEL_URI --env-manager local`` on a free 127.0.0.1 port, run with ``env``
    (which must put a ``uvicorn`` on PATH) from ``root``; yields its base URL once ``/ping`` answers."""
    root = _fresh_dir(Path(root))
    port = free_ports(1)[0]
    log_path = root / "serve.log"
    command = [
        str(python),
        "-m",
        "mlflow",
        "models",
        "serve",
        "-m",
        model_uri,
        "--env-manager",
        "local",
        "-p",
        str(port),
        "-h",
        "127.0.0.1",
    ]
    process = _spawn(command, log_path, env)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until(lambda: _http_ok(f"{url}/ping"), process, log_path, "mlflow models serve", timeout_s)
        yield url
    finally:
        _stop(process)


def post_json(url: str, payload: Any, timeout_s: float = 60.0) -> tuple[int, Any]:
    """POST a JSON payload; (HTTP status, decoded JSON answer)."""
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")
