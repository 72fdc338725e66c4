"""common/storage.py against a real SeaweedFS S3 server (and one MLflow server using it for artifacts)."""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastprune.common.errors import IntegrityError, StorageError
from fastprune.common.folders import MANIFEST_NAME, verify_manifest, write_manifest
from fastprune.common.ops.storage import (
    download_dir,
    download_file,
    fetch,
    is_remote,
    join_key,
    upload_dir,
    upload_file,
)
from servers import S3Server, closed_port, mlflow_server, seaweedfs

server = pytest.mark.server
WRONG_SECRET = "definitely-not-the-secret-4711"


# ------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with seaweedfs(tmp_path_factory.mktemp("s3")) as running:
        yield running


@pytest.fixture
def s3_env(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """Point the AWS environment at the test server."""
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    return s3


@pytest.fixture
def bucket(s3_env: S3Server) -> str:
    return s3_env.create_bucket(f"test-{uuid.uuid4().hex[:12]}")


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    """A small nested artifact folder (one file is larger than boto3's multipart threshold)."""
    root = tmp_path / "artifact"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"hidden_size": 32}))
    (root / "sub" / "weights.bin").write_bytes(os.urandom(9 * 1024 * 1024))
    (root / "sub" / "deeper" / "notes.txt").write_text("pruned\n")
    (root / "empty.txt").write_bytes(b"")
    return root


class RecordingClient:
    """The real boto3 client, recording the keys that upload/delete calls touch, in order."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.calls: list[tuple[str, str]] = []

    def upload_file(self, filename: str, bucket: str, key: str, **kwargs: Any) -> None:
        self.calls.append(("upload_file", key))
        self._client.upload_file(filename, bucket, key, **kwargs)

    def delete_object(self, **kwargs: Any) -> Any:
        self.calls.append(("delete_object", kwargs["Key"]))
        return self._client.delete_object(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


# ------------------------------------------------------------------------------------ local manifests


def test_is_remote() -> None:
    assert is_remote("s3://bucket/x") and not is_remote("/tmp/x") and not is_remote("runs/s3:/x")


def test_local_manifest_accepts_untouched_folder(artifact: Path) -> None:
    manifest = write_manifest(artifact)
    assert set(manifest["files"]) == {"config.json", "empty.txt", "sub/weights.bin", "sub/deeper/notes.txt"}
    assert verify_manifest(artifact) == manifest


@pytest.mark.parametrize(
    ("tamper", "named"),
    [
        (lambda root: (root / "sub/deeper/notes.txt").write_text("PRUNED\n"), "sub/deeper/notes.txt"),
        (lambda root: (root / "config.json").write_text("{}"), "config.json"),
        (lambda root: (root / "empty.txt").unlink(), "empty.txt"),
        (lambda root: (root / "sub/extra.bin").write_bytes(b"x"), "sub/extra.bin"),
        (lambda root: (root / MANIFEST_NAME).write_text("{not json"), MANIFEST_NAME),
        (lambda root: (root / MANIFEST_NAME).unlink(), MANIFEST_NAME),
    ],
    ids=["same-size-edit", "size-change", "missing", "extra", "corrupt-manifest", "no-manifest"],
)
def test_local_manifest_detects_tampering(artifact: Path, tamper: Any, named: str) -> None:
    write_manifest(artifact)
    tamper(artifact)
    with pytest.raises(IntegrityError, match=named.replace(".", r"\.")):
        verify_manifest(artifact)


@pytest.mark.parametrize("relative", ["../outside", "a/../../b", "/etc/passwd", "", "a//b", "./a", "a\\..\\b"])
def test_keys_cannot_escape_their_prefix(relative: str) -> None:
    with pytest.raises(StorageError, match="not a plain relative path"):
        join_key("runs/1", relative)


def test_fetch_local_path(tmp_path: Path) -> None:
    assert fetch(str(tmp_path), tmp_path / "cache") == tmp_path
    with pytest.raises(StorageError, match="no/such/model"):
        fetch(str(tmp_path / "no/such/model"), tmp_path / "cache")


# ----------------------------------------------------------------------------------- against SeaweedFS


@server
def test_round_trip_writes_manifest_last(artifact: Path, bucket: str, s3: S3Server, tmp_path: Path) -> None:
    client = RecordingClient(s3.client())
    uri = f"s3://{bucket}/runs/42/model"
    upload_dir(artifact, uri, client=client)

    assert client.calls[0] == ("delete_object", f"runs/42/model/{MANIFEST_NAME}")
    assert client.calls[-1] == ("upload_file", f"runs/42/model/{MANIFEST_NAME}")
    listed = s3.client().list_objects_v2(Bucket=bucket, Prefix="runs/42/model/")["Contents"]
    keys = {item["Key"].removeprefix("runs/42/model/") for item in listed}
    manifest_object = s3.client().get_object(Bucket=bucket, Key=f"runs/42/model/{MANIFEST_NAME}")
    manifest = json.loads(manifest_object["Body"].read())
    assert keys == set(manifest["files"]) | {MANIFEST_NAME}
    assert manifest == json.loads((artifact / MANIFEST_NAME).read_text())

    dest = download_dir(uri, tmp_path / "downloaded")
    assert _files(dest) == _files(artifact)
    verify_manifest(dest)


@server
def test_corrupted_object_is_rejected_and_nothing_left(
    artifact: Path, bucket: str, s3: S3Server, tmp_path: Path
) -> None:
    uri = f"s3://{bucket}/model"
    upload_dir(artifact, uri)
    s3.client().put_object(Bucket=bucket, Key="model/sub/deeper/notes.txt", Body=b"PRUNED\n")  # same size
    dest_parent = tmp_path / "out"
    dest_parent.mkdir()

    with pytest.raises(IntegrityError, match=r"sub/deeper/notes\.txt"):
        download_dir(uri, dest_parent / "model")
    assert list(dest_parent.iterdir()) == []


@server
def test_missing_manifest_means_incomplete(artifact: Path, bucket: str, s3: S3Server, tmp_path: Path) -> None:
    for path in artifact.rglob("*"):
        if path.is_file():
            s3.client().upload_file(str(path), bucket, f"partial/{path.relative_to(artifact).as_posix()}")

    with pytest.raises(IntegrityError, match="incomplete or not a fastprune artifact"):
        download_dir(f"s3://{bucket}/partial", tmp_path / "partial")
    assert not (tmp_path / "partial").exists()


@server
def test_reupload_replaces_artifact(artifact: Path, bucket: str, tmp_path: Path) -> None:
    uri = f"s3://{bucket}/model"
    upload_dir(artifact, uri)
    (artifact / "config.json").write_text(json.dumps({"hidden_size": 16}))
    upload_dir(artifact, uri)
    dest = tmp_path / "model"
    dest.mkdir()
    (dest / "stale.txt").write_text("old")

    download_dir(uri, dest)
    assert json.loads((dest / "config.json").read_text()) == {"hidden_size": 16}
    assert not (dest / "stale.txt").exists()


@server
def test_manifest_entry_escaping_prefix_is_rejected(bucket: str, s3: S3Server, tmp_path: Path) -> None:
    manifest = {"version": 1, "files": {"../evil.txt": {"sha256": "0" * 64, "size": 1}}}
    s3.client().put_object(Bucket=bucket, Key=f"model/{MANIFEST_NAME}", Body=json.dumps(manifest).encode())

    with pytest.raises(StorageError, match=r"\.\./evil\.txt"):
        download_dir(f"s3://{bucket}/model", tmp_path / "model")
    with pytest.raises(StorageError, match=r"a/\.\./\.\./etc"):
        upload_file(tmp_path, f"s3://{bucket}/a/../../etc/passwd")
    assert list(tmp_path.iterdir()) == []


@server
def test_missing_bucket_is_named(artifact: Path, s3_env: S3Server, tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="bucket 'no-such-bucket-here' does not exist"):
        upload_dir(artifact, "s3://no-such-bucket-here/model")
    with pytest.raises(StorageError, match="bucket 'no-such-bucket-here' does not exist"):
        upload_file(artifact / "config.json", "s3://no-such-bucket-here/model/config.json")
    with pytest.raises(StorageError, match="no-such-bucket-here"):
        fetch("s3://no-such-bucket-here/model", tmp_path / "cache")


@server
def test_wrong_secret_mentions_credentials_not_the_secret(
    artifact: Path, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", WRONG_SECRET)
    caplog.set_level(logging.DEBUG, logger="fastprune")

    with pytest.raises(StorageError, match="check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY") as info:
        upload_dir(artifact, f"s3://{bucket}/model")
    with pytest.raises(StorageError, match="check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"):
        download_file(f"s3://{bucket}/model/config.json", tmp_path / "config.json")
    shown = str(info.value) + repr(info.value.__cause__) + caplog.text
    for secret in (WRONG_SECRET, real_secret, os.environ["AWS_ACCESS_KEY_ID"]):
        assert secret not in shown


def test_unreachable_endpoint_fails_fast(artifact: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "any")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "any-secret")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)

    start = time.monotonic()
    with pytest.raises(StorageError, match=f"cannot reach the S3 endpoint {endpoint}"):
        upload_dir(artifact, "s3://bucket/model")
    assert time.monotonic() - start < 10


@server
def test_fetch_remote_folders_and_objects(
    artifact: Path, bucket: str, s3: S3Server, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "cache"
    upload_dir(artifact, f"s3://{bucket}/verified")
    first = fetch(f"s3://{bucket}/verified/", cache)
    assert _files(first) == _files(artifact)
    assert fetch(f"s3://{bucket}/verified", cache) == first  # cached by URI + ETags

    s3.client().put_object(Bucket=bucket, Key="by-hand/config.json", Body=b"{}")
    with caplog.at_level(logging.WARNING, logger="fastprune"):
        raw = fetch(f"s3://{bucket}/by-hand", cache)
    assert _files(raw) == {"config.json": b"{}"} and "no MANIFEST.json" in caplog.text

    single = fetch(f"s3://{bucket}/by-hand/config.json", cache)
    assert single.is_file() and single.name == "config.json" and single.read_bytes() == b"{}"
    with pytest.raises(StorageError, match="nothing at"):
        fetch(f"s3://{bucket}/nothing/here.bin", cache)


@server
def test_mlflow_server_stores_artifacts_in_s3(bucket: str, s3: S3Server, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    with mlflow_server(tmp_path, f"s3://{bucket}/mlflow", s3.env()) as tracking_uri:
        client = MlflowClient(tracking_uri)
        run = client.create_run("0")
        client.log_text(run.info.run_id, "hello from fastprune", "notes/hello.txt")
        client.set_terminated(run.info.run_id)

    key = f"mlflow/0/{run.info.run_id}/artifacts/notes/hello.txt"
    assert s3.client().get_object(Bucket=bucket, Key=key)["Body"].read() == b"hello from fastprune"
