"""Everything that crosses object storage (S3 / MinIO / SeaweedFS), through boto3.

Artifacts are folders with a ``MANIFEST.json`` (relative path -> sha256 + size). ``upload_dir`` writes the
manifest last and ``download_dir`` verifies every file against it, so a partial or corrupted upload is never
accepted as complete. Credentials come from the usual AWS environment and are never logged.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import boto3
from boto3.exceptions import Boto3Error, S3UploadFailedError
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    NoCredentialsError,
    ReadTimeoutError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from ..errors import IntegrityError, StorageError
from ..folders import (
    MANIFEST_NAME,
    check_relative,
    parse_manifest,
    staged_file,
    staged_folder,
    verify_manifest,
    write_manifest,
)
from .remote import boto_config, bound_description

logger = logging.getLogger(__name__)

_CREDENTIAL_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AccessDenied",
        "403",
        "Forbidden",
        "InvalidToken",
        "ExpiredToken",
        "InvalidClientTokenId",
        "AuthorizationHeaderMalformed",
    }
)
_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


# ----------------------------------------------------------------------------------------------- URIs


def is_remote(uri: str) -> bool:
    """True for ``s3://`` URIs."""
    return str(uri).startswith("s3://")


def split_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b/`` -> ``("bucket", "a/b")``; rejects keys with ``..`` or empty bucket names."""
    if not is_remote(uri):
        raise StorageError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise StorageError(f"no bucket name in {uri!r} (expected s3://bucket/prefix)")
    key = key.strip("/")
    if key:
        check_relative(key, what=f"key in {uri!r}")
    return bucket, key


def join_key(prefix: str, relative: str) -> str:
    """The key of ``relative`` under ``prefix``; refuses anything that would escape the prefix."""
    check_relative(relative, what=f"key {relative!r} under prefix {prefix!r}")
    return f"{prefix}/{relative}" if prefix else relative


# --------------------------------------------------------------------------------------------- client


def _endpoint_url() -> str | None:
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL"):
        if os.environ.get(name):
            return os.environ[name]
    return None


def s3_client() -> Any:
    """A boto3 S3 client from the AWS environment variables, path-style, failing fast when unreachable."""
    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"
    config = boto_config(region_name=region, signature_version="s3v4", s3={"addressing_style": "path"})
    return boto3.client(
        "s3",
        endpoint_url=_endpoint_url(),
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID") or None,
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY") or None,
        aws_session_token=os.environ.get("AWS_SESSION_TOKEN") or None,
        config=config,
    )


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _unwrap(exc: BaseException) -> BaseException:
    """boto3's transfer manager wraps the ClientError of a failed upload in S3UploadFailedError."""
    if isinstance(exc, S3UploadFailedError) and exc.__context__ is not None:
        return exc.__context__
    return exc


def _storage_error(exc: BaseException, action: str, bucket: str, key: str, endpoint: str) -> StorageError:
    """Translate a boto3/botocore exception into a StorageError that never carries credentials."""
    target = f"s3://{bucket}/{key}"
    if isinstance(exc, ConnectTimeoutError | ReadTimeoutError):
        what = "did not accept a connection" if isinstance(exc, ConnectTimeoutError) else "did not answer"
        return StorageError(
            f"the S3 endpoint {endpoint} {what} while {action} {target}: timed out after "
            f"{bound_description()}; check AWS_ENDPOINT_URL / MLFLOW_S3_ENDPOINT_URL and the server"
        )
    if isinstance(exc, BotoConnectionError):
        return StorageError(
            f"cannot reach the S3 endpoint {endpoint} while {action} {target} "
            f"({type(exc).__name__}, {bound_description()}): check AWS_ENDPOINT_URL / "
            "MLFLOW_S3_ENDPOINT_URL and the network"
        )
    if isinstance(exc, NoCredentialsError):
        return StorageError(
            f"no S3 credentials found while {action} {target}: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
        )
    if not isinstance(exc, ClientError):  # botocore messages name parameters, never credential values
        return StorageError(f"S3 error while {action} {target} at {endpoint}: {type(exc).__name__}: {exc}")
    code = _error_code(exc)
    if code == "NoSuchBucket":
        return StorageError(f"bucket {bucket!r} does not exist at {endpoint} (while {action} {target})")
    if code in _CREDENTIAL_CODES:
        return StorageError(
            f"S3 at {endpoint} refused the credentials ({code}) while {action} {target}: "
            "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN) "
            "and the bucket permissions"
        )
    if code in _MISSING_CODES:
        return StorageError(f"{target} does not exist at {endpoint} (while {action})")
    message = (getattr(exc, "response", None) or {}).get("Error", {}).get("Message", "")
    return StorageError(f"S3 error {code or 'unknown'} while {action} {target} at {endpoint}: {message}")


@contextlib.contextmanager
def _s3_errors(client: Any, action: str, bucket: str, key: str = "") -> Iterator[None]:
    """Re-raise botocore errors inside the block as StorageError with a clear message."""
    try:
        yield
    except (ClientError, BotoCoreError, Boto3Error) as exc:
        error = _storage_error(_unwrap(exc), action, bucket, key, client.meta.endpoint_url)
        logger.error("%s", error)
        raise error from exc


# ------------------------------------------------------------------------------------------- manifest


# ---------------------------------------------------------------------------------------- single files


def upload_file(local_path: str | Path, uri: str, client: Any = None) -> str:
    """Upload one file to the object ``uri``; returns uri."""
    bucket, key = split_uri(uri)
    if not key:
        raise StorageError(f"{uri!r} names a bucket, not an object key")
    path = Path(local_path)
    if not path.is_file():
        raise StorageError(f"cannot upload {path}: no such file")
    client = client or s3_client()
    with _s3_errors(client, "uploading to", bucket, key):
        client.upload_file(str(path), bucket, key)
    return uri


def download_file(uri: str, local_path: str | Path, client: Any = None) -> Path:
    """Download the object ``uri`` to local_path (written to a temp file, then renamed into place)."""
    bucket, key = split_uri(uri)
    if not key:
        raise StorageError(f"{uri!r} names a bucket, not an object key")
    client = client or s3_client()
    target = Path(local_path)
    with staged_file(target) as tmp_name, _s3_errors(client, "downloading", bucket, key):
        client.download_file(bucket, key, str(tmp_name))
    return target


def _get_bytes(client: Any, bucket: str, key: str) -> bytes | None:
    """The object's bytes, or None when the key does not exist."""
    with _s3_errors(client, "reading", bucket, key):
        try:
            return client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if _error_code(exc) in _MISSING_CODES:
                return None
            raise


def _list_objects(client: Any, bucket: str, prefix: str) -> dict[str, str]:
    """Relative key -> ETag of every object under ``prefix/`` (folder markers skipped)."""
    start = f"{prefix}/" if prefix else ""
    objects: dict[str, str] = {}
    with _s3_errors(client, "listing", bucket, start):
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=start):
            for item in page.get("Contents", []):
                if not item["Key"].endswith("/"):
                    objects[item["Key"][len(start) :]] = item.get("ETag", "")
    return objects


# ------------------------------------------------------------------------------------------- folders


def upload_dir(local_dir: str | Path, uri: str, client: Any = None) -> str:
    """Upload every file of local_dir under ``uri`` and its manifest last; returns uri.

    Any old manifest at the prefix is deleted first, so readers never accept a half-replaced artifact.
    """
    root = Path(local_dir)
    bucket, prefix = split_uri(uri)
    manifest = write_manifest(root)
    client = client or s3_client()
    manifest_key = join_key(prefix, MANIFEST_NAME)
    with _s3_errors(client, "deleting the old manifest of", bucket, manifest_key):
        client.delete_object(Bucket=bucket, Key=manifest_key)
    for rel in manifest["files"]:
        key = join_key(prefix, rel)
        with _s3_errors(client, "uploading to", bucket, key):
            client.upload_file(str(root / rel), bucket, key)
    with _s3_errors(client, "uploading to", bucket, manifest_key):
        client.upload_file(str(root / MANIFEST_NAME), bucket, manifest_key)
    logger.info("uploaded %d files from %s to %s", len(manifest["files"]), root, uri)
    return uri


def download_dir(uri: str, local_dir: str | Path, client: Any = None) -> Path:
    """Download the artifact at ``uri`` into local_dir after verifying every file against its manifest.

    Files land in a temp folder beside local_dir that is renamed into place only once all checksums match;
    on any failure nothing new is left at local_dir.
    """
    bucket, prefix = split_uri(uri)
    client = client or s3_client()
    raw = _get_bytes(client, bucket, join_key(prefix, MANIFEST_NAME))
    if raw is None:
        raise IntegrityError(f"{uri} has no {MANIFEST_NAME}: incomplete or not a fastprune artifact")
    manifest = parse_manifest(raw, uri)
    with staged_folder(Path(local_dir)) as staging:
        for rel in manifest["files"]:
            _download_into(client, bucket, join_key(prefix, rel), staging, rel)
        (staging / MANIFEST_NAME).write_bytes(raw)
        _verify_staged(staging, uri)
    logger.info("downloaded %d verified files from %s to %s", len(manifest["files"]), uri, local_dir)
    return Path(local_dir)


def _verify_staged(staging: Path, uri: str) -> None:
    try:
        verify_manifest(staging)
    except IntegrityError as exc:
        raise IntegrityError(str(exc).replace(str(staging), uri)) from None


def _download_into(client: Any, bucket: str, key: str, root: Path, rel: str) -> None:
    target = root / rel
    if not target.resolve().is_relative_to(root.resolve()):
        raise StorageError(f"key {key!r} would be written outside {root}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with _s3_errors(client, "downloading", bucket, key):
        client.download_file(bucket, key, str(target))


def _download_raw_dir(client: Any, bucket: str, prefix: str, objects: dict[str, str], dest: Path) -> Path:
    """Download a folder without a manifest (e.g. a model uploaded by hand) as it is."""
    for rel in objects:
        check_relative(rel, what=f"key {join_key(prefix, rel)!r}")
    with staged_folder(dest) as staging:
        for rel in objects:
            _download_into(client, bucket, join_key(prefix, rel), staging, rel)
    return dest


# --------------------------------------------------------------------------------------------- fetch


def fetch(source: str, cache_dir: str | Path) -> Path:
    """A local path for ``source``: local paths as they are, ``s3://`` folders and objects downloaded.

    Downloads are cached in cache_dir by URI and ETag, so an unchanged object is fetched once.
    """
    if not is_remote(source):
        path = Path(source).expanduser()
        if not path.exists():
            raise StorageError(f"local path {str(path)!r} does not exist")
        return path
    bucket, prefix = split_uri(source)
    uri = f"s3://{bucket}/{prefix}"  # canonical: s3://b/p/ and s3://b/p share one cache entry
    client = s3_client()
    objects = _list_objects(client, bucket, prefix)
    if objects:
        return _fetch_dir(client, uri, objects, Path(cache_dir))
    if prefix:
        return _fetch_object(client, uri, Path(cache_dir))
    raise StorageError(f"nothing to fetch at {source}: the bucket is empty")


def _cache_path(cache_dir: Path, uri: str, version: str, name: str) -> Path:
    digest = hashlib.sha256(f"{uri}\n{version}".encode()).hexdigest()[:16]
    return cache_dir / digest / name


def _fetch_dir(client: Any, uri: str, objects: dict[str, str], cache_dir: Path) -> Path:
    bucket, prefix = split_uri(uri)
    version = json.dumps(sorted(objects.items()))
    dest = _cache_path(cache_dir, uri, version, PurePosixPath(prefix).name or bucket)
    if MANIFEST_NAME in objects:
        if dest.is_dir():
            verify_manifest(dest)
            logger.info("using cached %s at %s", uri, dest)
            return dest
        return download_dir(uri, dest, client)
    logger.warning("%s has no %s: downloading it as is, without integrity checks", uri, MANIFEST_NAME)
    if dest.is_dir():
        return dest
    return _download_raw_dir(client, bucket, prefix, objects, dest)


def _fetch_object(client: Any, uri: str, cache_dir: Path) -> Path:
    bucket, key = split_uri(uri)
    with _s3_errors(client, "reading", bucket, key):
        try:
            etag = client.head_object(Bucket=bucket, Key=key).get("ETag", "")
        except ClientError as exc:
            if _error_code(exc) in _MISSING_CODES:
                raise StorageError(f"nothing at {uri}: no such object or folder") from None
            raise
    dest = _cache_path(cache_dir, uri, etag, PurePosixPath(key).name)
    if dest.is_file():
        logger.info("using cached %s at %s", uri, dest)
        return dest
    return download_file(uri, dest, client)
