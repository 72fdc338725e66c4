"""The folder contract: manifests (sha256 of every file), staging beside the destination, stage folders'
``stage.json`` and file names, and the cache location. Every other room builds on it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import ConfigError, IntegrityError, StorageError

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
    files = {
        rel: {"sha256": sha256_file(root / rel), "size": (root / rel).stat().st_size} for rel in _local_files(root)
    }
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
            for e in files.values()
        )
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


# ----- outputs: staged beside their destination, never overwritten unasked, scratch swept ------------------------
# The output contract: a result appears whole, at once, or not at all, and nothing the user owns is overwritten
# unasked.
#
# Every output is built beside its destination in a hidden staging folder (or file) named after the destination and
# the process that builds it (``.NAME.p<pid>.<host>.<random>.partial``) and renamed into place only when complete
# (:func:`staged_folder`, :func:`staged_file`). :func:`check_output` refuses, before any work, an output path that
# cannot be written or that already holds something (unless ``overwrite``). Scratch folders in the temp dir are named
# the same way (``fastprune-p<pid>.<host>.<random>``). Both are removed on every exit path Python can catch (see
# :mod:`interrupts` for SIGTERM); those left by a process that no longer exists (SIGKILL, power loss) are swept by
# the next run that stages or scratches.

log = logging.getLogger(__name__)

PARTIAL = ".partial"
SCRATCH_PREFIX = "fastprune-"
_OWNER = re.compile(r"\.?p(?P<pid>\d+)\.(?P<host>[A-Za-z0-9-]+)\.")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:32] or "host"


def _tag() -> str:
    """This process's part of a staging or scratch name: ``p<pid>.<host>.``."""
    return f"p{os.getpid()}.{_host()}."


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _stale(name: str) -> bool:
    """Whether ``name`` was made by a process of this host that no longer exists."""
    match = _OWNER.search(name)
    return match is not None and match["host"] == _host() and not _alive(int(match["pid"]))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def sweep_stale(destination: Path) -> list[Path]:
    """Remove the staging folders and files of ``destination`` left by dead processes of this host; a replaced
    result set aside by a process killed between its two renames is put back. Returns what was removed."""
    parent, removed = destination.parent, list[Path]()
    if not parent.is_dir():
        return removed
    for path in parent.glob(f".{glob_escape(destination.name)}.p*"):
        if PARTIAL not in path.name or not _stale(path.name[len(destination.name) + 1 :]):
            continue
        if path.name.endswith(".old" + PARTIAL) and not destination.exists():
            os.rename(path, destination)
            log.warning("put back %s, set aside by an interrupted run", destination)
            continue
        _remove(path)
        removed.append(path)
    if removed:
        log.info("removed %d stale staging folder(s) of %s", len(removed), destination)
    return removed


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def sweep_stale_scratch(root: str | Path | None = None) -> list[Path]:
    """Remove the scratch folders (``fastprune-p<pid>.<host>.*`` in the temp dir) of dead processes of this host."""
    root = Path(root or tempfile.gettempdir())
    removed = [p for p in root.glob(f"{SCRATCH_PREFIX}p*") if _stale(p.name[len(SCRATCH_PREFIX) :])]
    for path in removed:
        _remove(path)
    if removed:
        log.info("removed %d stale scratch folder(s) from %s", len(removed), root)
    return removed


@contextlib.contextmanager
def scratch_dir() -> Iterator[Path]:
    """A scratch folder in the temp dir, removed on exit (stale ones of dead runs are swept first)."""
    sweep_stale_scratch()
    with tempfile.TemporaryDirectory(prefix=SCRATCH_PREFIX + _tag()) as tmp:
        yield Path(tmp)


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return Path(".")


def check_output(path: str | Path, overwrite: bool = False, kind: str = "folder", flag: str = "--overwrite") -> Path:
    """Refuse, before any work, an output ``path`` (a ``folder`` or a ``file``) that cannot be written: one whose
    parent is a file, a folder given where a file is wanted or the reverse, one without write permission, or one
    that already holds something (a non-empty folder, an existing file) unless ``overwrite``."""
    path = Path(path).expanduser()
    found = _nearest_existing(path)
    if found != path and not found.is_dir():
        raise ConfigError(f"cannot write the output {kind} {path}: {found} is a file, not a folder")
    if found == path:
        if kind == "folder" and not path.is_dir():
            raise ConfigError(f"output folder {path} exists and is a file: give a folder path")
        if kind == "file" and path.is_dir():
            raise ConfigError(f"output file {path} exists and is a folder: give a file path")
        if not overwrite and (kind == "file" or any(path.iterdir())):
            what = "is not empty" if kind == "folder" else "exists"
            raise ConfigError(
                f"output {kind} {path} {what}: pass {flag} to replace it (whole, once the new result "
                f"is complete) or choose another path"
            )
    parent = found if found != path else path.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write the output {kind} {path}: no write permission on {parent}")
    return path


def _mkdtemp(destination: Path) -> Path:
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{destination.name}.{_tag()}", suffix=PARTIAL, dir=destination.parent))
    except OSError as e:
        raise StorageError(f"cannot write {destination}: {e.strerror or e}") from None


@contextlib.contextmanager
def staged_folder(destination: str | Path, keep_existing: bool = False) -> Iterator[Path]:
    """A hidden folder beside ``destination``, renamed onto it when the block succeeds (replacing what was there),
    removed otherwise, whatever the exception (KeyboardInterrupt and SIGTERM included). With ``keep_existing`` (a
    cache entry that concurrent runs build alike) a ``destination`` that is there by then is kept and the staged
    folder dropped: whoever renames first wins, and a reader of the first never sees it go."""
    destination = Path(destination)
    if destination.exists() and not destination.is_dir():
        raise StorageError(f"cannot write the folder {destination}: it exists and is not a folder")
    sweep_stale(destination)
    folder = _mkdtemp(destination)
    try:
        yield folder
        if keep_existing:
            _rename_unless_there(folder, destination)
        else:
            swap_into_place(folder, destination)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _rename_unless_there(staged: Path, destination: Path) -> None:
    try:
        os.rename(staged, destination)  # atomic; refused when another run's complete folder is there
    except OSError:
        if not (destination.is_dir() and any(destination.iterdir())):
            raise


def swap_into_place(staged: Path, destination: Path) -> None:
    """Rename the complete ``staged`` folder onto ``destination``; an existing one is set aside first and removed
    once the new one is in place."""
    if not destination.exists():
        os.rename(staged, destination)
        return
    old = destination.with_name(f".{destination.name}.{_tag()}old{PARTIAL}")
    os.rename(destination, old)
    try:
        os.rename(staged, destination)
    except OSError:
        os.rename(old, destination)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_file(destination: str | Path) -> Iterator[Path]:
    """A hidden temp file beside ``destination`` (same suffix), renamed onto it when the block succeeds, removed
    otherwise."""
    destination = Path(destination)
    sweep_stale(destination)
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(
            prefix=f".{destination.name}.{_tag()}", suffix=PARTIAL + destination.suffix, dir=destination.parent
        )
    except OSError as e:
        raise StorageError(f"cannot write {destination}: {e.strerror or e}") from None
    os.close(handle)
    try:
        yield Path(name)
        os.replace(name, destination)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(name)


# ----- stage folders ---------------------------------------------------------------------------------------------
STAGE_ORDER = (
    "prepare",
    "sample",
    "fisher",
    "search",
    "rearrange",
    "tune",
    "export",
    "evaluate",
    "profile",
    "onnx",
    "register",
)
"""The stages in pipeline order (each stage folder's ``stage.json`` names one)."""
STAGE_FILE = "stage.json"


SAMPLE_FILE = "sample.parquet"


HOLDOUT_FILE = "holdout.parquet"


GRADS_FILE = "grads.safetensors"


CALIBRATION_FILE = "calibration.safetensors"
"""The Fisher stage's self-generated calibration windows (``calib_generate``), read by tuning in the sample's stead."""


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
