"""What registration adds around MLflow's own calls: the run to log under (Kubeflow's, when its MLflow integration
opened one for this step), and the ONNX folder of the exported model, logged once as artifacts of the run (tag
``onnx`` on the model version) rather than twice inside the pyfunc model too."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import mlflow

from ..folders import MANIFEST_NAME, write_manifest
from ..model.onnx_folder import ONNX_FILE, ONNX_META, ONNX_SUBFOLDER

ONNX_ARTIFACT_PATH = "onnx"
KUBEFLOW_RUN_TAG = "fastprune.mlflow_run"


def local_artifact_root(tracking_uri: str) -> str | None:
    """Where a new experiment of a local SQLite tracking store keeps its artifacts: ``artifacts/`` beside the
    database (MLflow's own default, ``./mlruns``, is relative to whatever folder the command ran in). None for any
    other store, whose server decides."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    database = Path(tracking_uri.removeprefix("sqlite:///").split("?", 1)[0])
    return (database.resolve().parent / "artifacts").as_uri()


def create_missing_experiment(tracking_uri: str, name: str) -> None:
    """Create experiment ``name`` in the store at ``tracking_uri`` when it is missing (artifacts beside a local
    database, :func:`local_artifact_root`)."""
    client = mlflow.MlflowClient(tracking_uri)
    if client.get_experiment_by_name(name) is None:
        with contextlib.suppress(mlflow.exceptions.MlflowException):  # another process just created it
            client.create_experiment(name, artifact_location=local_artifact_root(tracking_uri))


def use_experiment(name: str) -> None:
    """Make ``name`` the active experiment, creating it when it is missing."""
    create_missing_experiment(mlflow.get_tracking_uri(), name)
    mlflow.set_experiment(name)


def _same_uri(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


def kubeflow_run_id(tracking_uri: str | None) -> str | None:
    """The MLflow run Kubeflow's MLflow integration opened for this step: ``MLFLOW_RUN_ID`` when the environment also
    names the tracking server (``MLFLOW_TRACKING_URI``) and the step was not pointed at another one."""
    run_id, env_uri = os.environ.get("MLFLOW_RUN_ID"), os.environ.get("MLFLOW_TRACKING_URI")
    if not run_id or not env_uri or (tracking_uri and not _same_uri(tracking_uri, env_uri)):
        return None
    return run_id


@contextlib.contextmanager
def registration_run(
    experiment: str, run_name: str, resume: str | None, kubeflow: str | None
) -> Iterator[tuple[mlflow.ActiveRun, str]]:
    """The active run for a registration and where it came from (``earlier``, ``kubeflow`` or ``new``): the run of an
    earlier attempt (``resume``), else Kubeflow's run for this step (``kubeflow``: :func:`kubeflow_run_id`, taken
    before anything sets the tracking URI), else a new run in ``experiment``. MLflow is never left to pick
    ``MLFLOW_RUN_ID`` up by itself (a run of another server or experiment would fail)."""
    saved = os.environ.pop("MLFLOW_RUN_ID", None)
    try:
        run_id, source = (resume, "earlier") if resume else (kubeflow, "kubeflow") if kubeflow else (None, "new")
        if run_id:  # log under that run, in its own experiment
            mlflow.set_experiment(experiment_id=mlflow.MlflowClient().get_run(run_id).info.experiment_id)
        else:
            use_experiment(experiment)
        with mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name) as run:
            if source == "kubeflow":
                mlflow.set_tag(KUBEFLOW_RUN_TAG, "kubeflow")
            yield run, source
    finally:
        if saved is not None:
            os.environ["MLFLOW_RUN_ID"] = saved


def onnx_folder_of(pruned: Path) -> Path | None:
    folder = Path(pruned) / ONNX_SUBFOLDER
    return folder if (folder / ONNX_FILE).is_file() else None


def onnx_metadata(pruned: Path) -> dict | None:
    """The ONNX folder's metadata with its ``artifact_path`` in the run, or None when the export made none."""
    folder = onnx_folder_of(pruned)
    if folder is None:
        return None
    meta = json.loads((folder / ONNX_META).read_text()) if (folder / ONNX_META).is_file() else {}
    return {**meta, "artifact_path": ONNX_ARTIFACT_PATH}


def log_onnx(pruned: Path) -> dict | None:
    """Log the export's ONNX folder as ``onnx/`` artifacts of the active run; its metadata, or None."""
    folder = onnx_folder_of(pruned)
    if folder is None:
        return None
    mlflow.log_artifacts(str(folder), ONNX_ARTIFACT_PATH)
    return onnx_metadata(pruned)


def onnx_version_tags(run_id: str, meta: dict | None) -> dict[str, str]:
    if not meta:
        return {}
    return {
        "onnx": f"runs:/{run_id}/{meta['artifact_path']}",
        "onnx_quantization": str(meta.get("quantization")),
        "onnx_per_channel": str(meta.get("per_channel")),
    }


def without_onnx(pruned: Path, workdir: Path) -> Path:
    """The exported folder for the pyfunc model: as it is, or, when it holds an ONNX sub-folder (logged apart), a
    copy without it (hard links where possible) named ``model``, with its manifest rewritten."""
    if onnx_folder_of(pruned) is None:
        return pruned
    copy = workdir / "model"
    if copy.exists():
        shutil.rmtree(copy)
    for file in sorted(p for p in pruned.rglob("*") if p.is_file()):
        relative = file.relative_to(pruned)
        if relative.parts[0] == ONNX_SUBFOLDER or relative.as_posix() == MANIFEST_NAME:  # never a link to the manifest
            continue
        target = copy / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(file, target)
        except OSError:
            shutil.copy2(file, target)
    write_manifest(copy)
    return copy
