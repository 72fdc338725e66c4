"""A real virtual environment WITHOUT fastprune, for the tests of what must run where fastprune is not installed.

``python -m venv`` makes the environment; a ``.pth`` file adds this environment's site-packages directory to it as a
plain path, so torch, transformers and mlflow import there (no download), but fastprune does not: it is installed in
editable mode through a finder that only this environment's own ``.pth`` files install, and a plain path's ``.pth``
files are not run. :func:`clean_venv` checks that ``import fastprune`` fails there.
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CleanVenv:
    root: Path

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def python(self) -> Path:
        return self.bin / "python"

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a process in this venv: its bin first on PATH, no PYTHONPATH, offline hub."""
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env.update(
            PATH=f"{self.bin}{os.pathsep}/usr/bin:/bin",
            VIRTUAL_ENV=str(self.root),
            HF_HUB_OFFLINE="1",
            PYTHONNOUSERSITE="1",
            **extra,
        )
        return env

    def run(self, args: list[str], cwd: Path, timeout: float = 300, **extra: str) -> subprocess.CompletedProcess:
        """Run ``python ARGS`` in this venv, from ``cwd`` (never the repository: its ``fastprune/`` would import)."""
        return subprocess.run(
            [str(self.python), *args],
            cwd=cwd,
            env=self.env(**extra),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )


_UVICORN = """#!{python}
import sys

from uvicorn.main import main

sys.exit(main())
"""


def clean_venv(root: Path) -> CleanVenv:
    """A venv at ``root`` that sees this environment's packages except fastprune (and an ``uvicorn`` command, which
    ``mlflow models serve`` runs from PATH)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    venv = CleanVenv(root)
    purelib = subprocess.run(
        [str(venv.python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    ours = [p for p in site.getsitepackages() if Path(p).is_dir()]
    Path(purelib, "fastprune_test_packages.pth").write_text("".join(f"{p}\n" for p in ours))
    uvicorn = venv.bin / "uvicorn"
    uvicorn.write_text(_UVICORN.format(python=venv.python))
    uvicorn.chmod(0o755)
    check = venv.run(["-c", "import fastprune"], cwd=root)
    if check.returncode == 0 or "No module named 'fastprune'" not in check.stderr:
        raise AssertionError(f"fastprune is importable in the clean venv {root}: {check.stderr[-500:]}")
    return venv
