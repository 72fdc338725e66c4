"""Run the pipeline on this machine with kfp.local: every step a subprocess in the current environment, the
artifacts in folders under the pipeline root."""

from __future__ import annotations

import json
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..common.errors import FastpruneError
from ..common.stages import stage_info
from ..components.runtime import FAILURE_FILE
from .prune_pipeline import PIPELINE_NAME, build_pipeline


class PipelineFailed(FastpruneError):
    """A step of a local pipeline run failed; the message names the step and its error."""


@dataclass(frozen=True)
class LocalRun:
    folder: Path  # the run's folder under the pipeline root: one sub-folder per step
    registration: dict  # the register step's results (model name, version, alias, gate, ...)

    def artifact(self, step: str, name: str) -> Path:
        """The folder of output ``name`` of ``step`` (the step's name in the DAG, e.g. ``export-model``)."""
        return self.folder / step / name


def run_local(arguments: dict, pipeline_root: str | Path) -> LocalRun:
    """Run the pipeline with ``arguments`` (the pipeline's parameters) under ``pipeline_root``."""
    from kfp import local

    root = Path(pipeline_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    started = time.time()
    try:
        with warnings.catch_warnings():  # kfp.local warns, per step, about the settings it cannot honour
            warnings.filterwarnings("ignore", message=".*non-Python base image")
            warnings.filterwarnings("ignore", message=".*have no effect in the current local runner")
            build_pipeline(retries=0)(**arguments)
    except RuntimeError as e:
        raise PipelineFailed(_failure(root, started) or _plain(str(e))) from None
    folder = _latest_run(root, started)
    return LocalRun(folder, stage_info(folder / "register-model" / "registration"))


def _runs_since(root: Path, started: float) -> list[Path]:
    runs = [p for p in root.glob(f"{PIPELINE_NAME}-*") if p.is_dir() and p.stat().st_mtime >= started - 1]
    return sorted(runs, key=lambda p: p.stat().st_mtime)


def _latest_run(root: Path, started: float) -> Path:
    runs = _runs_since(root, started)
    if not runs:
        raise PipelineFailed(f"the pipeline run left no folder under {root}")
    return runs[-1]


def _failure(root: Path, started: float) -> str | None:
    for run in reversed(_runs_since(root, started)):
        for record in run.glob(f"*/{FAILURE_FILE}"):
            failure = json.loads(record.read_text())
            return f"step {record.parent.name} ({failure['stage']}) failed: {failure['error']}"
    return None


def _plain(message: str) -> str:
    """kfp.local's message without its ANSI colours."""
    return re.sub(r"\x1b\[[0-9;]*m", "", message)


def local_mlflow(folder: str | Path, experiment: str) -> str:
    """A local MLflow under ``folder`` (SQLite database + artifact folder) with ``experiment`` in it; returns
    its tracking URI."""
    from mlflow import MlflowClient

    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(uri)
    if client.get_experiment_by_name(experiment) is None:
        client.create_experiment(experiment, artifact_location=(folder / "artifacts").as_uri())
    return uri
