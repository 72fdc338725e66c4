"""MLflow: record a pruning run, register the pruned model as a new model version, move an alias to it only
when the accuracy gate passes, and load it back as a pyfunc that predicts from raw text (answers from questions
and contexts for a question-answering model).

The registered model is a custom ``mlflow.pyfunc`` model whose code (:mod:`.pyfunc_portable`) is logged with it and
imports no fastprune, and whose one artifact is the exported model folder (safetensors, config, the folder's own
modeling code, tokenizer; checked against its manifest on load). It serves wherever its pinned requirements (mlflow,
torch, transformers, tokenizers, safetensors) are installed; versions registered earlier load through
:class:`PrunedTextModel`, which needs fastprune::

    mlflow.pyfunc.load_model("models:/NAME@pruned-candidate").predict(pd.DataFrame({"text": ["a fine movie"]}))
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from urllib.parse import urlsplit

import mlflow
import pandas as pd
import torch
from mlflow.exceptions import MlflowException

from ..errors import ConfigError, FastpruneError
from ..folders import verify_manifest
from ..model.export import load_pruned
from ..tasks.spec import TaskSpec, get_task

log = logging.getLogger(__name__)


class RegistryError(FastpruneError):
    """The MLflow tracking server is unreachable or refused a request."""


def redacted(uri: str) -> str:
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
            f"cannot reach the MLflow tracking server at {redacted(uri)} ({type(e).__name__}): is it running? "
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
    from ..tasks.qa import answer_questions

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


def log_pruned_model(pruned: Path, task: str, workdir: Path):
    """Log the exported model folder in the active run as a model that serves without fastprune (its own code,
    :mod:`.pyfunc_portable`, logged with it; see :mod:`.serving`). :class:`PrunedTextModel` is what the versions
    registered before it run."""
    from .serving import log_portable_model

    return log_portable_model(pruned, task, workdir)


# ----- registration ------------------------------------------------------------------------------------------



















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

    from ..folders import staged_folder

    name, version, alias = parse_models_uri(uri)
    client = mlflow.MlflowClient(tracking_uri)
    where = redacted(tracking_uri or mlflow.get_tracking_uri())
    try:
        found = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException as e:
        raise RegistryError(f"MLflow at {where} has no {uri}: {e.message}") from None
    exact = f"models:/{name}/{found.version}"
    key = hashlib.sha256(f"{where}\n{exact}\n{found.source}\n{found.creation_timestamp}".encode()).hexdigest()[:16]
    destination = cache_dir / "mlflow" / key / f"{name}-{found.version}"
    if not destination.is_dir():
        with staged_folder(destination) as staging:
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
