"""The ONNX folder loads with Optimum's ``ORTModelForSequenceClassification`` and ``pipeline`` in a fresh virtualenv
without fastprune (torch 2.13 CPU first, then ``optimum-onnx[onnxruntime]`` from PyPI, which pins transformers
< 4.58: it cannot share fastprune's environment). ``FASTPRUNE_OPTIMUM_PYTHON`` names an existing such interpreter to
skip the set-up (a few minutes)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fastprune.common.model.arch import adapter_for
from fastprune.common.model.export import export_pruned, load_pruned, save_pruned
from fastprune.common.model.masks import Masks
from fastprune.common.model.onnx_folder import build_onnx_folder
from tiny import tiny_model, tiny_tokenizer

pytestmark = pytest.mark.slow

TEXTS = ["a gorgeous , witty , seductive movie .", "the movie is a disaster"]
SCRIPT = """
import json, sys
import numpy as np
from optimum.onnxruntime import ORTModelForSequenceClassification
from transformers import AutoTokenizer, pipeline
folder, texts = sys.argv[1], json.loads(sys.argv[2])
model = ORTModelForSequenceClassification.from_pretrained(folder)
tokenizer = AutoTokenizer.from_pretrained(folder)
logits = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits.numpy().tolist()
labels = [r["label"] for r in pipeline("text-classification", model=model, tokenizer=tokenizer)(texts)]
import fastprune  # must fail: the environment has no fastprune
"""


@pytest.fixture(scope="module")
def optimum_python(tmp_path_factory) -> str:
    given = os.environ.get("FASTPRUNE_OPTIMUM_PYTHON")
    if given:
        return given
    venv = tmp_path_factory.mktemp("optimum") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "torch==2.13.0"], check=True, timeout=900)  # first: the CPU wheel, not a CUDA one
    subprocess.run([*pip, "optimum-onnx[onnxruntime]"], check=True, timeout=900)
    return str(venv / "bin" / "python")


def test_optimum_loads_the_onnx_folder_without_fastprune(optimum_python, tmp_path):
    model = tiny_model("bert")
    dims = adapter_for(model).dims(model.config)
    head = torch.ones(dims.num_layers, dims.num_heads)
    head[0, 1:] = 0.0  # another head count in the first layer
    neuron = torch.rand(dims.num_layers, dims.intermediate_size, generator=torch.Generator().manual_seed(0)) > 0.5
    save_pruned(
        export_pruned(model, Masks(head, neuron.float())),
        tmp_path / "m",
        tiny_tokenizer(),
        metadata={"task": "sst2", "source": "tiny"},
    )
    build_onnx_folder(tmp_path / "m", tmp_path / "onnx")
    pruned, tokenizer = load_pruned(tmp_path / "m")
    with torch.no_grad():
        expected = pruned(**tokenizer(TEXTS, padding=True, return_tensors="pt")).logits
    script = SCRIPT.replace(
        "import fastprune  # must fail",
        "print(json.dumps({'logits': logits, 'labels': labels}))\nimport fastprune  # must fail",
    )
    done = subprocess.run(
        [optimum_python, "-c", script, str(tmp_path / "onnx"), json.dumps(TEXTS)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert "No module named 'fastprune'" in done.stderr, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert torch.allclose(torch.tensor(got["logits"]), expected, atol=1e-4)
    assert got["labels"] == [f"LABEL_{i}" for i in expected.argmax(-1).tolist()]
    assert Path(tmp_path / "onnx" / "model.onnx").is_file()
