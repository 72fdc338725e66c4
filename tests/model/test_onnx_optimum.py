"""The ONNX folder loads with Optimum's ``ORTModelForSequenceClassification`` and ``pipeline``, and a pruned
sentence-embedding model's with ``SentenceTransformer(folder, backend="onnx")``, in a fresh virtualenv without
fastprune (torch 2.13 CPU first, then ``optimum-onnx[onnxruntime]`` and sentence-transformers from PyPI: Optimum pins
transformers < 4.58, so it cannot share fastprune's environment). ``FASTPRUNE_OPTIMUM_PYTHON`` names an existing such
interpreter to skip the set-up (a few minutes)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fastprune.common.model.arch import adapter_for
from fastprune.common.model.export import export_pruned, load_pruned, save_pruned
from fastprune.common.model.loading import load_model
from fastprune.common.model.masks import Masks
from fastprune.common.model.onnx_folder import build_onnx_folder
from fastprune.common.tasks.spec import get_task
from tiny import tiny_model, tiny_st_folder, tiny_tokenizer

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
ST_SCRIPT = """
import json, sys
from sentence_transformers import SentenceTransformer
loaded = {}
for folder, trust in json.loads(sys.argv[1]):
    model = SentenceTransformer(folder, backend="onnx", trust_remote_code=trust)
    embeddings = model.encode(json.loads(sys.argv[2])).tolist()
    loaded[folder] = {"modules": [type(m).__name__ for m in model], "embeddings": embeddings}
print(json.dumps(loaded))
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
    subprocess.run([*pip, "optimum-onnx[onnxruntime]", "sentence-transformers"], check=True, timeout=900)
    return str(venv / "bin" / "python")


def _without_fastprune(python: str, script: str, where: str, cwd: Path) -> dict:
    """The JSON that ``script`` prints for ``where`` and :data:`TEXTS`, checking that it could not import fastprune."""
    done = subprocess.run(
        [python, "-c", script, where, json.dumps(TEXTS)], capture_output=True, text=True, timeout=600, cwd=cwd
    )
    assert "No module named 'fastprune'" in done.stderr, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


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
    got = _without_fastprune(optimum_python, script, str(tmp_path / "onnx"), tmp_path)
    assert torch.allclose(torch.tensor(got["logits"]), expected, atol=1e-4)
    assert got["labels"] == [f"LABEL_{i}" for i in expected.argmax(-1).tolist()]
    assert Path(tmp_path / "onnx" / "model.onnx").is_file()


@pytest.mark.parametrize(("mode", "family"), [("mean", "bert"), ("max", "mpnet")])
def test_sentence_transformers_onnx_backend_loads_a_pruned_embedding_model_without_fastprune(
    optimum_python, tmp_path, mode, family
):
    """The ONNX folder of a pruned sentence-transformers model (per-layer head and neuron counts) is what the ONNX
    backend of sentence-transformers loads: its Transformer over ``model.onnx``, then the folder's Pooling (and
    Normalize where the source had it), giving fastprune's own embeddings. So is the export step's layout (the
    exported model with the ONNX folder as its ``onnx/``), whose per-layer config needs ``trust_remote_code``."""
    task = get_task("embedding")
    normalize = mode == "mean"
    source = tiny_st_folder(tmp_path / "st", mode=mode, normalize=normalize, family=family)
    model, tokenizer = load_model(source, task)
    masks = Masks.ones(adapter_for(model).dims(model.config))
    masks.head[0, 1:] = 0.0
    masks.neuron[1, ::2] = 0.0
    pruned = save_pruned(export_pruned(model, masks, neuron_multiple=1), tmp_path / "pruned", tokenizer)
    build_onnx_folder(pruned, tmp_path / "onnx")
    expected = task.embed_texts(*load_model(pruned, task), TEXTS, "cpu")
    shutil.copytree(tmp_path / "onnx", pruned / "onnx")
    folders = [[str(tmp_path / "onnx"), False], [str(pruned), True]]
    loaded = _without_fastprune(optimum_python, ST_SCRIPT, json.dumps(folders), tmp_path)
    assert list(loaded) == [folder for folder, _ in folders]
    for got in loaded.values():
        assert got["modules"] == ["Transformer", "Pooling", *(["Normalize"] if normalize else [])]
        assert torch.allclose(torch.tensor(got["embeddings"]), expected, atol=1e-5)
