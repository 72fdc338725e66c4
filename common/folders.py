"""The folder contract: manifests (sha256 of every file), staging beside the destination, stage folders'
``stage.json`` and file names, and the cache location. Every other room builds on it."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .errors import IntegrityError, StorageError
from .outputs import staged_folder as staged_folder  # the staging of the folder contract (common/outputs.py)
from .outputs import swap_into_place as swap_into_place

MANIFEST_NAME = "MANIFEST.json"


MANIFEST_VERSION = 1


_CHUNK = 1 << 20


def check_relative(path: str, what: str) -> None:
    parts = path.split("/")
    if "\\" in path or any(part in ("", ".", "..") for part in parts):
        raise StorageError(f"{what} is not a plain relative path inside its prefix (no '..', not absolute)")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _local_files(local_dir: Path) -> list[str]:
    """Relative POSIX paths of every file under local_dir except the top-level manifest."""
    files = [p.relative_to(local_dir).as_posix() for p in local_dir.rglob("*") if p.is_file()]
    return sorted(f for f in files if f != MANIFEST_NAME)


def build_manifest(local_dir: str | Path) -> dict[str, Any]:
    """The manifest of local_dir: ``{"version": 1, "files": {relpath: {"sha256", "size"}}}``."""
    root = Path(local_dir)
    if not root.is_dir():
        raise StorageError(f"artifact folder {root} does not exist or is not a folder")
    files = {rel: {"sha256": sha256_file(root / rel), "size": (root / rel).stat().st_size}
             for rel in _local_files(root)}
    return {"version": MANIFEST_VERSION, "files": files}


def write_manifest(local_dir: str | Path) -> dict[str, Any]:
    """Write ``MANIFEST.json`` into local_dir (checksums of every other file) and return it."""
    manifest = build_manifest(local_dir)
    (Path(local_dir) / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def parse_manifest(text: str | bytes, origin: str) -> dict[str, Any]:
    """Parse and validate manifest text; IntegrityError naming origin when it is corrupt."""
    try:
        manifest = json.loads(text)
        files = manifest["files"]
        ok = isinstance(files, dict) and all(
            isinstance(e, dict) and isinstance(e.get("sha256"), str) and isinstance(e.get("size"), int)
            for e in files.values())
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"corrupt {MANIFEST_NAME} in {origin}: {exc}") from exc
    if not ok:
        raise IntegrityError(f"corrupt {MANIFEST_NAME} in {origin}: entries need 'sha256' and 'size'")
    for rel in files:
        check_relative(rel, what=f"manifest entry {rel!r} in {origin}")
    return manifest


def verify_manifest(local_dir: str | Path) -> dict[str, Any]:
    """Check every file of local_dir against its manifest; IntegrityError naming the first bad file."""
    root = Path(local_dir)
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        raise IntegrityError(f"no {MANIFEST_NAME} in {root}: incomplete or not a fastprune artifact")
    manifest = parse_manifest(manifest_path.read_bytes(), str(root))
    expected: dict[str, dict[str, Any]] = manifest["files"]
    extra = sorted(set(_local_files(root)) - set(expected))
    if extra:
        raise IntegrityError(f"{root}: file {extra[0]!r} is not listed in {MANIFEST_NAME}")
    for rel, entry in expected.items():
        _verify_file(root / rel, rel, entry, str(root))
    return manifest


def _verify_file(path: Path, rel: str, entry: dict[str, Any], origin: str) -> None:
    if not path.is_file():
        raise IntegrityError(f"{origin}: file {rel!r} listed in {MANIFEST_NAME} is missing")
    size = path.stat().st_size
    if size != entry["size"]:
        raise IntegrityError(f"{origin}: file {rel!r} has {size} bytes, manifest says {entry['size']}")
    if sha256_file(path) != entry["sha256"]:
        raise IntegrityError(f"{origin}: file {rel!r} does not match its sha256 in {MANIFEST_NAME}")


# ----- stage folders ---------------------------------------------------------------------------------------------
STAGE_ORDER = (
    "prepare", "sample", "fisher", "search", "rearrange", "tune", "export", "evaluate", "profile", "register",
)
"""The stages in pipeline order (each stage folder's ``stage.json`` names one)."""
STAGE_FILE = "stage.json"


SAMPLE_FILE = "sample.parquet"


HOLDOUT_FILE = "holdout.parquet"


GRADS_FILE = "grads.safetensors"


MASKS_FILE = "masks.safetensors"


LATENCY_TABLE_FILE = "latency_table.json"


PROFILE_FILE = "profile.md"


def stage_info(folder: str | Path) -> dict:
    """The ``stage.json`` of a stage's output folder."""
    path = Path(folder) / STAGE_FILE
    if not path.is_file():
        raise IntegrityError(f"{folder} has no {STAGE_FILE}: not the output of a fastprune stage")
    return json.loads(path.read_text())


def numeric_results(info: dict) -> dict[str, float]:
    """The numbers among a stage's results (for metrics), without its seconds."""
    return {k: v for k, v in info.items() if isinstance(v, int | float) and not isinstance(v, bool) and k != "seconds"}


def cache_dir() -> Path:
    """Where fastprune caches downloads and fine-tuned models: ``$FASTPRUNE_CACHE``, else ``~/.cache/fastprune``."""
    return Path(os.environ.get("FASTPRUNE_CACHE", Path.home() / ".cache" / "fastprune"))
