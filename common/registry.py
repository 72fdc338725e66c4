"""MLflow: record a pruning run, register the pruned model as a new model version, move an alias to it only
when the accuracy gate passes, and load it back as a pyfunc that predicts from raw text (answers from questions
and contexts for a question-answering model).

The registered model is a custom ``mlflow.pyfunc`` model (:class:`PrunedTextModel`) whose one artifact is the
exported model folder (safetensors, config with the per-layer structure, tokenizer; checked against its
manifest on load). Loading it needs nothing but fastprune installed::

    mlflow.pyfunc.load_model("models:/NAME@pruned-candidate").predict(pd.DataFrame({"text": ["a fine movie"]}))
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from urllib.parse import urlsplit

import mlflow
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

from .config import RegisterParams
from .errors import ConfigError, FastpruneError
from .export import load_pruned
from .stages import MASKS_FILE, STAGES, numeric_results, stage_info
from .storage import MANIFEST_NAME, verify_manifest
from .tasks import TaskSpec, get_task

log = logging.getLogger(__name__)

REPORT_FILE = "report.md"
REPORT_HTML = "report.html"
CANDIDATE_TAG = "fastprune.candidate"  # a model version's registration: its pipeline run and exported files
SIGNATURE = ModelSignature(inputs=Schema([ColSpec("string", "text"), ColSpec("string", "text_pair", required=False)]))
QA_SIGNATURE = ModelSignature(inputs=Schema([ColSpec("string", "question"), ColSpec("string", "context")]))


class RegistryError(FastpruneError):
    """The MLflow tracking server is unreachable or refused a request."""


def _redacted(uri: str) -> str:
    parts = urlsplit(uri)
    return uri.replace(f"{parts.username}:{parts.password}@", "") if parts.password else uri


def check_tracking_uri(uri: str) -> None:
    """Fail fast, naming the URI, when an MLflow tracking server does not answer (any HTTP answer is fine)."""
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=5)
    except requests.RequestException as e:
        raise RegistryError(
            f"cannot reach the MLflow tracking server at {_redacted(uri)} ({type(e).__name__}): is it running? "
            "Check --mlflow-uri (the pipeline's mlflow_uri)"
        ) from e


def accuracy_gate(before: float, after: float, max_drop: float, metric: str) -> tuple[bool, str]:
    """Whether the task metric dropped by at most ``max_drop`` points, and a sentence saying so."""
    drop = before - after
    passed = drop <= max_drop
    verdict = "within" if passed else "more than"
    return passed, (f"{metric} {before:.2f} -> {after:.2f}: a drop of {drop:.2f} points, "
                    f"{verdict} the allowed {max_drop:g}")


# ----- the pyfunc ------------------------------------------------------------------------------------------
def predict_text(model, tokenizer, task: TaskSpec, frame: pd.DataFrame, batch_size: int = 64) -> pd.DataFrame:
    """Predictions for a DataFrame: a sequence classifier's ``label``, ``score`` and ``probabilities`` (a regressor's
    ``score``) from ``text`` (and ``text_pair``); a question-answering model's ``answer``, its character ``start``
    and ``end`` in the context and its ``score`` from ``question`` and ``context``."""
    frame = frame if isinstance(frame, pd.DataFrame) else pd.DataFrame(frame)
    if task.is_qa:
        return _predict_answers(model, tokenizer, task, frame)
    if "text" not in frame.columns:
        raise ValueError(f"the input needs a 'text' column (and optionally 'text_pair'); got {list(frame.columns)}")
    texts = frame["text"].astype(str).tolist()
    pairs = frame["text_pair"].fillna("").astype(str).tolist() if "text_pair" in frame.columns else None
    pairs = pairs if pairs and any(pairs) else None
    chunks = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            encoded = tokenizer(texts[i : i + batch_size], pairs[i : i + batch_size] if pairs else None,
                                truncation=True, max_length=task.max_length, padding=True, return_tensors="pt")
            chunks.append(model(**encoded).logits.float())
    logits = torch.cat(chunks) if chunks else torch.zeros(0, task.num_labels)
    if task.kind == "regression":
        return pd.DataFrame({"score": logits[:, 0].numpy()})
    probabilities = logits.softmax(-1)
    return pd.DataFrame({"label": probabilities.argmax(-1).numpy(), "score": probabilities.max(-1).values.numpy(),
                         "probabilities": probabilities.numpy().tolist()})


def _predict_answers(model, tokenizer, task: TaskSpec, frame: pd.DataFrame) -> pd.DataFrame:
    from .qa import answer_questions

    missing = [c for c in ("question", "context") if c not in frame.columns]
    if missing:
        raise ValueError(f"a question-answering model needs 'question' and 'context' columns; missing {missing}, "
                         f"got {list(frame.columns)}")  # fmt: skip
    if frame.empty:
        return pd.DataFrame({"answer": [], "start": [], "end": [], "score": []})
    spans = answer_questions(model, tokenizer, frame["question"].astype(str).tolist(),
                             frame["context"].astype(str).tolist(), max_length=task.max_length,
                             version_2=task.name == "squad_v2")  # fmt: skip
    none = {"answer": "", "start": -1, "end": -1, "score": float("nan")}
    return pd.DataFrame([span or none for span in spans], columns=["answer", "start", "end", "score"])


class PrunedTextModel(mlflow.pyfunc.PythonModel):
    """A pruned model rebuilt with :func:`load_pruned` from its artifact folder; predicts from raw text."""

    def load_context(self, context) -> None:
        folder = Path(context.artifacts["model"])
        verify_manifest(folder)
        self.model, self.tokenizer = load_pruned(folder)
        self.task = get_task(context.model_config["task"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return predict_text(self.model, self.tokenizer, self.task, model_input)


_MODEL_CODE = """\"\"\"MLflow entry point of a model registered by fastprune (a model from code: nothing pickled).\"\"\"

from mlflow.models import set_model

from fastprune.common.registry import PrunedTextModel

set_model(PrunedTextModel())
"""


def log_pruned_model(pruned: Path, task: str, workdir: Path):
    """Log the exported model folder as a :class:`PrunedTextModel` in the active run (its entry point, a
    three-line file, is written to ``workdir``)."""
    from .. import __version__

    code = workdir / "pyfunc_model.py"
    code.write_text(_MODEL_CODE)
    if get_task(task).is_qa:
        signature = QA_SIGNATURE
        example = pd.DataFrame({"question": ["Who wrote it?"], "context": ["It was written by Ann Lee in 1990."]})
    else:
        signature, example = SIGNATURE, pd.DataFrame({"text": ["a fine movie"]})  # MLflow runs the example
    return mlflow.pyfunc.log_model(
        name="model", python_model=str(code), artifacts={"model": str(pruned)}, model_config={"task": task},
        signature=signature, input_example=example, pip_requirements=[f"fastprune=={__version__}"],
    )


# ----- registration ------------------------------------------------------------------------------------------
def _params(stages: dict[str, dict]) -> dict[str, str]:
    return {f"{info['stage']}.{key}": json.dumps(value) if isinstance(value, list) else str(value)
            for info in stages.values() for key, value in info["params"].items() if key != "tracking_uri"}


def _metrics(stages: dict[str, dict]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for info in stages.values():
        metrics.update({k: v for k, v in numeric_results(info).items() if k not in metrics})
        metrics[f"seconds_{info['stage']}"] = info["seconds"]
    return metrics


def _tags(p: RegisterParams, stages: dict[str, dict], passed: bool, reason: str) -> dict[str, str]:
    pruned, sample = stages["pruned"], stages.get("sample", {})
    tags = {"task": pruned["task"], "source_model": pruned["source"], "data_sha256": sample.get("train_sha256"),
            "train_data": sample.get("train_file"), "pipeline_run": p.pipeline_run,
            "gate": "passed" if passed else "failed", "gate_reason": reason}
    return {k: str(v) for k, v in tags.items() if v is not None}


def _write_report(p: RegisterParams, stages: dict[str, dict], tags: dict, version: str, tuned: Path,
                  out: Path) -> list[Path]:
    """``report.md``, ``report.html`` (self-contained) and the picture of the units kept per layer, in ``out``."""
    from .masks import Masks
    from .report import KEPT_UNITS_PNG, kept_units_picture, run_report

    masks = Masks.load(tuned / MASKS_FILE)
    picture = kept_units_picture(masks.heads_per_layer(), masks.head.shape[1], masks.neurons_per_layer(),
                                 masks.neuron.shape[1], out / KEPT_UNITS_PNG)
    gate = {"passed": tags["gate"] == "passed", "reason": tags["gate_reason"], "pipeline_run": tags.get("pipeline_run")}
    markdown, page = run_report(stages, gate, picture, f"{p.model_name} version {version}", p.alias).write(out)
    return [markdown, page, picture]


def _description(stages: dict[str, dict], tags: dict, run_id: str) -> str:
    """The model version's description (MLflow renders it as Markdown): the gate decision and the key figures."""
    pruned, profile = stages["pruned"], stages.get("profile", {})
    speedup = f", speedup {profile['speedup']:.2f}x on {profile.get('device')}" if "speedup" in profile else ""
    return (f"**Gate {tags['gate']}**: {tags['gate_reason']}. FLOPs kept {pruned['flops_ratio']:.3f}, parameters "
            f"{pruned['params_before']:,} -> {pruned['params_after']:,}{speedup}. "
            f"Full report: `runs:/{run_id}/{REPORT_HTML}` (and `{REPORT_FILE}`).")


def register(p: RegisterParams, out: Path, pruned: Path, tuned: Path, evaluation: Path, **others: Path) -> dict:
    """Log a run (params, metrics, masks, report, model), register a new version of ``p.model_name``, and move
    ``p.alias`` to it only when the metric dropped by at most ``p.max_drop`` points.

    Safe to retry: within one pipeline run, a model already registered by an earlier attempt (the same
    ``pipeline_run`` and the same exported files, tagged ``fastprune.candidate``) is reused, not registered
    twice, and the steps after its registration (description, alias, report) are done again."""
    folders = {"pruned": pruned, "tuned": tuned, "evaluation": evaluation, **others}
    infos = {name: stage_info(folder) for name, folder in folders.items()}
    stages = dict(sorted(infos.items(), key=lambda item: list(STAGES).index(item[1]["stage"])))  # pipeline order
    ev = stages["evaluation"]
    passed, reason = accuracy_gate(ev["metric_before"], ev["metric_after"], p.max_drop, ev["metric"])
    tags = _tags(p, stages, passed, reason)
    if p.tracking_uri:
        check_tracking_uri(p.tracking_uri)
        mlflow.set_tracking_uri(p.tracking_uri)
    uri = _redacted(mlflow.get_tracking_uri())
    candidate = _candidate(p, pruned)
    try:
        client = mlflow.MlflowClient()
        earlier = _registered_candidate(client, p.model_name, candidate)
        mlflow.set_experiment(p.experiment)
        with mlflow.start_run(run_id=earlier.run_id if earlier else None,
                              run_name=None if earlier else f"{p.model_name}-{tags.get('pipeline_run', 'cli')}") as run:
            if earlier:
                version = str(earlier.version)
                log.info("%s version %s was registered by an earlier attempt of %s: finishing it", p.model_name,
                         version, p.pipeline_run)  # fmt: skip
            else:
                mlflow.log_params(_params(stages))
                mlflow.log_metrics(_metrics(stages))
                mlflow.set_tags(tags)
                mlflow.log_artifact(str(tuned / MASKS_FILE))
                mlflow.log_dict(stages, "stages.json")
                info = log_pruned_model(pruned, stages["pruned"]["task"], out)
                version_tags = {**tags, CANDIDATE_TAG: candidate} if candidate else tags
                version = str(mlflow.register_model(info.model_uri, p.model_name, tags=version_tags).version)
            client.update_model_version(p.model_name, version, description=_description(stages, tags,
                                                                                        run.info.run_id))
            if passed:
                client.set_registered_model_alias(p.model_name, p.alias, version)
            for file in _write_report(p, stages, tags, version, tuned, out):
                mlflow.log_artifact(str(file))
            client.set_model_version_tag(p.model_name, version, "report", f"runs:/{run.info.run_id}/{REPORT_HTML}")
    except MlflowException as e:
        raise RegistryError(f"MLflow at {uri} refused to register {p.model_name}: {e.message}") from e
    log.info("registered %s version %s (%s)", p.model_name, version, reason)
    _mark_source(stages["pruned"]["source"], p.pipeline_run or run.info.run_id, f"models:/{p.model_name}/{version}",
                 tags["gate"])
    return {"model_name": p.model_name, "version": version, "alias": p.alias if passed else None,
            "model_uri": f"models:/{p.model_name}/{version}", "run_id": run.info.run_id, "tracking_uri": uri,
            "gate": tags["gate"], "gate_reason": reason, "gate_passed": passed}



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
    from .trigger import mark_succeeded

    name, version, _ = parse_models_uri(source)
    try:
        mark_succeeded(mlflow.MlflowClient(), name, str(version), pipeline_run, pruned_model, gate)
    except MlflowException as e:
        log.warning("could not tag the source %s as pruned: %s", source, e.message)


# ----- registered models as a source -------------------------------------------------------------------------------
_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w.-]+))/?$")


def parse_models_uri(uri: str) -> tuple[str, int | None, str | None]:
    """(name, version, alias) of ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``."""
    match = _MODELS_URI.match(uri)
    if not match:
        raise ConfigError(f"bad registered model URI {uri!r}: use models:/NAME/VERSION (e.g. models:/bert-sst2/3) "
                          "or models:/NAME@ALIAS")
    version = match["version"]
    return match["name"], int(version) if version else None, match["alias"]


def fetch_registered_model(uri: str, cache_dir: Path, tracking_uri: str | None = None) -> tuple[Path, str]:
    """Download a registered model version (its artifacts: a Hugging Face model folder, or an MLflow
    ``transformers`` model) into ``cache_dir`` once; returns the model folder and the exact
    ``models:/NAME/VERSION`` (an alias resolved)."""
    from mlflow.artifacts import download_artifacts

    from .outputs import staging

    name, version, alias = parse_models_uri(uri)
    client = mlflow.MlflowClient(tracking_uri)
    where = _redacted(tracking_uri or mlflow.get_tracking_uri())
    try:
        found = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException as e:
        raise RegistryError(f"MLflow at {where} has no {uri}: {e.message}") from None
    exact = f"models:/{name}/{found.version}"
    key = hashlib.sha256(f"{where}\n{exact}\n{found.source}\n{found.creation_timestamp}".encode()).hexdigest()[:16]
    destination = cache_dir / "mlflow" / key / f"{name}-{found.version}"
    if not destination.is_dir():
        with staging(destination) as staging:
            try:
                download_artifacts(artifact_uri=exact, dst_path=str(staging), tracking_uri=tracking_uri)
            except MlflowException as e:
                raise RegistryError(f"cannot download {exact} from MLflow at {where}: {e.message}") from None
        log.info("downloaded %s to %s", exact, destination)
    return _model_folder(destination, exact), exact


def _model_folder(root: Path, uri: str) -> Path:
    """The Hugging Face model folder inside a downloaded model version: the root, the ``model/`` of an MLflow
    ``transformers`` model (its tokenizer from ``components/tokenizer`` copied beside it), or the one sub-folder
    holding a ``config.json`` and weights."""
    import shutil

    if (root / "config.json").is_file():
        return root
    flavour_model, tokenizer = root / "model", root / "components" / "tokenizer"
    if (flavour_model / "config.json").is_file() and tokenizer.is_dir():
        for file in tokenizer.iterdir():
            if file.is_file() and not (flavour_model / file.name).exists():
                shutil.copyfile(file, flavour_model / file.name)
        return flavour_model
    weights = ("*.safetensors", "pytorch_model*.bin")
    found = sorted(c.parent for c in root.rglob("config.json")
                   if any(next(c.parent.glob(w), None) for w in weights))
    if len(found) == 1:
        return found[0]
    listing = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())[:20]
    what = "several model folders: " + ", ".join(str(f.relative_to(root)) for f in found) if found else (
        "no Hugging Face model folder (a config.json beside safetensors or pytorch_model.bin weights)")
    raise RegistryError(f"{uri} holds {what}; its files: {listing}")
