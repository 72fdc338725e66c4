"""Where a stage reads a model or data source from: a local path, a download (checked and cached) of an ``s3://`` URI
or of a registered model ``models:/NAME/VERSION``, or a hub id as it is."""

from __future__ import annotations

from pathlib import Path

from ..folders import cache_dir
from ..ops.storage import fetch, is_remote


def _sources_cache() -> Path:
    return cache_dir() / "downloads"


def resolve_source(source: str, tracking_uri: str | None = None) -> tuple[str | Path, str]:
    """Where to read ``source`` from (a local path, downloaded, checked and cached for an ``s3://`` URI or a
    registered model ``models:/NAME/VERSION`` of the MLflow at ``tracking_uri``; a hub id as it is) and how to
    name it (the URI, ``models:/NAME/VERSION`` with an alias resolved, an absolute path or the hub id)."""
    if source.startswith("models:/"):
        from ..ops.registry import fetch_registered_model

        return fetch_registered_model(source, _sources_cache(), tracking_uri)
    path = Path(source).expanduser()
    if is_remote(source):
        return fetch(source, _sources_cache()), source
    if source.startswith(("/", ".", "~")) or source.count("/") > 1 or path.exists():
        local = fetch(source, _sources_cache())
        return local, str(local.resolve())
    return source, source
