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

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PythonModel

from ..errors import ConfigError, FastpruneError
from ..folders import verify_manifest
from ..model.export import load_pruned
from ..tasks.spec import Task, get_task
from .remote import TIMEOUT_ENV, apply_remote_timeouts, bound_description, redact, remote_timeout

log = logging.getLogger(__name__)


class RegistryError(FastpruneError):
    """The MLflow tracking server is unreachable or refused a request."""


def redacted(uri: str) -> str:
    return redact(uri)


_AUTH_CODES = frozenset({"UNAUTHENTICATED", "PERMISSION_DENIED"})


def check_tracking_uri(uri: str) -> None:
    """Fail fast, naming the URI, when an MLflow tracking server does not answer within the remote timeout
    (``FASTPRUNE_REMOTE_TIMEOUT``) or refuses the credentials (an authenticated call: search one experiment)."""
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    apply_remote_timeouts()
    where, timeout = redacted(uri), remote_timeout()
    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=timeout)
    except requests.Timeout as e:
        raise RegistryError(
            f"the MLflow tracking server at {where} did not answer within {timeout:g} s "
            f"({TIMEOUT_ENV}): is it running and reachable? Check --mlflow-uri (the pipeline's "
            "mlflow_uri)"
        ) from e
    except requests.RequestException as e:
        raise RegistryError(
            f"cannot reach the MLflow tracking server at {where} ({type(e).__name__}): is it running? "
            "Check --mlflow-uri (the pipeline's mlflow_uri)"
        ) from e
    try:
        mlflow.MlflowClient(uri).search_experiments(max_results=1)
    except MlflowException as e:
        raise mlflow_error(e, where, "listing experiments") from None


def mlflow_error(error: MlflowException, where: str, action: str) -> RegistryError:
    """A one-line error for an MLflow refusal: an authentication failure says so and names the variables to set; a
    timeout says after how long; never a password."""
    message = redact(error.message).splitlines()[0] if error.message else type(error).__name__
    if error.error_code in _AUTH_CODES or re.search(r"\b40[13]\b", message):
        return RegistryError(
            f"MLflow at {where} refused the credentials while {action} (authentication failed): "
            "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN, to "
            "an account the server accepts"
        )
    if re.search(r"timed? ?out|Max retries exceeded", message, re.IGNORECASE):
        return RegistryError(
            f"MLflow at {where} did not answer while {action}: timed out after {bound_description()}: {message[:300]}"
        )
    return RegistryError(f"MLflow at {where} refused {action}: {message[:500]}")


def accuracy_gate(
    before: float, after: float, max_drop: float, metric: str, higher_is_better: bool = True
) -> tuple[bool, str]:
    """Whether the task metric got worse by at most ``max_drop`` points (dropped, or rose where lower is better, as
    the task's ``higher_is_better`` says), and a sentence saying so."""
    drop = before - after if higher_is_better else after - before
    passed = drop <= max_drop
    verdict = "within" if passed else "more than"
    change = "a drop" if higher_is_better else "a rise"
    return passed, (
        f"{metric} {before:.2f} -> {after:.2f}: {change} of {drop:.2f} points, {verdict} the allowed {max_drop:g}"
    )


def higher_is_better(evaluation: dict) -> bool:
    """The direction of an evaluate stage's metric: as it recorded it, else as its task states it."""
    recorded = evaluation.get("higher_is_better")
    if recorded is not None:
        return bool(recorded)
    return get_task(evaluation["task"]).higher_is_better if "task" in evaluation else True


def evaluation_gate(evaluation: dict, max_drop: float) -> tuple[bool, str]:
    """:func:`accuracy_gate` on an evaluate stage's result, in its metric's direction."""
    return accuracy_gate(
        evaluation["metric_before"],
        evaluation["metric_after"],
        max_drop,
        evaluation["metric"],
        higher_is_better(evaluation),
    )


# ----- the pyfunc ------------------------------------------------------------------------------------------
def predict_text(model, tokenizer, task: Task, frame: pd.DataFrame, batch_size: int = 64) -> pd.DataFrame:
    """The task's predictions for a DataFrame of raw input (:meth:`~fastprune.common.tasks.base.Task.predict`): a
    sequence classifier's ``label``, ``score`` and ``probabilities`` (a regressor's ``score``) from ``text`` (and
    ``text_pair``); a question-answering model's ``answer``, its character ``start`` and ``end`` in the context and
    its ``score`` from ``question`` and ``context``."""
    frame = frame if isinstance(frame, pd.DataFrame) else pd.DataFrame(frame)
    return task.predict(model, tokenizer, frame, batch_size)


class PrunedTextModel(PythonModel):
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
        raise ConfigError(
            f"bad registered model URI {uri!r}: use models:/NAME/VERSION (e.g. models:/bert-sst2/3) "
            "or models:/NAME@ALIAS"
        )
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
        found = (
            client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, str(version))
        )
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
    found = sorted(c.parent for c in root.rglob("config.json") if any(next(c.parent.glob(w), None) for w in weights))
    if len(found) == 1:
        return found[0]
    listing = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())[:20]
    what = (
        "several model folders: " + ", ".join(str(f.relative_to(root)) for f in found)
        if found
        else ("no Hugging Face model folder (a config.json beside safetensors or pytorch_model.bin weights)")
    )
    raise RegistryError(f"{uri} holds {what}; its files: {listing}")
