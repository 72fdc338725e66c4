"""The MPNet family: its encoder computes one relative position bias (one channel per head) and passes it to every
layer, so a sliced layer must receive its kept heads' channels. Masked equals sliced (base model, classification,
QA; uneven heads, a layer without heads, a layer without neurons), the structure round-trips through the saved
folder, and the method's stages run through the seam. The real all-mpnet-base-v2 is checked by
benchmarks/mpnet_check.py (masked equals sliced, and the speed of a sliced model)."""

from __future__ import annotations

import json

import pytest
import torch
from fastprune.common.errors import IntegrityError, UnsupportedArchitectureError
from fastprune.common.method.fisher import collect_mask_gradients
from fastprune.common.method.rearrange import rearrange_masks
from fastprune.common.method.search import search_flops
from fastprune.common.method.tuning import tune_masks
from fastprune.common.model import modeling_fastprune
from fastprune.common.model.arch import ADAPTERS, STRUCTURE_KEY, adapter_for
from fastprune.common.model.export import export_pruned, load_pruned, save_pruned
from fastprune.common.model.masks import Masks, masks_applied, weights_applied
from fastprune.common.model.modeling_fastprune import BIAS_HEADS_KEY, keep_bias_heads
from tiny import strong_position_bias, tiny_config, tiny_model, tiny_tokenizer
from transformers import AutoModel, GPT2Config


def _masks(dims) -> Masks:
    """Scaled masks keeping uneven heads: layer 0 heads 1 and 3 (not the first ones: the bias channels must follow),
    layer 1 no heads, layer 2 head 2 only and no neurons, layer 3 every head (its bias passes as it is)."""
    g = torch.Generator().manual_seed(3)
    head = torch.tensor([[0.0, 1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    head = head * (0.5 + torch.rand(head.shape, generator=g))
    neuron = (torch.rand(4, dims.intermediate_size, generator=g) > 0.5).float()
    neuron = neuron * (0.5 + torch.rand(neuron.shape, generator=g))
    neuron[2] = 0.0
    return Masks(head, neuron)


def _inputs() -> dict[str, torch.Tensor]:
    ids = torch.randint(5, 300, (3, 14), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _output(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        out = model(**inputs)
    if hasattr(out, "start_logits"):
        return torch.cat([out.start_logits, out.end_logits], -1)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def _model(task: str):
    if task == "base":
        torch.manual_seed(0)
        model = AutoModel.from_config(tiny_config("mpnet", vocab_size=len(tiny_tokenizer()), layers=4))
        strong_position_bias(model)
        return model.eval()
    return tiny_model("mpnet", task=task, layers=4)  # classification or qa


@pytest.mark.parametrize("task", ["base", "classification", "qa"])
def test_masked_equals_sliced(task):
    model = _model(task)
    adapter = adapter_for(model)
    assert adapter.family == "mpnet"
    masks, inputs = _masks(adapter.dims(model.config)), _inputs()
    with masks_applied(model, masks.head, masks.neuron):
        expected = _output(model, inputs)
    pruned = export_pruned(model, masks)
    structure = adapter.structure(pruned)
    assert structure["num_heads"] == [2, 0, 1, 4]
    assert structure[BIAS_HEADS_KEY] == [[1, 3], [], [2], [0, 1, 2, 3]]
    assert (_output(pruned, inputs) - expected).abs().max() < 1e-5
    # without its channel selection the sliced model would compute something else: the test has teeth
    with torch.no_grad():
        hidden = pruned.base_model(**inputs).last_hidden_state
        keep_bias_heads(adapter.layer_modules(pruned)[0].attention.attn, [0, 1], adapter.shared_bias)
        assert (pruned.base_model(**inputs).last_hidden_state - hidden).abs().max() > 1e-3  # 100x the tolerance


@pytest.mark.parametrize("task", ["base", "classification"])
def test_save_load_round_trip_and_a_broken_structure_is_refused(tmp_path, task):
    """The bare encoder (what an embedding model is) gets the portable class too (sentence-transformers loads it)."""
    model = _model(task)
    adapter = adapter_for(model)
    masks, inputs = _masks(adapter.dims(model.config)), _inputs()
    pruned = export_pruned(model, masks)
    folder = save_pruned(pruned, tmp_path / "m", tiny_tokenizer())
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "fastprune_mpnet"
    assert config[STRUCTURE_KEY][BIAS_HEADS_KEY] == [[1, 3], [], [2], [0, 1, 2, 3]]
    loaded, tokenizer = load_pruned(folder)
    assert type(loaded).__name__ == type(model).__name__ and tokenizer is not None
    assert (_output(loaded, inputs) - _output(pruned, inputs)).abs().max() < 1e-5
    # slicing a sliced layer again composes: its heads still name the dense heads
    layer = adapter.layer_modules(loaded)[0]
    adapter.slice_layer(layer, torch.tensor([1]), torch.arange(adapter.neurons_in_layer(layer)), 8)
    assert adapter.structure(loaded)[BIAS_HEADS_KEY][0] == [3]
    full = [0, 1, 2, 3]
    for bad in (None, [[1, 3], [], [2, 2], full], [[1, 3], [], [4], full], [[1], [], [2], full], [[1, 3], [], [2]]):
        structure = dict(config[STRUCTURE_KEY])
        if bad is None:
            del structure[BIAS_HEADS_KEY]
        else:
            structure[BIAS_HEADS_KEY] = bad
        (folder / "config.json").write_text(json.dumps({**config, STRUCTURE_KEY: structure}))
        with pytest.raises(IntegrityError, match=BIAS_HEADS_KEY):
            load_pruned(folder)


def test_fisher_search_rearrange_and_tuning_run_through_the_seam():
    model = tiny_model("mpnet")
    dims = adapter_for(model).dims(model.config)
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(3):
        batch = _inputs()
        batch["labels"] = torch.randint(0, 2, (3,), generator=g)
        batches.append(batch)
    grads = collect_mask_gradients(model, batches, progress=False)
    assert grads.head.abs().sum() > 0 and grads.neuron.abs().sum() > 0
    head_imp, neuron_imp = grads.head.pow(2).sum(0), grads.neuron.pow(2).sum(0)
    masks = search_flops(head_imp, neuron_imp, dims, 14.0, 0.5)
    masks = rearrange_masks(masks, grads)
    unlabeled = [{k: v for k, v in b.items() if k != "labels"} for b in batches]
    tuned, reports = tune_masks(model, masks, None, unlabeled, progress=False, mode="refit")
    assert any(r.tuned for r in reports)
    assert all(r.error_after <= r.error_before + 1e-9 for r in reports if r.tuned)
    pruned = export_pruned(model, tuned)
    with torch.no_grad(), masks_applied(model, tuned.head, tuned.neuron), weights_applied(model, tuned.weights):
        expected = model(**unlabeled[0]).logits
    assert torch.allclose(pruned(**unlabeled[0]).logits, expected, atol=1e-4)


def test_the_portable_file_mirrors_the_shared_bias_and_other_families_are_refused():
    assert modeling_fastprune.SHARED_BIAS == {
        t: a.shared_bias for a in ADAPTERS if a.shared_bias for t in a.model_types
    }
    assert modeling_fastprune.SHARED_BIAS == {"mpnet": "position_bias"}
    with pytest.raises(UnsupportedArchitectureError, match="model_type='gpt2'.*mpnet"):
        adapter_for(GPT2Config())


def test_a_sliced_mpnet_exports_to_onnx(tmp_path):
    """The channel selection is traced into the graph: onnxruntime agrees with torch (export_onnx checks it)."""
    from fastprune.common.model.onnx_export import export_onnx

    model = tiny_model("mpnet", layers=4)
    pruned = export_pruned(model, _masks(adapter_for(model).dims(model.config)))
    assert export_onnx(pruned, tmp_path / "model.onnx", atol=1e-4).is_file()
