"""Export: folded scales + slicing reproduce the masked model; save/load round trips."""

import copy

import pytest
import torch
from fastprune.common.errors import ConfigError, IntegrityError, UnsupportedArchitectureError
from fastprune.common.model.arch import STRUCTURE_KEY, adapter_for
from fastprune.common.model.export import export_pruned, load_pruned, parameter_count, save_pruned
from fastprune.common.model.masks import Masks, masks_applied
from tiny import tiny_model, tiny_tokenizer


def _scaled_masks(dims, seed=0):
    g = torch.Generator().manual_seed(seed)
    head = (torch.rand(dims.num_layers, dims.num_heads, generator=g) > 0.4).float()
    neuron = (torch.rand(dims.num_layers, dims.intermediate_size, generator=g) > 0.5).float()
    head = head * (0.5 + torch.rand(head.shape, generator=g))
    neuron = neuron * (0.5 + torch.rand(neuron.shape, generator=g))
    head[0] = 0.0  # a layer with no heads left
    neuron[1] = 0.0  # a layer with no neurons left
    return Masks(head, neuron)


def _inputs():
    ids = torch.randint(5, 300, (3, 14), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _outputs(model, inputs, task):
    with torch.no_grad():
        out = model(**inputs)
    return torch.cat([out.start_logits, out.end_logits], -1) if task == "qa" else out.logits


@pytest.mark.parametrize(
    "family,task",
    [
        ("bert", "classification"),
        ("roberta", "classification"),
        ("electra", "classification"),
        ("distilbert", "classification"),
        ("bert", "qa"),
        ("distilbert", "qa"),
    ],
)
def test_exported_equals_masked_and_round_trips(family, task, tmp_path):
    model = tiny_model(family, task=task)
    dims = adapter_for(model).dims(model.config)
    masks = _scaled_masks(dims)
    inputs = _inputs()
    with masks_applied(model, masks.head, masks.neuron):
        masked = _outputs(model, inputs, task)
    pruned = export_pruned(model, masks)
    assert (_outputs(pruned, inputs, task) - masked).abs().max() < 1e-4
    assert parameter_count(pruned) < parameter_count(model)
    structure = adapter_for(pruned).structure(pruned)
    assert structure["num_heads"] == masks.heads_per_layer() and structure["num_heads"][0] == 0
    assert structure["intermediate_size"][1] == 0
    # the original is untouched
    assert adapter_for(model).structure(model)["num_heads"] == [dims.num_heads] * dims.num_layers

    save_pruned(pruned, tmp_path / "m", tiny_tokenizer())
    loaded, tokenizer = load_pruned(tmp_path / "m")
    assert tokenizer is not None
    assert getattr(loaded.config, STRUCTURE_KEY) == structure
    assert (_outputs(loaded, inputs, task) - masked).abs().max() < 1e-4
    hooks = [m for m in loaded.modules() if m._forward_pre_hooks or m._forward_hooks]
    assert not hooks, "the exported model must run without fastprune hooks"


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_layer_without_heads_never_calls_the_attention_kernel(family, tmp_path, monkeypatch):
    """On an H200, CUDA's SDPA returned no tensor for zero heads, so exported models with a head-less layer crashed
    there. Emulated here: the kernel returns None for zero heads. Exported, loaded and copied models still run."""
    model = tiny_model(family)
    masks = _scaled_masks(adapter_for(model).dims(model.config))
    inputs = _inputs()
    with masks_applied(model, masks.head, masks.neuron):
        masked = _outputs(model, inputs, "classification")
    pruned = export_pruned(model, masks)
    save_pruned(pruned, tmp_path / "m", tiny_tokenizer())
    kernel = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(
        torch.nn.functional,
        "scaled_dot_product_attention",
        lambda q, *a, **k: None if q.shape[1] == 0 else kernel(q, *a, **k),
    )
    loaded, _ = load_pruned(tmp_path / "m")
    for net in (pruned, loaded, copy.deepcopy(loaded)):
        assert (_outputs(net, inputs, "classification") - masked).abs().max() < 1e-4


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_ffn_padding_is_exact_and_aligned(family, tmp_path):
    """Each FFN is padded with zero neurons to a multiple of 8 (fast fp16 kernels on GPUs); the outputs do not change,
    and without padding the kept counts are exactly the masks'."""
    model = tiny_model(family)
    dims = adapter_for(model).dims(model.config)
    masks = _scaled_masks(dims)
    masks.neuron[2, 3:] = 0.0  # a layer keeping at most 3 neurons: padded with at least 5
    kept = masks.neurons_per_layer()
    assert any(k % 8 for k in kept)
    inputs = _inputs()
    with masks_applied(model, masks.head, masks.neuron):
        masked = _outputs(model, inputs, "classification")
    exact = export_pruned(model, masks, neuron_multiple=1)
    assert adapter_for(exact).structure(exact)["intermediate_size"] == kept
    padded = export_pruned(model, masks)
    sizes = adapter_for(padded).structure(padded)["intermediate_size"]
    assert sizes == [min(-(-k // 8) * 8, dims.intermediate_size) for k in kept]
    assert sizes[1] == 0 and sizes[2] == 8
    save_pruned(padded, tmp_path / "m")
    loaded, _ = load_pruned(tmp_path / "m")
    for net in (exact, padded, loaded):
        assert (_outputs(net, inputs, "classification") - masked).abs().max() < 1e-4
    with pytest.raises(ConfigError, match="neuron_multiple"):
        export_pruned(model, masks, neuron_multiple=0)


def test_export_rejects_masks_of_another_shape():
    model = tiny_model("bert")
    with pytest.raises(ConfigError, match="do not fit"):
        export_pruned(model, Masks(torch.ones(2, 4), torch.ones(2, 64)))


def test_load_pruned_detects_corrupted_weights(tmp_path):
    model = tiny_model("bert")
    dims = adapter_for(model).dims(model.config)
    path = save_pruned(export_pruned(model, _scaled_masks(dims)), tmp_path / "m")
    (path / "model.safetensors").write_bytes(b"garbage" * 10)
    with pytest.raises(IntegrityError, match="model.safetensors"):
        load_pruned(path)
    with pytest.raises(IntegrityError, match="config.json"):
        load_pruned(tmp_path / "missing")


def test_save_is_atomic(tmp_path):
    model = tiny_model("bert")

    class Boom:
        def save_pretrained(self, _path):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_pruned(model, tmp_path / "m", tokenizer=Boom())
    assert not (tmp_path / "m").exists()
    assert list(tmp_path.iterdir()) == []


def test_unsupported_architecture_names_supported_families():
    from transformers import GPT2Config

    with pytest.raises(UnsupportedArchitectureError, match="bert.*distilbert"):
        adapter_for(GPT2Config())
