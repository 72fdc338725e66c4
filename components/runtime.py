"""What every component does around its stage: map KFP artifacts to folders, run the stage, and publish its
results as Metrics (shown in the Kubeflow UI) and lineage metadata on the output artifact.

Imported inside the component bodies, so it runs in the step's container (the project image)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

FAILURE_FILE = "fastprune-failure.json"
"""Written beside a failed step's outputs, so a local run can say which step failed and why."""
_REPORTS = {"profile": "profile.md", "register": "report.md"}


def run_component(stage: str, output: Any, metrics: Any, params: dict, report: Any = None, **inputs: Any) -> dict:
    """Run ``stage`` with the input artifacts' folders, writing the output artifact's folder."""
    from fastprune.common.stages import numeric_results, run_stage

    try:
        info = run_stage(stage, output.path, params, **{name: a.path for name, a in inputs.items()})
    except Exception as e:
        _record_failure(Path(output.path), stage, e)
        raise
    output.metadata.update(lineage(info, Path(output.path), {name: a.uri for name, a in inputs.items()}))
    for name, value in {**numeric_results(info), "seconds": info["seconds"]}.items():
        metrics.log_metric(name, value)
    if report is not None:
        shutil.copyfile(Path(output.path) / _REPORTS[stage], report.path)
    return info


def lineage(info: dict, folder: Path, inputs: dict[str, str]) -> dict:
    """The stage's parameters, short results, input URIs and the sha256 of its manifest."""
    short = {k: v for k, v in info.items() if isinstance(v, str | int | float | bool) or (
        isinstance(v, list) and len(v) <= 64 and all(isinstance(x, int | float) for x in v))}
    manifest = hashlib.sha256((folder / "MANIFEST.json").read_bytes()).hexdigest()
    return {**short, "params": info["params"], "inputs": inputs, "manifest_sha256": manifest}


def _record_failure(output: Path, stage: str, error: Exception) -> None:
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        (output.parent / FAILURE_FILE).write_text(json.dumps({"stage": stage, "error": str(error),
                                                             "type": type(error).__name__}))
    except OSError:  # reporting must never hide the error itself
        pass
