"""Run the pipeline on this machine with kfp.local: every step a subprocess in the current environment, the
artifacts in folders under the pipeline root."""

from __future__ import annotations

import builtins
import json
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..common.errors import FastpruneError
from ..common.folders import stage_info
from ..components.runtime import FAILURE_FILE
from .prune_pipeline import PIPELINE_NAME

_LOCAL_OPTIONS = {"sweep": {"accelerators": False}}
"""How each pipeline is built for kfp.local, beyond ``retries=0`` (a bad input fails at once)."""


class PipelineFailed(FastpruneError):
    """A step of a local pipeline run failed; the message names the step and its error."""


@dataclass(frozen=True)
class LocalRun:
    folder: Path  # the run's folder under the pipeline root: one sub-folder per step
    registration: dict  # the register step's results (model name, version, alias, gate, ...)

    def artifact(self, step: str, name: str) -> Path:
        """The folder of output ``name`` of ``step`` (the step's name in the DAG, e.g. ``export-model``)."""
        return self.folder / step / name


def run_local(arguments: dict, pipeline_root: str | Path, pipeline: str = "prune") -> LocalRun:
    """Run the pipeline (``prune`` or the budget ``sweep``) with ``arguments`` (its parameters) under
    ``pipeline_root``. ``registration`` is empty when nothing was registered (a sweep without a passing
    candidate)."""
    from kfp import local

    from .submit import pipeline_factory

    build, _, name = pipeline_factory(pipeline)  # type: ignore[arg-type]
    root = Path(pipeline_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    started = time.time()
    original_print = builtins.print  # kfp.local indents print() per step by swapping builtins.print, which parallel
    try:  # steps (a ParallelFor) can leave swapped: put it back afterwards
        with warnings.catch_warnings():  # kfp.local warns, per step, about the settings it cannot honour
            warnings.filterwarnings("ignore", message=".*non-Python base image")
            warnings.filterwarnings("ignore", message=".*have no effect in the current local runner")
            build(retries=0, **_LOCAL_OPTIONS.get(pipeline, {}))(**arguments)
    except RuntimeError as e:
        raise PipelineFailed(_failure(root, started, name) or _plain(str(e))) from None
    finally:
        builtins.print = original_print
    folder = _latest_run(root, started, name)
    registration = folder / "register-model" / "registration"
    return LocalRun(folder, stage_info(registration) if registration.is_dir() else {})


def _runs_since(root: Path, started: float, name: str = PIPELINE_NAME) -> list[Path]:
    runs = [p for p in root.glob(f"{name}-[0-9][0-9][0-9][0-9]-*") if p.is_dir() and p.stat().st_mtime >= started - 1]
    return sorted(runs, key=lambda p: p.stat().st_mtime)


def _latest_run(root: Path, started: float, name: str = PIPELINE_NAME) -> Path:
    runs = _runs_since(root, started, name)
    if not runs:
        raise PipelineFailed(f"the pipeline run left no folder under {root}")
    return runs[-1]


def _failure(root: Path, started: float, name: str = PIPELINE_NAME) -> str | None:
    for run in reversed(_runs_since(root, started, name)):
        for record in run.rglob(FAILURE_FILE):  # a step in a ParallelFor is one folder deeper
            failure = json.loads(record.read_text())
            return f"step {record.parent.name} ({failure['stage']}) failed: {failure['error']}"
    return None


def _plain(message: str) -> str:
    """kfp.local's message without its ANSI colours."""
    return re.sub(r"\x1b\[[0-9;]*m", "", message)


def local_mlflow(folder: str | Path, experiment: str) -> str:
    """A local MLflow under ``folder`` (SQLite database + artifact folder) with ``experiment`` in it; returns
    its tracking URI."""
    from ..common.ops.registry_extras import create_missing_experiment

    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    create_missing_experiment(uri, experiment)
    return uri
