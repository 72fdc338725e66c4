"""A pruned causal LM registered as an MLflow pyfunc generates text from a ``prompt`` column without fastprune: the
same continuation as the task's own ``predict`` on the model fastprune loads."""

from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest
import torch
from fastprune.common.folders import write_manifest
from fastprune.common.model.arch import adapter_for
from fastprune.common.model.export import export_pruned, load_pruned, save_pruned
from fastprune.common.model.masks import Masks
from fastprune.common.ops.deploy_report import add_deploy_section
from fastprune.common.ops.registry_extras import use_experiment
from fastprune.common.ops.report import Report
from fastprune.common.ops.serving import log_portable_model
from fastprune.common.tasks.spec import get_task
from mlflow.exceptions import MlflowException
from tiny import tiny_llama, tiny_tokenizer

PROMPTS = pd.DataFrame({"prompt": ["the history of the city", "a fine"]})


@pytest.fixture
def tracking(tmp_path):
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    use_experiment("serving-causal-lm")  # artifacts beside the database, not in ./mlruns
    yield
    mlflow.set_tracking_uri(previous)


def test_the_pyfunc_generates_text_from_a_prompt(tracking, tmp_path):
    model = tiny_llama(seed=2)
    dims = adapter_for(model).dims(model.config)
    neuron = torch.ones(dims.num_layers, dims.intermediate_size)
    neuron[:, 32:] = 0.0  # every head, one MLP size in every layer: a stock Llama config, loaded by transformers alone
    folder = save_pruned(
        export_pruned(model, Masks(torch.ones(dims.num_layers, dims.num_heads), neuron)),
        tmp_path / "m",
        tiny_tokenizer(),
    )
    write_manifest(folder)
    assert json.loads((folder / "config.json").read_text())["intermediate_size"] == 32
    with mlflow.start_run():
        info = log_portable_model(folder, "causal-lm", tmp_path / "code")
    served = mlflow.pyfunc.load_model(info.model_uri)
    got = served.predict(PROMPTS)
    expected = get_task("causal-lm").predict(*load_pruned(folder), PROMPTS)
    assert list(got.columns) == ["text"] and got["text"].tolist() == expected["text"].tolist()
    assert all(text.strip() for text in got["text"])
    assert mlflow.models.get_model_info(info.model_uri).signature.outputs.input_names() == ["text"]
    with pytest.raises(MlflowException, match=r"missing inputs \['prompt'\]"):
        served.predict(pd.DataFrame({"text": ["no prompt"]}))
    report = add_deploy_section(Report("deploy"), "models:/m/1", "run", "causal-lm", "model", None)
    assert '"prompt": ["The history of the city begins"]' in report.markdown()
    assert "AutoModelForCausalLM" in report.markdown()
