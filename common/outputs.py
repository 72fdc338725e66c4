"""The output contract: a result appears whole, at once, or not at all, and nothing the user owns is overwritten
unasked.

Every output is built beside its destination in a hidden staging folder (or file) named after the destination and
the process that builds it (``.NAME.p<pid>.<host>.<random>.partial``) and renamed into place only when complete
(:func:`staged_folder`, :func:`staged_file`). :func:`check_output` refuses, before any work, an output path that
cannot be written or that already holds something (unless ``overwrite``). Scratch folders in the temp dir are named
the same way (``fastprune-p<pid>.<host>.<random>``). Both are removed on every exit path Python can catch (see
:mod:`interrupts` for SIGTERM); those left by a process that no longer exists (SIGKILL, power loss) are swept by
the next run that stages or scratches.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import ConfigError, StorageError

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
    return bool(match) and match["host"] == _host() and not _alive(int(match["pid"]))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def sweep_stale(destination: Path) -> list[Path]:
    """Remove the staging folders and files of ``destination`` left by dead processes of this host; a replaced
    result set aside by a process killed between its two renames is put back. Returns what was removed."""
    parent, removed = destination.parent, []
    if not parent.is_dir():
        return removed
    for path in parent.glob(f".{glob_escape(destination.name)}.p*"):
        if PARTIAL not in path.name or not _stale(path.name[len(destination.name) + 1:]):
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
    removed = [p for p in root.glob(f"{SCRATCH_PREFIX}p*") if _stale(p.name[len(SCRATCH_PREFIX):])]
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
            raise ConfigError(f"output {kind} {path} {what}: pass {flag} to replace it (whole, once the new result "
                              f"is complete) or choose another path")
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
def staged_folder(destination: str | Path) -> Iterator[Path]:
    """A hidden folder beside ``destination``, renamed onto it when the block succeeds (replacing what was there),
    removed otherwise, whatever the exception (KeyboardInterrupt and SIGTERM included)."""
    destination = Path(destination)
    if destination.exists() and not destination.is_dir():
        raise StorageError(f"cannot write the folder {destination}: it exists and is not a folder")
    sweep_stale(destination)
    folder = _mkdtemp(destination)
    try:
        yield folder
        swap_into_place(folder, destination)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


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
        handle, name = tempfile.mkstemp(prefix=f".{destination.name}.{_tag()}", suffix=PARTIAL + destination.suffix,
                                        dir=destination.parent)  # fmt: skip
    except OSError as e:
        raise StorageError(f"cannot write {destination}: {e.strerror or e}") from None
    os.close(handle)
    try:
        yield Path(name)
        os.replace(name, destination)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(name)
