"""The register stage: log the run, register the pruned model in MLflow, gate the alias, write the report."""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException

from ..folders import MANIFEST_NAME, MASKS_FILE, STAGE_ORDER, numeric_results, stage_info
from ..ops.registry import (
    RegistryError,
    check_tracking_uri,
    evaluation_gate,
    log_pruned_model,
    parse_models_uri,
    redacted,
)
from ..ops.registry_extras import (
    kubeflow_run_id,
    log_onnx,
    onnx_metadata,
    onnx_version_tags,
    registration_run,
    without_onnx,
)
from .config import RegisterParams

log = logging.getLogger(__name__)


REPORT_FILE = "report.md"


REPORT_HTML = "report.html"


CANDIDATE_TAG = "fastprune.candidate"  # a model version's registration: its pipeline run and exported files


def _params(stages: dict[str, dict]) -> dict[str, str]:
    return {
        f"{info['stage']}.{key}": json.dumps(value) if isinstance(value, list) else str(value)
        for info in stages.values()
        for key, value in info["params"].items()
        if key != "tracking_uri"
    }


def _metrics(stages: dict[str, dict]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for info in stages.values():
        metrics.update({k: v for k, v in numeric_results(info).items() if k not in metrics})
        metrics[f"seconds_{info['stage']}"] = info["seconds"]
    return metrics


def _tags(p: RegisterParams, stages: dict[str, dict], passed: bool, reason: str) -> dict[str, str]:
    pruned, sample = stages["pruned"], stages.get("sample", {})
    tags = {
        "task": pruned["task"],
        "source_model": pruned["source"],
        "data_sha256": sample.get("train_sha256"),
        "train_data": sample.get("train_file"),
        "pipeline_run": p.pipeline_run,
        "gate": "passed" if passed else "failed",
        "gate_reason": reason,
    }
    return {k: str(v) for k, v in tags.items() if v is not None}


def _write_report(
    p: RegisterParams,
    stages: dict[str, dict],
    tags: dict,
    version: str,
    tuned: Path,
    out: Path,
    deploy: dict | None = None,
) -> list[Path]:
    """``report.md``, ``report.html`` (self-contained) and the picture of the units kept per layer, in ``out``."""
    from ..model.masks import Masks
    from ..ops.report import KEPT_UNITS_PNG, kept_units_picture, run_report

    masks = Masks.load(tuned / MASKS_FILE)
    picture = kept_units_picture(
        masks.heads_per_layer(),
        masks.head.shape[1],
        masks.neurons_per_layer(),
        masks.neuron.shape[1],
        out / KEPT_UNITS_PNG,
    )
    gate = {"passed": tags["gate"] == "passed", "reason": tags["gate_reason"], "pipeline_run": tags.get("pipeline_run")}
    report = run_report(stages, gate, picture, f"{p.model_name} version {version}", p.alias)
    if deploy is not None:
        from ..ops.deploy_report import add_deploy_section

        add_deploy_section(report, f"models:/{p.model_name}/{version}", task=tags["task"], **deploy)
    markdown, page = report.write(out)
    return [markdown, page, picture]


def _description(stages: dict[str, dict], tags: dict, run_id: str) -> str:
    """The model version's description (MLflow renders it as Markdown): the gate decision and the key figures."""
    pruned, profile = stages["pruned"], stages.get("profile", {})
    speedup = f", speedup {profile['speedup']:.2f}x on {profile.get('device')}" if "speedup" in profile else ""
    return (
        f"**Gate {tags['gate']}**: {tags['gate_reason']}. FLOPs kept {pruned['flops_ratio']:.3f}, parameters "
        f"{pruned['params_before']:,} -> {pruned['params_after']:,}{speedup}. "
        f"Full report: `runs:/{run_id}/{REPORT_HTML}` (and `{REPORT_FILE}`)."
    )


def register(p: RegisterParams, out: Path, pruned: Path, tuned: Path, evaluation: Path, **others: Path) -> dict:
    """Log a run (params, metrics, masks, report, model), register a new version of ``p.model_name``, and move
    ``p.alias`` to it only when the metric dropped by at most ``p.max_drop`` points.

    Safe to retry: within one pipeline run, a model already registered by an earlier attempt (the same
    ``pipeline_run`` and the same exported files, tagged ``fastprune.candidate``) is reused, not registered
    twice, and the steps after its registration (description, alias, report) are done again."""
    folders = {"pruned": pruned, "tuned": tuned, "evaluation": evaluation, **others}
    infos = {name: stage_info(folder) for name, folder in folders.items()}
    stages = dict(sorted(infos.items(), key=lambda item: STAGE_ORDER.index(item[1]["stage"])))  # pipeline order
    ev = stages["evaluation"]
    passed, reason = evaluation_gate(ev, p.max_drop)
    tags = _tags(p, stages, passed, reason)
    kubeflow = kubeflow_run_id(p.tracking_uri)  # before set_tracking_uri, which sets MLFLOW_TRACKING_URI
    if p.tracking_uri:
        check_tracking_uri(p.tracking_uri)
        mlflow.set_tracking_uri(p.tracking_uri)
    uri = redacted(mlflow.get_tracking_uri())
    candidate = _candidate(p, pruned)
    try:
        client = mlflow.MlflowClient()
        earlier = _registered_candidate(client, p.model_name, candidate)
        with (
            registration_run(
                p.experiment,
                f"{p.model_name}-{tags.get('pipeline_run', 'cli')}",
                earlier.run_id if earlier else None,
                kubeflow,
            ) as (run, run_source),
            tempfile.TemporaryDirectory() as scratch,
        ):
            if earlier:
                version = str(earlier.version)
                log.info(
                    "%s version %s was registered by an earlier attempt of %s: finishing it",
                    p.model_name,
                    version,
                    p.pipeline_run,
                )
            else:
                mlflow.log_params(_params(stages))
                mlflow.log_metrics(_metrics(stages))
                mlflow.set_tags(tags)
                mlflow.log_artifact(str(tuned / MASKS_FILE))
                mlflow.log_dict(stages, "stages.json")
                log_onnx(pruned)  # once, as artifacts of the run; the pyfunc model gets the folder without it
                info = log_pruned_model(without_onnx(pruned, Path(scratch)), stages["pruned"]["task"], out)
                version_tags = {**tags, CANDIDATE_TAG: candidate} if candidate else tags
                version = str(mlflow.register_model(info.model_uri, p.model_name, tags=version_tags).version)
            client.update_model_version(p.model_name, version, description=_description(stages, tags, run.info.run_id))
            if passed:
                client.set_registered_model_alias(p.model_name, p.alias, version)
            onnx = onnx_metadata(pruned)
            for key, value in onnx_version_tags(run.info.run_id, onnx).items():
                client.set_model_version_tag(p.model_name, version, key, value)
            deploy = {
                "run_id": run.info.run_id,
                "onnx": onnx,
                "model_folder": f"artifacts/{'model' if onnx else pruned.name}",
            }  # see without_onnx
            for file in _write_report(p, stages, tags, version, tuned, out, deploy):
                mlflow.log_artifact(str(file))
            client.set_model_version_tag(p.model_name, version, "report", f"runs:/{run.info.run_id}/{REPORT_HTML}")
    except MlflowException as e:
        raise RegistryError(f"MLflow at {uri} refused to register {p.model_name}: {e.message}") from e
    log.info("registered %s version %s (%s)", p.model_name, version, reason)
    _mark_source(
        stages["pruned"]["source"], p.pipeline_run or run.info.run_id, f"models:/{p.model_name}/{version}", tags["gate"]
    )
    return {
        "model_name": p.model_name,
        "version": version,
        "alias": p.alias if passed else None,
        "model_uri": f"models:/{p.model_name}/{version}",
        "run_id": run.info.run_id,
        "tracking_uri": uri,
        "gate": tags["gate"],
        "gate_reason": reason,
        "gate_passed": passed,
        "mlflow_run": run_source,
        **({"onnx": f"runs:/{run.info.run_id}/{onnx['artifact_path']}"} if onnx else {}),
    }


def _candidate(p: RegisterParams, pruned: Path) -> str | None:
    """What identifies one registration across retries: the pipeline run and the exported files' manifest (None
    outside a pipeline run: each call from the command line registers a new version)."""
    if not p.pipeline_run:
        return None
    manifest = (pruned / MANIFEST_NAME).read_bytes()
    return hashlib.sha256(p.pipeline_run.encode() + b"\n" + manifest).hexdigest()


def _registered_candidate(client: mlflow.MlflowClient, name: str, candidate: str | None):
    """The model version an earlier attempt registered for ``candidate``, if any."""
    if candidate is None:
        return None
    try:
        found = client.search_model_versions(f"name = '{name}' and tags.`{CANDIDATE_TAG}` = '{candidate}'")
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    return min(found, key=lambda v: int(v.version)) if found else None


def _mark_source(source: str, pipeline_run: str, pruned_model: str, gate: str) -> None:
    """When the source was a registered model version (``models:/NAME/VERSION``), tag it as pruned by this run, so
    that ``fastprune trigger`` never prunes it again. A refusal is logged, not raised: the model is registered."""
    if not source.startswith("models:/"):
        return
    from ..ops.trigger import mark_succeeded

    name, version, _ = parse_models_uri(source)
    try:
        mark_succeeded(mlflow.MlflowClient(), name, str(version), pipeline_run, pruned_model, gate)
    except MlflowException as e:
        log.warning("could not tag the source %s as pruned: %s", source, e.message)
