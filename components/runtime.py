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
_HTML_REPORTS = {"register": "report.html"}


STAGE_NAMES = {
    "mlflow_uri": "tracking_uri",
    "registered_model_name": "model_name",
    "max_metric_drop": "max_drop",
    "mlflow_experiment": "experiment",
}
"""The run parameters whose stage parameter has the library's name (component and pipeline name -> stage name)."""


def stage_arguments(stage: str, arguments: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A component's arguments (its ``locals()``) split into the stage's parameters and its input artifacts."""
    from fastprune.common.stages.run import STAGES

    spec = STAGES[stage]
    params = {
        STAGE_NAMES.get(k, k): v for k, v in arguments.items() if STAGE_NAMES.get(k, k) in spec.params.model_fields
    }
    inputs = {k: v for k, v in arguments.items() if k in spec.inputs + spec.optional}
    return params, inputs


def run_component(
    stage: str, output: Any, metrics: Any, arguments: dict[str, Any], report: Any = None, html: Any = None
) -> dict:
    """Run ``stage`` with the component's ``arguments`` (its parameters, named as the stage's options, and its input
    artifacts, whose folders the stage reads), writing the output artifact's folder (and its Markdown / HTML report
    to ``report`` / ``html``, which the Kubeflow UI shows)."""
    from fastprune.common.folders import numeric_results
    from fastprune.common.interrupts import install_signal_handlers
    from fastprune.common.ops.remote import apply_remote_timeouts, secure_logging
    from fastprune.common.stages.run import run_stage

    secure_logging()
    install_signal_handlers()  # a deleted pod's SIGTERM removes the step's staging folder on the way out
    params, inputs = stage_arguments(stage, arguments)

    try:
        apply_remote_timeouts()
        info = run_stage(stage, output.path, params, **{name: a.path for name, a in inputs.items()})
    except Exception as e:
        _record_failure(Path(output.path), stage, e)
        raise
    output.metadata.update(lineage(info, Path(output.path), {name: a.uri for name, a in inputs.items()}))
    for name, value in {**numeric_results(info), "seconds": info["seconds"]}.items():
        metrics.log_metric(name, value)
    if report is not None:
        shutil.copyfile(Path(output.path) / _REPORTS[stage], report.path)
    if html is not None:
        shutil.copyfile(Path(output.path) / _HTML_REPORTS[stage], html.path)
    return info


def lineage(info: dict, folder: Path, inputs: dict[str, str]) -> dict:
    """The stage's parameters, short results, input URIs and the sha256 of its manifest."""
    short = {
        k: v
        for k, v in info.items()
        if isinstance(v, str | int | float | bool)
        or (isinstance(v, list) and len(v) <= 64 and all(isinstance(x, int | float) for x in v))
    }
    manifest = hashlib.sha256((folder / "MANIFEST.json").read_bytes()).hexdigest()
    return {**short, "params": info["params"], "inputs": inputs, "manifest_sha256": manifest}


def _record_failure(output: Path, stage: str, error: Exception) -> None:
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        from fastprune.common.ops.remote import redact

        (output.parent / FAILURE_FILE).write_text(
            json.dumps({"stage": stage, "error": redact(str(error)), "type": type(error).__name__})
        )
    except OSError:  # reporting must never hide the error itself
        pass


NOTHING_CHOSEN = "NOTHING_CHOSEN.txt"


def run_select(
    candidates: dict[str, list], chosen: dict[str, Any], sweep: Any, report: Any, metrics: Any, params: dict
) -> bool:
    """The sweep's selection over the collected candidate artifacts (one list per part, in constraint order):
    write the sweep folder, copy the chosen candidate's folders to the ``chosen`` outputs; True if one passed."""
    from fastprune.common.stages.sweep import select_stage

    counts = {part: len(artifacts) for part, artifacts in candidates.items()}
    if len(set(counts.values())) != 1:
        raise ValueError(f"every part of the sweep needs one artifact per candidate, got {counts}")
    folders: list[dict[str, Path | None]] = [
        {part: Path(artifacts[i].path) for part, artifacts in candidates.items()}
        for i in range(next(iter(counts.values())))
    ]
    try:
        info = select_stage(sweep.path, params, folders)
    except Exception as e:
        _record_failure(Path(sweep.path), "select", e)
        raise
    sweep.metadata.update(lineage(info, Path(sweep.path), {}))
    for name in (
        "num_candidates",
        "num_passed",
        "chosen_constraint",
        "metric_after",
        "flops_ratio",
        "params_after",
        "seconds",
    ):
        if info.get(name) is not None:
            metrics.log_metric(name, info[name])
    shutil.copyfile(Path(sweep.path) / "sweep.html", report.path)
    index = info["chosen"]
    for part, output in chosen.items():
        destination = Path(output.path)
        if index is None:  # nothing to register: leave a note, so that every declared output exists
            destination.mkdir(parents=True, exist_ok=True)
            (destination / NOTHING_CHOSEN).write_text("no candidate of the sweep passed the accuracy gate\n")
            continue
        shutil.copytree(folders[index][part], destination, dirs_exist_ok=True)
        output.metadata.update(
            {"constraint": info["chosen_constraint"], "candidate": index, "copied_from": candidates[part][index].uri}
        )
    return index is not None
