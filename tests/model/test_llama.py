"""The registered decoder families (llama, mistral, qwen2, qwen3): tiny in-process models with grouped-query
attention over 2 key/value groups, a gated MLP, pre-norm and rotary positions, pruned through the registered
adapters: masked equals sliced (logits and generated tokens, layers without groups or neurons), the key/value cache
bytes, the save/load round trip with tied embeddings, and the folders transformers loads alone (a uniform export is
a stock config; per-layer sizes load with the portable modeling file), in a process without fastprune."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cleanenv import clean_venv
from fastprune.common.errors import UnsupportedArchitectureError
from fastprune.common.model.arch import STRUCTURE_KEY, adapter_for
from fastprune.common.model.export import export_pruned, load_pruned, save_pruned
from fastprune.common.model.masks import Masks, masks_applied
from fastprune.common.model.portable import MODELING_FILE
from fastprune.common.model.slicing import KVExpandedLinear
from transformers import AutoConfig, AutoModelForCausalLM, GPT2Config, PhiConfig

FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
LAYERS, HEADS, GROUPS, HEAD_SIZE, HIDDEN, NEURONS, VOCAB = 3, 4, 2, 8, 32, 24, 96


def tiny_decoder(family: str = "llama", seed: int = 0, tied: bool = True):
    """A tiny causal LM of ``family``: 3 layers, 4 query heads over 2 key/value groups, a gated MLP of 24."""
    torch.manual_seed(seed)
    config = AutoConfig.for_model(
        family,
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=NEURONS,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=GROUPS,
        head_dim=HEAD_SIZE,
        max_position_embeddings=64,
        tie_word_embeddings=tied,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return AutoModelForCausalLM.from_config(config).eval()


def uneven_masks() -> Masks:
    """Layer 0: three heads, 2 + 1 over the groups (uneven: expanded keys and values); layer 1: group 0 gone (a
    zero group), group 1 keeps both heads; layer 2: no heads and no neurons. Scaled, as after tuning."""
    g = torch.Generator().manual_seed(3)
    head = torch.tensor([[1.0, 1.0, 0.0, 1.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    head = head * (0.5 + torch.rand(head.shape, generator=g))
    neuron = (torch.rand(LAYERS, NEURONS, generator=g) > 0.4).float() * (0.5 + torch.rand(LAYERS, NEURONS, generator=g))
    neuron[2] = 0.0
    return Masks(head, neuron)


def uniform_masks() -> Masks:
    """Every layer keeps group 1 only, with both its heads, and the same 16 neurons: a stock config."""
    head = torch.tensor([[0.0, 0.0, 1.0, 1.0]] * LAYERS)
    neuron = torch.zeros(LAYERS, NEURONS)
    neuron[:, 4:20] = 1.0
    return Masks(head, neuron)


def _prompt() -> dict[str, torch.Tensor]:
    ids = torch.randint(3, VOCAB, (2, 7), generator=torch.Generator().manual_seed(1))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs, use_cache=False).logits


def _generate(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(**inputs, max_new_tokens=6, do_sample=False, pad_token_id=0)


@pytest.mark.parametrize("even_groups", [True, False], ids=["padded", "expanded"])
@pytest.mark.parametrize("family", FAMILIES)
def test_masked_equals_sliced_and_generates_the_same_tokens(family, even_groups):
    """Layer 0's groups keep 2 and 1 heads: padded with a zero-output head (the default: the family's own grouped
    attention) or with keys and values expanded per query head."""
    model = tiny_decoder(family)
    adapter = adapter_for(model)
    assert adapter.family == family and adapter.causal
    masks, prompt = uneven_masks(), _prompt()
    with masks_applied(model, masks.head, masks.neuron):
        masked, tokens = _logits(model, prompt), _generate(model, prompt)
    pruned = export_pruned(model, masks, neuron_multiple=1, even_groups=even_groups)
    torch.testing.assert_close(_logits(pruned, prompt), masked, atol=1e-5, rtol=0)
    assert torch.equal(_generate(pruned, prompt), tokens)
    structure = adapter.structure(pruned)
    assert structure["num_heads"] == [4 if even_groups else 3, 2, 0] and structure["num_key_value_heads"] == [2, 1, 0]
    assert isinstance(adapter.linear(adapter.layer_modules(pruned)[0], "key"), KVExpandedLinear) is not even_groups
    assert structure["intermediate_size"][2] == 0


@pytest.mark.parametrize(("even_groups", "layer_0"), [(True, 2), (False, 3)])
def test_kv_cache_bytes_per_token_by_hand(even_groups, layer_0):
    """2 (keys and values) x cached heads x head size x 4 bytes (float32), summed over layers: the dense model caches
    2 groups per layer; layer 0's uneven groups cache their 2 groups when padded, one head per query head (3) when
    expanded; layer 1 one group, layer 2 none."""
    model = tiny_decoder()
    adapter = adapter_for(model)
    assert adapter.kv_cache_bytes(model) == 2 * (3 * GROUPS) * HEAD_SIZE * 4
    pruned = export_pruned(model, uneven_masks(), even_groups=even_groups)
    assert adapter.kv_cache_bytes(pruned) == 2 * (layer_0 + 1 + 0) * HEAD_SIZE * 4
    cache = pruned(**_prompt(), use_cache=True).past_key_values  # what generate() keeps: the same shapes
    cached = sum(cache.layers[i].keys.shape[1] for i in range(LAYERS) if cache.layers[i].keys is not None)
    assert cached == layer_0 + 1 + 0


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_save_load_round_trip_keeps_tied_embeddings(tmp_path, family):
    model = tiny_decoder(family, tied=True)
    prompt = _prompt()
    pruned = export_pruned(model, uneven_masks())
    folder = save_pruned(pruned, tmp_path / "m")
    loaded, _ = load_pruned(folder)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    torch.testing.assert_close(_logits(loaded, prompt), _logits(pruned, prompt), atol=1e-6, rtol=0)
    assert torch.equal(_generate(loaded, prompt), _generate(pruned, prompt))
    assert (folder / MODELING_FILE).is_file()


def test_uniform_export_is_a_stock_config(tmp_path):
    model = tiny_decoder("llama")
    folder = save_pruned(export_pruned(model, uniform_masks()), tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (2, 1, HEAD_SIZE)
    assert config["intermediate_size"] == 16 and config["model_type"] == "llama" and "auto_map" not in config
    assert not (folder / MODELING_FILE).exists()
    plain = AutoModelForCausalLM.from_pretrained(folder)  # transformers alone, stock classes
    loaded, _ = load_pruned(folder)
    prompt = _prompt()
    torch.testing.assert_close(_logits(plain, prompt), _logits(loaded, prompt), atol=1e-6, rtol=0)


@pytest.mark.parametrize("config", [GPT2Config(n_layer=1), PhiConfig(num_hidden_layers=1)], ids=["gpt2", "phi"])
def test_other_decoders_are_refused_with_the_supported_list(config):
    with pytest.raises(UnsupportedArchitectureError, match="Supported model types: .*llama, mistral, qwen2, qwen3"):
        adapter_for(config)


_CHECK = r"""
import json, sys
import torch
from transformers import AutoModelForCausalLM

saved = torch.load(sys.argv[1])
results = {}
for name, case in saved["cases"].items():
    result = results[name] = {}
    try:
        model = AutoModelForCausalLM.from_pretrained(case["folder"])
        result["plain"] = type(model).__name__
    except Exception as e:
        result["plain_error"] = f"{type(e).__name__}: {e}"
        model = AutoModelForCausalLM.from_pretrained(case["folder"], trust_remote_code=True)
    result["class"] = type(model).__name__
    result["tied"] = model.lm_head.weight is model.model.embed_tokens.weight
    with torch.no_grad():
        logits = model(**saved["prompt"], use_cache=False).logits
        tokens = model.generate(**saved["prompt"], max_new_tokens=6, do_sample=False, pad_token_id=0)
    result["max_diff"] = float((logits - case["logits"]).abs().max())
    result["same_tokens"] = bool(torch.equal(tokens, case["tokens"]))
try:
    import fastprune  # noqa: F401
    results["fastprune_imported"] = True
except ImportError:
    results["fastprune_imported"] = False
print("RESULTS" + json.dumps(results))
"""


@pytest.fixture(scope="module")
def loaded_without_fastprune(tmp_path_factory):
    """Each family exported with per-layer sizes, and llama and qwen2 uniformly, loaded in one clean process."""
    root = tmp_path_factory.mktemp("decoders")
    venv = clean_venv(root / "venv")
    prompt, cases = _prompt(), {}
    variants = [(f, "") for f in FAMILIES] + [("llama", "-uniform"), ("qwen2", "-uniform"), ("llama", "-expanded")]
    for family, kind in variants:
        name = family + kind
        masks = uniform_masks() if kind == "-uniform" else uneven_masks()
        pruned = export_pruned(tiny_decoder(family), masks, even_groups=kind != "-expanded")
        folder = save_pruned(pruned, root / name)
        cases[name] = {"folder": str(folder), "logits": _logits(pruned, prompt), "tokens": _generate(pruned, prompt)}
    torch.save({"cases": cases, "prompt": prompt}, root / "cases.pt")
    (root / "check.py").write_text(_CHECK)
    done = venv.run([str(root / "check.py"), str(root / "cases.pt")], cwd=root, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return root, json.loads(done.stdout.split("RESULTS", 1)[1])


@pytest.mark.parametrize("name", [*FAMILIES, "llama-expanded"])
def test_per_layer_sizes_load_with_transformers_alone(loaded_without_fastprune, name):
    root, results = loaded_without_fastprune
    assert results["fastprune_imported"] is False
    result = results[name]
    assert "trust_remote_code=True" in result["plain_error"]  # refused plainly, not loaded into wrong shapes
    assert result["class"].startswith("Fastprune") and result["class"].endswith("ForCausalLM")
    assert result["max_diff"] < 1e-5 and result["same_tokens"] and result["tied"], result
    heads = json.loads((Path(root) / name / "config.json").read_text())[STRUCTURE_KEY]["num_heads"]
    assert heads == ([3, 2, 0] if name.endswith("expanded") else [4, 2, 0])


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_uniform_export_loads_with_plain_from_pretrained(loaded_without_fastprune, family):
    result = loaded_without_fastprune[1][f"{family}-uniform"]
    assert "plain_error" not in result and not result["class"].startswith("Fastprune"), result
    assert result["max_diff"] < 1e-5 and result["same_tokens"] and result["tied"], result
