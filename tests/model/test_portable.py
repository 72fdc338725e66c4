"""Exported folders load with transformers alone: in a virtual environment without fastprune,
``AutoModelFor<Task>.from_pretrained(folder, trust_remote_code=True)``, ``AutoTokenizer`` and ``pipeline`` give
``load_pruned``'s outputs; a plain load fails with a reason; a structure that fits the stock config needs no code."""

import ast
import json
import sys
from pathlib import Path

import pytest
import torch
from cleanenv import clean_venv
from fastprune.common.model import modeling_fastprune
from fastprune.common.model.arch import ADAPTERS, STRUCTURE_KEY, SUPPORTED_MODEL_TYPES, adapter_for
from fastprune.common.model.export import export_pruned, load_pruned, save_pruned
from fastprune.common.model.masks import Masks
from fastprune.common.model.portable import MODELING_FILE, read_config
from safetensors.torch import save_model
from tiny import tiny_model, tiny_tokenizer

FAMILIES = ("bert", "roberta", "xlm-roberta", "camembert", "electra", "distilbert", "mpnet")
LABELS = {0: "negative", 1: "neutral", 2: "positive"}
TEXTS = ["a gorgeous , witty , seductive movie .", "the movie is a disaster"]


def _masks(dims, seed: int = 0) -> Masks:
    """Scaled masks with a layer keeping no heads (layer 0) and one keeping no neurons (layer 1)."""
    g = torch.Generator().manual_seed(seed)
    head = (torch.rand(dims.num_layers, dims.num_heads, generator=g) > 0.4).float()
    neuron = (torch.rand(dims.num_layers, dims.intermediate_size, generator=g) > 0.5).float()
    head = head * (0.5 + torch.rand(head.shape, generator=g))
    neuron = neuron * (0.5 + torch.rand(neuron.shape, generator=g))
    head[0], neuron[1] = 0.0, 0.0
    head[1, 0] = 1.0  # some head kept in the other layers
    return Masks(head, neuron)


def _stock_masks(dims) -> Masks:
    """Every head kept, the same 40 neurons in every layer: a stock config describes it."""
    neuron = torch.zeros(dims.num_layers, dims.intermediate_size)
    neuron[:, :40] = 1.0
    return Masks(torch.ones(dims.num_layers, dims.num_heads), neuron)


def _inputs() -> dict[str, torch.Tensor]:
    ids = torch.randint(5, 300, (3, 14), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _outputs(model, inputs, task) -> torch.Tensor:
    with torch.no_grad():
        out = model(**inputs)
    return torch.cat([out.start_logits, out.end_logits], -1) if task == "qa" else out.logits


def _export(family: str, task: str, folder: Path, stock: bool = False) -> Path:
    model = tiny_model(family, task=task, num_labels=2 if task == "qa" else 3)
    if task != "qa":
        model.config.id2label, model.config.label2id = LABELS, {v: k for k, v in LABELS.items()}
    dims = adapter_for(model).dims(model.config)
    return save_pruned(export_pruned(model, _stock_masks(dims) if stock else _masks(dims)), folder, tiny_tokenizer())


_CHECK = r"""
import json, sys
import torch
from transformers import AutoModelForQuestionAnswering, AutoModelForSequenceClassification, AutoTokenizer, pipeline

kernel = torch.nn.functional.scaled_dot_product_attention  # CUDA's SDPA returns no tensor for zero heads
torch.nn.functional.scaled_dot_product_attention = lambda q, *a, **k: None if q.shape[1] == 0 else kernel(q, *a, **k)
saved = torch.load(sys.argv[1])
results = {}
for name, case in saved["cases"].items():
    qa = case["task"] == "qa"
    cls = AutoModelForQuestionAnswering if qa else AutoModelForSequenceClassification
    folder = case["folder"]
    result = results[name] = {}
    for plain in ({}, {"ignore_mismatched_sizes": True}):
        try:
            cls.from_pretrained(folder, **plain)
            result.setdefault("plain_loaded", []).append(True)
        except Exception as e:
            result.setdefault("plain_errors", []).append(f"{type(e).__name__}: {e}")
    model = cls.from_pretrained(folder, trust_remote_code=True)
    result["class"] = type(model).__name__
    result["dtype"] = str(next(model.parameters()).dtype)
    with torch.no_grad():
        out = model(**saved["inputs"])
    got = torch.cat([out.start_logits, out.end_logits], -1) if qa else out.logits
    result["max_diff"] = float((got - case["expected"]).abs().max())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    result["tokenizers_agree"] = tokenizer(saved["texts"]) == AutoTokenizer.from_pretrained(
        folder, trust_remote_code=True)(saved["texts"])
    if not qa:
        with torch.no_grad():
            logits = model(**tokenizer(saved["texts"], padding=True, return_tensors="pt")).logits
        result["expected_labels"] = [model.config.id2label[int(i)] for i in logits.argmax(-1)]
        classify = pipeline("text-classification", model=folder, trust_remote_code=True)
        result["pipeline"] = classify(saved["texts"])
try:
    import fastprune  # noqa: F401
    results["fastprune_imported"] = True
except ImportError:
    results["fastprune_imported"] = False
print("RESULTS" + json.dumps(results))
"""


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    return clean_venv(tmp_path_factory.mktemp("clean") / "venv")


@pytest.fixture(scope="module")
def loaded_without_fastprune(venv, tmp_path_factory):
    """Every family and task exported (plus two stock-shaped ones) and loaded in the clean venv in one process."""
    root = tmp_path_factory.mktemp("portable")
    inputs, cases = _inputs(), {}
    variants = [(f, t, False) for f in FAMILIES for t in ("classification", "qa")]
    variants += [("bert", "classification", True), ("distilbert", "qa", True)]
    for family, task, stock in variants:
        name = f"{family}-{task}{'-stock' if stock else ''}"
        folder = _export(family, task, root / name, stock)
        reference, _ = load_pruned(folder)
        cases[name] = {"task": task, "folder": str(folder), "expected": _outputs(reference, inputs, task)}
    torch.save({"cases": cases, "inputs": inputs, "texts": TEXTS}, root / "cases.pt")
    (root / "check.py").write_text(_CHECK)
    done = venv.run([str(root / "check.py"), str(root / "cases.pt")], cwd=root, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.split("RESULTS", 1)[1])
    return root, cases, results


def test_fastprune_is_not_importable_there(loaded_without_fastprune):
    assert loaded_without_fastprune[2]["fastprune_imported"] is False


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("task", ["classification", "qa"])
def test_pruned_folder_loads_with_transformers_alone(loaded_without_fastprune, family, task):
    root, _, results = loaded_without_fastprune
    result = results[f"{family}-{task}"]
    assert result["max_diff"] < 1e-4, result
    assert result["class"].startswith("Fastprune") and result["dtype"] == "torch.float32"
    assert result["tokenizers_agree"]
    assert (root / f"{family}-{task}" / MODELING_FILE).is_file()
    # a plain load (even asking to ignore the mismatched sizes) refuses, saying that the folder's code must run
    assert "plain_loaded" not in result, result
    assert len(result["plain_errors"]) == 2
    assert all("custom code" in e and "trust_remote_code=True" in e for e in result["plain_errors"]), result
    if task == "classification":
        labels = [answer["label"] for answer in result["pipeline"]]
        assert labels == result["expected_labels"] and set(labels) <= set(LABELS.values())


@pytest.mark.parametrize("name", ["bert-classification-stock", "distilbert-qa-stock"])
def test_stock_structure_needs_no_code(loaded_without_fastprune, name):
    root, _, results = loaded_without_fastprune
    result = results[name]
    assert result["plain_loaded"] == [True, True] and not result["class"].startswith("Fastprune")
    assert result["max_diff"] < 1e-4, result
    config = json.loads((root / name / "config.json").read_text())
    assert not (root / name / MODELING_FILE).exists() and "auto_map" not in config
    assert config["model_type"] in SUPPORTED_MODEL_TYPES
    assert config.get("intermediate_size", config.get("hidden_dim")) == 40
    assert config[STRUCTURE_KEY]["intermediate_size"] == [40] * 3


def test_load_pruned_reads_folders_of_the_previous_version(tmp_path):
    """Before portable folders, save_pruned wrote the stock config with the structure beside it, and no code."""
    model = tiny_model("bert")
    pruned = export_pruned(model, _masks(adapter_for(model).dims(model.config)))
    old = tmp_path / "old"
    old.mkdir()
    pruned.config.architectures = [type(pruned).__name__]
    pruned.config.save_pretrained(old)
    save_model(pruned, str(old / "model.safetensors"))
    tiny_tokenizer().save_pretrained(old)
    assert json.loads((old / "config.json").read_text())["model_type"] == "bert"
    new = save_pruned(pruned, tmp_path / "new", tiny_tokenizer())
    assert json.loads((new / "config.json").read_text())["model_type"] == "fastprune_bert"
    inputs = _inputs()
    expected = _outputs(pruned, inputs, "classification")
    for folder in (old, new):
        loaded, tokenizer = load_pruned(folder)
        assert type(loaded).__name__ == "BertForSequenceClassification" and tokenizer is not None
        assert (_outputs(loaded, inputs, "classification") - expected).abs().max() < 1e-4
    assert read_config(new).model_type == "bert" and read_config(new).architectures == ["BertForSequenceClassification"]


def test_modeling_file_imports_only_torch_and_transformers():
    tree = ast.parse(Path(modeling_fastprune.__file__).read_text())
    imported = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    imported |= {
        node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    assert imported - set(sys.stdlib_module_names) == {"torch", "transformers"}


def test_modeling_file_knows_every_supported_family():
    """Its table of where each family keeps its units is the adapters' (arch.py), model type by model type."""
    assert set(modeling_fastprune.LAYOUTS) == set(SUPPORTED_MODEL_TYPES)
    for adapter in ADAPTERS:
        for model_type in adapter.model_types:
            layout = modeling_fastprune.LAYOUTS[model_type]
            assert layout[:9] == (
                adapter.layers,
                adapter.attention,
                adapter.query,
                adapter.key,
                adapter.value,
                adapter.attn_out,
                adapter.ffn_in,
                adapter.ffn_out,
                adapter.heads_attrs[0] if adapter.heads_attrs else None,
            )
            assert layout[9:11] == (adapter.cfg_hidden, adapter.cfg_heads)
            assert layout[11:] == (
                adapter.ffn_gate,
                adapter.group_attrs[0] if adapter.group_attrs else None,
                adapter.cfg_kv_heads,
                adapter.cfg_head_size,
            )


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_a_bare_encoder_loads_with_automodel(tmp_path, family):
    """A bare encoder (sentence embeddings) gets the portable code too: AutoModel with trust_remote_code gives the
    hidden states load_pruned's model gives."""
    from transformers import AutoModel

    encoder = AutoModel.from_config(tiny_model(family).config).eval()
    folder = save_pruned(export_pruned(encoder, _masks(adapter_for(encoder).dims(encoder.config))), tmp_path / "m")
    assert (folder / MODELING_FILE).exists()
    inputs = _inputs()
    with torch.no_grad():
        ours = load_pruned(folder)[0](**inputs).last_hidden_state
        theirs = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()(**inputs).last_hidden_state
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_an_architecture_without_portable_code_keeps_the_previous_folder(tmp_path, caplog):
    """A masked language model has no class in modeling_fastprune.py: its folder is written as before (stock model
    type, the structure beside it), and a warning says so."""
    from transformers import AutoModelForMaskedLM

    head = tiny_model("bert")
    masks = _masks(adapter_for(head).dims(head.config))
    encoder = AutoModelForMaskedLM.from_config(head.config).eval()
    folder = save_pruned(export_pruned(encoder, masks), tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "bert" and "auto_map" not in config and not (folder / MODELING_FILE).exists()
    assert "no portable modeling code" in caplog.text
