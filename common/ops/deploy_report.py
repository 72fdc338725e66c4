"""The run report's "How to deploy this version" section: load snippets for the registered model version with
Hugging Face transformers (``trust_remote_code``), ONNX Runtime (when the ONNX folder was logged with the version)
and MLflow pyfunc."""

from __future__ import annotations

import json

from ..tasks.spec import get_task
from .report import Report
from .serving import hf_load_snippet, mlflow_serve_snippet


def _hf(task: str, model_uri: str, folder: str) -> str:
    """:func:`~.serving.hf_load_snippet` on the exported folder inside the registered model's artifacts."""
    load = hf_load_snippet("__FOLDER__", task).replace('"__FOLDER__"', "folder")
    return (
        "from mlflow.artifacts import download_artifacts\n"
        f'folder = download_artifacts("{model_uri}") + "/{folder}"  # the exported model folder\n{load}'
    )


def _onnx(task_is_qa: bool, run_id: str, artifact_path: str) -> str:
    outputs = '["start_logits", "end_logits"]' if task_is_qa else '["logits"]'
    text = (
        'tokenizer(["Who wrote it?"], ["It was written by Ann Lee."], return_tensors="np")'
        if task_is_qa
        else ('tokenizer(["a fine movie"], return_tensors="np")')
    )
    return (
        "import onnxruntime as ort\nfrom mlflow.artifacts import download_artifacts\n"
        "from transformers import AutoTokenizer\n\n"
        f'folder = download_artifacts(run_id="{run_id}", artifact_path="{artifact_path}")\n'
        "tokenizer = AutoTokenizer.from_pretrained(folder)\n"
        'session = ort.InferenceSession(f"{folder}/model.onnx", providers=["CPUExecutionProvider"])\n'
        f"encoded = {text}\n"
        "feed = {i.name: encoded[i.name] for i in session.get_inputs()}\n"
        f"outputs = session.run({outputs}, feed)\n"
        "# or: optimum.onnxruntime.ORTModelFor...from_pretrained(folder)"
    )


def _pyfunc(task: str, model_uri: str) -> str:
    frame = f"pd.DataFrame({json.dumps({column: [value] for column, value in get_task(task).serving_example})})"
    return (
        f'import mlflow\nimport pandas as pd\n\nmodel = mlflow.pyfunc.load_model("{model_uri}")\nmodel.predict({frame})'
    )


def add_deploy_section(
    report: Report, model_uri: str, run_id: str, task: str, model_folder: str, onnx: dict | None
) -> Report:
    """Append the section. ``model_folder``: where the exported folder lies inside the MLflow model's artifacts;
    ``onnx``: the ONNX folder's metadata and ``artifact_path`` in the run, or None when none was made."""
    report.add("h2", "How to deploy this version")
    report.add("p", "**MLflow pyfunc** (raw text in; labels and scores, answers or generated text out):")
    task_is_qa = get_task(task).kind == "qa"  # the snippets of an extractive-QA model
    report.add("pre", _pyfunc(task, model_uri))
    report.add("p", "As a REST service, from a fresh environment without fastprune:")
    report.add("pre", mlflow_serve_snippet(model_uri, task))
    report.add(
        "p",
        "**Hugging Face transformers** (torch and transformers; the pruned per-layer shapes load through "
        "the modeling file shipped in the folder, hence `trust_remote_code=True`):",
    )
    report.add("pre", _hf(task, model_uri, model_folder))
    if onnx:
        quantized = onnx.get("quantization") == "int8-dynamic"
        kind = (
            f"int8 (dynamic quantization, {'per channel' if onnx.get('per_channel') else 'per tensor'})"
            if (quantized)
            else "fp32"
        )
        report.add("p", f"**ONNX Runtime** ({kind}; `{onnx['artifact_path']}/` of this version's run, tag `onnx`):")
        report.add("pre", _onnx(task_is_qa, run_id, onnx["artifact_path"]))
    else:
        report.add(
            "p",
            "**ONNX Runtime**: no ONNX folder was made for this version (pipeline parameter `onnx`: "
            "`fp32` or `int8` makes one); from the exported folder: "
            "`fastprune onnx --pruned FOLDER --output FOLDER-onnx --quantize int8`.",
        )
    return report
