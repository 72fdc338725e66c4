"""The family seam: a grouped-query, gated-MLP, pre-norm model (a tiny Llama) is described by one adapter (data),
and its query heads, key/value groups and neurons are masked, sliced, costed and timed through it."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from fastprune.common.errors import ConfigError
from fastprune.common.method.tuning import CAUSAL_REFIT_RIDGE, tune_masks
from fastprune.common.model.arch import ADAPTERS, ModelDims, adapter_for
from fastprune.common.model.cost import (
    dense_macs,
    flops_ratio,
    group_macs,
    head_macs,
    masked_macs,
    neuron_macs,
    structure_macs,
)
from fastprune.common.model.export import export_pruned
from fastprune.common.model.masks import Masks, masks_applied, weights_applied
from fastprune.common.model.slicing import KVExpandedLinear
from tiny import tiny_config, tiny_llama
from torch import nn
from transformers import LlamaForCausalLM

LAYERS, HEADS, GROUPS, HEAD_SIZE, HIDDEN, NEURONS = 3, 4, 2, 8, 32, 24

LLAMA = next(a for a in ADAPTERS if a.family == "llama")  # the registered family: its structure as data


def _llama(seed: int = 0, attention: str = "sdpa") -> LlamaForCausalLM:
    return tiny_llama(
        seed,
        layers=LAYERS,
        hidden=HIDDEN,
        heads=HEADS,
        groups=GROUPS,
        intermediate=NEURONS,
        vocab_size=96,
        attention=attention,
    )


def _inputs() -> dict[str, torch.Tensor]:
    ids = torch.randint(0, 96, (2, 11), generator=torch.Generator().manual_seed(1))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _logits(model: nn.Module, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs, use_cache=False).logits


def _masks() -> Masks:
    """Layer 0: one query head in each group (uneven slicing: the groups keep 1 and 1 of 2, in order; then layer 0
    keeps head 1 of group 0 and head 3 of group 1). Layer 1: group 0 loses both its heads (a zero group), group 1
    keeps both, scaled. Layer 2: no heads and no neurons at all."""
    g = torch.Generator().manual_seed(3)
    head = torch.tensor([[0.0, 1.0, 0.0, 1.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    head = head * (0.5 + torch.rand(head.shape, generator=g))
    neuron = (torch.rand(LAYERS, NEURONS, generator=g) > 0.5).float() * (0.5 + torch.rand(LAYERS, NEURONS, generator=g))
    neuron[2] = 0.0
    return Masks(head, neuron)


def test_the_adapter_states_the_structure_as_data():
    model = _llama()
    dims = LLAMA.dims(model.config)
    assert dims == ModelDims(LAYERS, HEADS, HEAD_SIZE, HIDDEN, NEURONS, num_key_value_heads=GROUPS, mlp_inputs=2)
    assert (dims.grouped, dims.group_size, dims.kv_heads) == (True, 2, 2)
    layer = LLAMA.layer_modules(model)[0]
    assert LLAMA.ffn_inputs == ("ffn_gate", "ffn_in")
    assert [LLAMA.linear(layer, n).out_features for n in ("query", "key", "value")] == [32, 16, 16]
    assert LLAMA.linear(layer, "ffn_gate") is layer.mlp.gate_proj and LLAMA.linear(layer, "ffn_in") is layer.mlp.up_proj
    assert LLAMA.structure(model) == {
        "num_heads": [4] * 3,
        "intermediate_size": [24] * 3,
        "num_key_value_heads": [2] * 3,
        "head_groups": [[0, 0, 1, 1]] * 3,
    }
    # the registered families keep their data and their structure format
    bert = adapter_for(tiny_config("bert"))
    assert bert.ffn_inputs == ("ffn_in",) and bert.style.placement == "post" and bert.cfg_kv_heads is None
    with pytest.raises(ValueError, match="pre-norm"):
        dataclasses.replace(LLAMA, attn_residual=None)
    with pytest.raises(ConfigError, match="divisor"):
        ModelDims(1, 4, 8, 32, 24, num_key_value_heads=3)


def test_residual_taps_read_the_residual_stream_of_a_pre_norm_block():
    """The tuning targets are projection output + residual: in a pre-norm block the residual is the norm's input
    (the query's input is the normed state), so attention's tap + o_proj's output is the MLP's tap, and the MLP's
    tap + down_proj's output is the layer's output."""
    model = _llama()
    layer = LLAMA.layer_modules(model)[1]
    seen: dict[str, torch.Tensor] = {}

    def keep_input(name):
        return lambda _m, args: seen.__setitem__(name, args[0])

    def keep_output(name):
        return lambda _m, _a, out: seen.__setitem__(name, out[0] if isinstance(out, tuple) else out)

    handles = [
        LLAMA.residual(layer, "attention").register_forward_pre_hook(keep_input("attn_res")),
        LLAMA.residual(layer, "ffn").register_forward_pre_hook(keep_input("ffn_res")),
        LLAMA.linear(layer, "query").register_forward_pre_hook(keep_input("query_in")),
        LLAMA.linear(layer, "attn_out").register_forward_hook(keep_output("attn_out")),
        LLAMA.linear(layer, "ffn_out").register_forward_hook(keep_output("ffn_out")),
        layer.register_forward_hook(keep_output("layer_out")),
    ]
    _logits(model, _inputs())
    for h in handles:
        h.remove()
    torch.testing.assert_close(seen["attn_res"] + seen["attn_out"], seen["ffn_res"])
    torch.testing.assert_close(seen["ffn_res"] + seen["ffn_out"], seen["layer_out"])
    assert not torch.allclose(seen["query_in"], seen["attn_res"])  # the query reads the normed state


def test_masked_equals_sliced_with_grouped_query_attention_and_a_gated_mlp():
    model = _llama()
    masks = _masks()
    inputs = _inputs()
    with masks_applied(model, masks.head, masks.neuron, LLAMA):
        masked = _logits(model, inputs)
    pruned = export_pruned(model, masks, neuron_multiple=1, adapter=LLAMA)
    torch.testing.assert_close(_logits(pruned, inputs), masked, atol=1e-5, rtol=0)
    layers = LLAMA.layer_modules(pruned)
    # layer 0: one query head per group, in order: the family's own grouped attention (no expansion)
    assert [LLAMA.groups_in_layer(layer, HEAD_SIZE) for layer in layers] == [2, 1, 0]
    first, second = layers[0].self_attn, layers[1].self_attn
    assert not isinstance(first.k_proj, KVExpandedLinear) and first.num_key_value_groups == 1
    # layer 1: group 0 is gone with its key/value rows; group 1 serves both kept heads
    assert second.k_proj.weight.shape == (HEAD_SIZE, HIDDEN) and second.num_key_value_groups == 2
    structure = LLAMA.structure(pruned)
    assert structure["num_heads"] == [2, 2, 0] and structure["num_key_value_heads"] == [2, 1, 0]
    assert structure["intermediate_size"] == masks.neurons_per_layer() and structure["intermediate_size"][2] == 0
    assert structure["head_groups"] == [[0, 1], [0, 0], []]
    # the structure rebuilds the sliced shapes on a fresh dense model, which then loads the weights
    rebuilt = _llama(seed=1)
    LLAMA.reshape_to(rebuilt, structure)
    rebuilt.load_state_dict(pruned.state_dict(), strict=True)
    torch.testing.assert_close(_logits(rebuilt, inputs), masked, atol=1e-5, rtol=0)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_uneven_heads_per_group_expand_keys_and_values(attention):
    """Three query heads over two groups (2 + 1): the family's attention cannot repeat the keys evenly, so the
    key/value projections hand each query head its group's head."""
    model = _llama(attention=attention)
    head = torch.tensor([[1.0, 1.0, 0.0, 1.0], [1.0, 0.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    masks = Masks(head, torch.ones(LAYERS, NEURONS))
    inputs = _inputs()
    with masks_applied(model, masks.head, masks.neuron, LLAMA):
        masked = _logits(model, inputs)
    pruned = export_pruned(model, masks, adapter=LLAMA, even_groups=False)
    torch.testing.assert_close(_logits(pruned, inputs), masked, atol=1e-5, rtol=0)
    first = LLAMA.layer_modules(pruned)[0].self_attn
    assert isinstance(first.k_proj, KVExpandedLinear) and first.num_key_value_groups == 1
    assert first.k_proj.weight.shape == (2 * HEAD_SIZE, HIDDEN)  # two groups' rows, three heads' keys
    assert LLAMA.structure(pruned)["head_groups"] == [[0, 0, 1], [0, 1, 1], [0, 0, 1, 1]]
    assert set(pruned.state_dict()) == set(model.state_dict())  # the expansion index is not saved
    rebuilt = _llama(seed=2, attention=attention)
    LLAMA.reshape_to(rebuilt, LLAMA.structure(pruned))
    rebuilt.load_state_dict(pruned.state_dict(), strict=True)
    torch.testing.assert_close(_logits(rebuilt, inputs), masked, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["refit", "reselect"])
def test_tuning_refits_a_bias_free_pre_norm_model(mode):
    """Mask tuning reads the residual stream at the family's taps and refits output projections that have no bias
    (none is added); the export folds the refit weights in and computes what the masked, refit model does."""
    model = _llama()
    g = torch.Generator().manual_seed(0)
    batches = [
        {"input_ids": torch.randint(0, 96, (4, 10), generator=g), "attention_mask": torch.ones(4, 10).long()}
        for _ in range(3)
    ]
    masks = _masks().binary()
    tuned, reports = tune_masks(
        model, masks, None, batches, progress=False, mode=mode, adapter=LLAMA, cls_only_last_layer=False
    )
    assert [r.tuned for r in reports] == [True, True, True, True, False, False]  # layer 2 keeps nothing
    # each key/value group keeps as many query heads as the search gave it (a re-choice moves heads within groups)
    assert torch.equal(
        (tuned.head != 0).view(LAYERS, GROUPS, -1).sum(2), (masks.head != 0).view(LAYERS, GROUPS, -1).sum(2)
    )
    assert all(r.error_after < r.error_before for r in reports if r.tuned)
    assert tuned.weights and all(key.endswith(".weight") for key in tuned.weights)
    inputs = _inputs()
    with masks_applied(model, tuned.head, tuned.neuron, LLAMA), weights_applied(model, tuned.weights, LLAMA):
        masked = _logits(model, inputs)
    pruned = export_pruned(model, tuned, adapter=LLAMA)
    torch.testing.assert_close(_logits(pruned, inputs), masked, atol=1e-5, rtol=0)
    assert all(m.bias is None for m in pruned.modules() if isinstance(m, nn.Linear))
    # a decoder's default ridge is the causal one (calibration text is narrow: a weak ridge overfits it)
    explicit, _ = tune_masks(
        model,
        masks,
        None,
        batches,
        progress=False,
        mode=mode,
        ridge=CAUSAL_REFIT_RIDGE,
        adapter=LLAMA,
        cls_only_last_layer=False,
    )
    weak, _ = tune_masks(model, masks, None, batches, progress=False, mode=mode, ridge=1e-2, adapter=LLAMA)
    assert all(torch.equal(tuned.weights[k], explicit.weights[k]) for k in tuned.weights)
    assert not all(torch.allclose(tuned.weights[k], weak.weights[k]) for k in tuned.weights)


@pytest.mark.parametrize("empty_layer", [2, 0])
def test_generate_on_the_sliced_model_matches_the_masked_one(empty_layer):
    """Greedy tokens with the key/value cache; the layer without heads keeps nothing in the cache."""
    model = _llama()
    masks = _masks()
    if empty_layer == 0:
        masks.head[0], masks.head[2, 1:3] = 0.0, 1.0
    prompt = _inputs()
    with masks_applied(model, masks.head, masks.neuron, LLAMA), torch.no_grad():
        expected = model.generate(**prompt, max_new_tokens=5, do_sample=False)
    pruned = export_pruned(model, masks, adapter=LLAMA)
    with torch.no_grad():
        got = pruned.generate(**prompt, max_new_tokens=5, do_sample=False)
    assert torch.equal(got, expected)


def test_cost_model_against_a_hand_count():
    """MACs counted on the running model (every linear's in x out per token, and 2 s^2 dh per query head for the
    attention scores and context) equal the family's cost model, dense and pruned."""
    model = _llama()
    dims = LLAMA.dims(model.config)
    s = 11
    # by hand: q and o 32x8 per head, k and v 32x8 per group, gate/up/down 32 per neuron
    assert head_macs(s, dims) == 2 * s * 32 * 8 + 2 * s * s * 8
    assert group_macs(s, dims) == 2 * s * 32 * 8
    assert neuron_macs(s, dims) == 3 * s * 32
    assert dims.cost.head(s, dims) == s * (
        dims.cost.head_projections_per_token(dims) + dims.cost.attention_per_token(dims, s)
    )
    assert dims.cost.neuron(s, dims) == s * dims.cost.neuron_per_token(dims)
    masks = _masks()
    pruned = export_pruned(model, masks, neuron_multiple=1, adapter=LLAMA)
    for net, expected in ((model, dense_macs(dims, s)), (pruned, masked_macs(masks, dims, s))):
        assert _counted_macs(net, s) == expected
    assert masked_macs(masks, dims, s) == structure_macs(LLAMA.structure(pruned), dims, s)
    # layer 1 keeps 1 group of 2, layer 2 none: the groups kept are priced once each
    kept = 4 * head_macs(s, dims) + 3 * group_macs(s, dims) + masks.neuron.ne(0).sum().item() * neuron_macs(s, dims)
    assert masked_macs(masks, dims, s) == kept
    assert 0 < flops_ratio(masks, dims, s) < 1


def _counted_macs(model: nn.Module, seq_len: int) -> float:
    total = 0.0

    def count(module, _args, _out):
        nonlocal total
        total += seq_len * module.in_features * module.out_features

    linears = [m for layer in LLAMA.layer_modules(model) for m in layer.modules() if isinstance(m, nn.Linear)]
    handles = [m.register_forward_hook(count) for m in linears]
    ids = torch.zeros(1, seq_len, dtype=torch.long)
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    for h in handles:
        h.remove()
    heads = sum(LLAMA.heads_in_layer(layer, HEAD_SIZE) for layer in LLAMA.layer_modules(model))
    return total + heads * 2 * seq_len * seq_len * HEAD_SIZE


def test_the_family_builds_its_timed_blocks():
    """The latency table times the family's blocks: pre-norm RMSNorm, grouped keys and values, a gated MLP."""
    config = _llama().config
    attention = LLAMA.timed_block(config, "head", 3)  # 3 query heads need 2 groups of 2
    assert isinstance(attention.norm, nn.RMSNorm) and attention.key.out_features == 2 * HEAD_SIZE
    assert attention.query.bias is None
    ffn = LLAMA.timed_block(config, "neuron", 16)
    assert ffn.gate is not None and ffn.inp.out_features == 16 and isinstance(ffn.norm, nn.RMSNorm)
    x = torch.randn(2, 5, HIDDEN)
    for block in (attention, ffn):
        assert block(x).shape == x.shape
    # pre-norm: a block whose output projection is zero returns its input (the residual is not normalised)
    with torch.no_grad():
        ffn.out.weight.zero_()
    torch.testing.assert_close(ffn(x), x)
    block = adapter_for(tiny_config("bert")).timed_block(tiny_config("bert"), "head", 2)
    assert isinstance(block.norm, nn.LayerNorm) and block.key.out_features == 2 * block.head_size
