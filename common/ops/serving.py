"""Log a pruned model to MLflow so that it serves without fastprune, and the snippets that load or serve one.

The logged model's code is :mod:`.pyfunc_portable` (one file, imports no fastprune) followed by its ``set_model``
line; its artifact is the exported folder; its requirements pin only what that code uses. The signature declares
the inputs and the outputs of the task's kind.
"""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, DataType, Schema
from mlflow.types.schema import Array

from ..tasks.spec import Task, get_task
from . import pyfunc_portable

ENTRY_FILE = "fastprune_pyfunc.py"
SERVED_PACKAGES = ("mlflow", "torch", "transformers", "tokenizers", "safetensors")

TEXT_INPUTS = Schema([ColSpec("string", "text"), ColSpec("string", "text_pair", required=False)])
QA_INPUTS = Schema([ColSpec("string", "question"), ColSpec("string", "context")])
OUTPUTS = {
    "classification": Schema(
        [ColSpec("string", "label"), ColSpec("double", "score"), ColSpec(Array(DataType.double), "probabilities")]
    ),
    "regression": Schema([ColSpec("double", "score")]),
    "embedding": Schema([ColSpec(Array(DataType.double), "embedding")]),
    "qa": Schema(
        [ColSpec("string", "answer"), ColSpec("long", "start"), ColSpec("long", "end"), ColSpec("double", "score")]
    ),
    "causal-lm": Schema([ColSpec("string", "text")]),
}


def signature(task: Task) -> ModelSignature:
    """The task's serving columns (strings) in, the outputs of its kind out (unstated for another kind)."""
    inputs = Schema([ColSpec("string", name, required=required) for name, required in task.serving_inputs])
    return ModelSignature(inputs=inputs, outputs=OUTPUTS.get(task.kind))


def input_example(task: Task) -> pd.DataFrame:
    return pd.DataFrame({column: [value] for column, value in task.serving_example})


def requirements() -> list[str]:
    """The served model's pip requirements: the versions installed here (torch without its local ``+cpu`` tag)."""
    return [f"{name}=={version(name).split('+')[0]}" for name in SERVED_PACKAGES]


def model_config(task: Task) -> dict:
    version_2 = getattr(task, "version_2", False)  # extractive QA with unanswerable questions
    config = {"task": task.name, "kind": task.kind, "max_length": task.max_length, "version_2": version_2}
    new_tokens = getattr(task, "max_new_tokens", None)  # a causal LM's continuation length
    return config if new_tokens is None else {**config, "max_new_tokens": new_tokens}


def write_entry_point(workdir: Path) -> Path:
    """The model's code: :mod:`.pyfunc_portable` and the line that makes it the model."""
    workdir.mkdir(parents=True, exist_ok=True)
    code = workdir / ENTRY_FILE
    source = Path(pyfunc_portable.__file__).read_text()
    code.write_text(
        f"{source}\n\nfrom mlflow.models import set_model  # noqa: E402\n\nset_model(PortableTextModel())\n"
    )
    return code


def log_portable_model(pruned: Path, task: str, workdir: Path, name: str = "model"):
    """Log the exported folder ``pruned`` as a model that serves without fastprune, in the active run."""
    spec = get_task(task)
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=str(write_entry_point(workdir)),
        artifacts={"model": str(pruned)},
        model_config=model_config(spec),
        signature=signature(spec),
        input_example=input_example(spec),
        pip_requirements=requirements(),
    )


# ----- snippets (the README and the run report show them) --------------------------------------------------------
def hf_load_snippet(folder: str, task: str) -> str:
    """Python that loads an exported folder with transformers alone (no fastprune)."""
    kind = get_task(task).kind
    if kind == "causal-lm":
        return (
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f'model = AutoModelForCausalLM.from_pretrained("{folder}", trust_remote_code=True)  # its own code\n'
            f'tokenizer = AutoTokenizer.from_pretrained("{folder}", trust_remote_code=True)\n'
            'inputs = tokenizer("The history of the city begins", return_tensors="pt")\n'
            "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=32)[0], skip_special_tokens=True))\n"
        )
    if kind == "embedding":
        return (
            "from sentence_transformers import SentenceTransformer\n\n"
            f'model = SentenceTransformer("{folder}", trust_remote_code=True)  # its own modeling code\n'
            'print(model.encode(["a fine movie", "a good film"]).shape)\n'
        )
    qa = kind == "qa"
    auto = "AutoModelForQuestionAnswering" if qa else "AutoModelForSequenceClassification"
    use = (
        'inputs = tokenizer("Who wrote it?", "It was written by Ann Lee.", return_tensors="pt")\n'
        "out = model(**inputs)\n"
        "start, end = int(out.start_logits.argmax()), int(out.end_logits.argmax())\n"
        'print(tokenizer.decode(inputs["input_ids"][0, start : end + 1]))'
        if qa
        else 'classify = pipeline("text-classification", model=model, tokenizer=tokenizer)\nclassify("a fine movie")'
    )
    imports = f"{auto}, AutoTokenizer" + ("" if qa else ", pipeline")
    return (
        f"from transformers import {imports}\n\n"
        f'model = {auto}.from_pretrained("{folder}", trust_remote_code=True)  # its own modeling code\n'
        f'tokenizer = AutoTokenizer.from_pretrained("{folder}", trust_remote_code=True)\n{use}\n'
    )


def mlflow_serve_snippet(
    model_uri: str, task: str, tracking_uri: str = "http://mlflow.example.com", port: int = 5001
) -> str:
    """Shell commands that serve a registered version in a fresh environment (no fastprune) and query it."""
    record = json.dumps(dict(get_task(task).serving_example))
    return (
        f"python -m venv serve && . serve/bin/activate   # the venv's bin on PATH: mlflow runs uvicorn from it\n"
        f"pip install {' '.join(requirements())}\n"
        f"export MLFLOW_TRACKING_URI={tracking_uri}   # where the model is registered\n"
        f"mlflow models serve -m {model_uri} --env-manager local -h 127.0.0.1 -p {port} &\n"
        f"curl -s http://127.0.0.1:{port}/invocations -H 'Content-Type: application/json' \\\n"
        f"  -d '{{\"dataframe_records\": [{record}]}}'\n"
    )
