"""The latency table and search for decoders: attention timed per (query heads, key/value groups), MLP blocks on a
neuron grid, for a prefill and for one decoding step over a key/value cache; a tiny grouped-query Llama."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from fastprune.common.errors import ConfigError
from fastprune.common.method.latency_search import groups_per_layer, masks_latency, search_latency
from fastprune.common.method.latency_table import LatencyTable, build_lut
from fastprune.common.model.arch import ModelDims, adapter_for
from fastprune.common.model.blocks import kv_cache
from fastprune.common.model.masks import Masks
from fastprune.common.model.timing import default_modes, model_call, profile_models, random_inputs
from fastprune.common.stages.config import PruneConfig
from tiny import tiny_config, tiny_llama, tiny_llama_config, tiny_model
from transformers import LlamaConfig, LlamaForCausalLM

HEADS, GROUPS, HEAD_SIZE, HIDDEN, NEURONS, LAYERS = 4, 2, 8, 32, 24, 3
SHAPES = [(1, 1), (2, 1), (2, 2), (3, 2), (4, 2)]  # (query heads, groups): every group count that holds the heads


def _config() -> LlamaConfig:
    return tiny_llama_config(LAYERS, HIDDEN, HEADS, GROUPS, NEURONS, vocab_size=64)


@pytest.fixture(scope="module")
def tables() -> dict[str, LatencyTable]:
    config = _config()
    return {
        mode: build_lut(config, "cpu", 2, 6, neuron_grid=[8, 16], repeats=2, warmup=1, mode=mode)
        for mode in ("prefill", "decode")
    }


def test_the_table_has_an_entry_per_heads_and_groups_and_per_neuron_count_in_both_modes(tables):
    for mode, table in tables.items():
        assert table.mode == mode and table.seq_len == 6 and table.dims.kv_heads == GROUPS
        assert [(h, g) for h, g, _ in table.attention] == SHAPES
        assert [n for n, _ in table.neurons] == [8, 16, NEURONS]
        assert [h for h, _ in table.heads] == [1, 2, 3, 4]  # at the fewest groups that hold them
        assert all(ms > 0 for *_, ms in table.attention)
        assert table.group_ms >= 0
        for h, g in SHAPES:  # monotone in heads and in groups; nothing without heads
            assert table.attention_ms(h, g) >= table.attention_ms(h - 1, max(1, g - 1)) >= 0
        assert table.attention_ms(0, 0) == 0.0
        assert table.matches(_config(), "cpu", 2, 6, "float32", mode)
    prefill, decode = tables["prefill"], tables["decode"]
    assert not prefill.matches(_config(), "cpu", 2, 6, "float32", "decode")
    assert prefill.key() != decode.key() and "decode-kv6" in decode.key()


def test_decode_blocks_attend_one_token_over_a_cache_of_the_given_length(monkeypatch):
    seen: list[tuple] = []
    real = F.scaled_dot_product_attention

    def recording(q, k, v, *args, **kwargs):
        seen.append((tuple(q.shape), tuple(k.shape), kwargs.get("is_causal", False)))
        return real(q, k, v, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    build_lut(_config(), "cpu", 3, 7, neuron_grid=[8], repeats=1, warmup=0, mode="decode")
    heads = [h for h, _ in SHAPES]
    # q: [batch, heads, 1 new token, head size]; k: the 7 cached tokens and the new one, expanded to the heads
    assert [(q, k) for q, k, _ in seen] == [((3, h, 1, HEAD_SIZE), (3, h, 8, HEAD_SIZE)) for h in heads]
    seen.clear()
    build_lut(_config(), "cpu", 3, 7, neuron_grid=[8], repeats=1, warmup=0, mode="prefill")
    assert seen == [((3, h, 7, HEAD_SIZE), (3, h, 7, HEAD_SIZE), True) for h in heads]  # a decoder's prefill is causal


@pytest.mark.parametrize("heads,groups", [(3, 2), (2, 2), (4, 2)])
def test_a_decoding_step_over_the_cache_computes_the_prefills_last_position(heads, groups):
    """The decode block is a real decoding step: attending over the cache of a prefix gives what the causal prefill
    of prefix + token gives at the token."""
    torch.manual_seed(0)
    config = _config()
    block = adapter_for(config).timed_block(config, "head", heads, groups).eval()
    assert block.key.out_features == groups * HEAD_SIZE
    x = torch.randn(2, 6, HIDDEN)
    with torch.no_grad():
        normed = block.norm(x[:, :5])
        past = tuple(proj(normed).view(2, 5, groups, HEAD_SIZE).transpose(1, 2) for proj in (block.key, block.value))
        step = block(x[:, 5:], past)
        torch.testing.assert_close(step, block(x)[:, 5:], rtol=1e-5, atol=1e-5)
    cache = kv_cache(2, groups, 5, HEAD_SIZE, torch.device("cpu"), torch.float32)
    assert [tuple(t.shape) for t in cache] == [(2, groups, 5, HEAD_SIZE)] * 2
    assert block(x[:, 5:], cache).shape == (2, 1, HIDDEN)


def test_the_group_latency_is_fitted_and_charged_once_per_kept_group():
    dims = ModelDims(LAYERS, HEADS, HEAD_SIZE, HIDDEN, NEURONS, num_key_value_heads=GROUPS, mlp_inputs=2)
    table = LatencyTable.from_measurements(
        device="test",
        dtype="float32",
        batch_size=1,
        seq_len=8,
        dims=dims,
        attention=[(h, g, 1.0 + 0.5 * h + 2.0 * g) for h, g in SHAPES],
        neurons=[(n, 0.1 * n) for n in (8, 16, NEURONS)],
        mode="decode",
    )
    assert table.group_ms == pytest.approx(2.0) and table.head_fit.slope_ms_per_unit == pytest.approx(0.5)
    assert table.attention_ms(3, 2) == pytest.approx(1.0 + 1.5 + 4.0)
    spread, packed = Masks.ones(dims), Masks.ones(dims)
    spread.head[:] = torch.tensor([1.0, 0.0, 1.0, 0.0])  # one head in each group
    packed.head[:] = torch.tensor([1.0, 1.0, 0.0, 0.0])  # both heads in group 0: group 1 goes
    assert groups_per_layer(spread, dims) == [2] * LAYERS and groups_per_layer(packed, dims) == [1] * LAYERS
    assert masks_latency(spread, table) - masks_latency(packed, table) == pytest.approx(LAYERS * 2.0)
    assert masks_latency(Masks.ones(dims), table) == pytest.approx(table.dense_ms())
    generator = torch.Generator().manual_seed(0)
    for _ in range(10):  # the search pays a group with the first of its heads it keeps: never over the budget
        head_imp, neuron_imp = torch.rand(LAYERS, HEADS, generator=generator), torch.rand(LAYERS, NEURONS)
        for constraint in (0.2, 0.4, 0.6, 0.8):
            masks = search_latency(head_imp, neuron_imp, table, constraint)
            assert masks_latency(masks, table) <= constraint * table.dense_ms()


@pytest.mark.parametrize("mode", ["prefill", "decode"])
def test_the_latency_search_meets_the_target_with_groups_as_sliced(mode):
    """Masks within the budget under the table, whose kept groups are those the sliced model keeps (a table of fixed
    block latencies: timed ones vary with the machine's load)."""
    table = LatencyTable.from_measurements(
        device="test",
        dtype="float32",
        batch_size=2,
        seq_len=6,
        dims=ModelDims(LAYERS, HEADS, HEAD_SIZE, HIDDEN, NEURONS, num_key_value_heads=GROUPS, mlp_inputs=2),
        attention=[(h, g, 0.2 + 0.3 * h + 0.4 * g) for h, g in SHAPES],
        neurons=[(n, 0.05 * n) for n in (8, 16, NEURONS)],
        mode=mode,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(_config()).eval()
    adapter = adapter_for(model)
    generator = torch.Generator().manual_seed(1)
    for constraint in (0.3, 0.5, 0.8):
        head_imp = torch.rand(LAYERS, HEADS, generator=generator)
        neuron_imp = torch.rand(LAYERS, NEURONS, generator=generator)
        masks = search_latency(head_imp, neuron_imp, table, constraint)
        assert masks_latency(masks, table) <= constraint * table.dense_ms()
        assert masks_latency(masks, table) > (constraint - 0.35) * table.dense_ms()  # the budget is spent
        sliced = copy.deepcopy(model)
        for layer, heads, neurons in zip(adapter.layer_modules(sliced), masks.head, masks.neuron, strict=True):
            adapter.slice_layer(layer, heads.nonzero().flatten(), neurons.nonzero().flatten(), HEAD_SIZE)
        structure = adapter.structure(sliced)
        assert structure["num_key_value_heads"] == groups_per_layer(masks, table.dims)
        by_structure = sum(
            table.attention_ms(h, g) + table.neuron_fit.predict(n)
            for h, g, n in zip(
                structure["num_heads"], structure["num_key_value_heads"], structure["intermediate_size"], strict=True
            )
        )
        assert by_structure == pytest.approx(masks_latency(masks, table))
        ids = torch.randint(0, 64, (1, 5), generator=generator)
        assert sliced(input_ids=ids).logits.shape == (1, 5, 64)


def test_a_table_saved_before_groups_were_timed_still_loads(tmp_path):
    table = build_lut(tiny_config("bert"), "cpu", 1, 4, neuron_grid=[8], repeats=1, warmup=0)
    old = table.model_dump(mode="json")
    old["heads"] = [[h, ms] for h, _, ms in old.pop("attention")]
    del old["group_ms"], old["mode"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert LatencyTable.load(tmp_path / "old.json") == table


def test_decode_is_refused_for_an_encoder_before_any_timing(monkeypatch):
    from fastprune.common.model import timing

    def no_timing(*_args, **_kwargs):
        raise AssertionError("timed before refusing")

    monkeypatch.setattr(timing, "time_interleaved", no_timing)
    with pytest.raises(ConfigError, match="latency mode 'decode'.*bert encoder.*use latency mode 'prefill'"):
        build_lut(tiny_config("bert"), "cpu", 2, 8, mode="decode")
    with pytest.raises(ConfigError, match="latency mode must be one of prefill, decode, got 'generate'"):
        build_lut(_config(), "cpu", 2, 8, mode="generate")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="latency_mode 'decode'.*task 'sst2'.*use latency_mode 'prefill'"):
        PruneConfig(
            model="m", task="sst2", train_data="t", constraint=0.5, constraint_metric="latency", latency_mode="decode"
        )
    flops = PruneConfig(model="m", task="sst2", train_data="t", constraint=0.5, latency_mode="decode")
    assert flops.latency_mode == "decode"  # ignored without a latency constraint, as the other latency options


# ----- end-to-end profile of a causal LM: a prefill and a decoding step ---------------------------------------------
def test_prefill_and_decode_calls_give_the_full_forwards_last_position_and_leave_the_cache_as_it_was():
    model = tiny_llama(layers=2)
    inputs = random_inputs(2, 6, model.config.vocab_size, seed=1)
    ids = inputs["input_ids"]
    with torch.inference_mode():
        full = model(input_ids=torch.cat([ids, ids[:, -1:]], dim=1)).logits
        prefill = model_call(model, inputs, "prefill")()
        step = model_call(model, inputs, "decode")
        first, second = step(), step()  # the second step sees the prompt's cache again, not prompt + one token
    assert prefill.logits.shape == (2, 1, model.config.vocab_size)
    torch.testing.assert_close(prefill.logits[:, 0], full[:, -2], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(first.logits[:, 0], full[:, -1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(second.logits, first.logits)
    assert first.cache.get_seq_length() == 6


def test_a_causal_lm_is_profiled_in_prefill_and_decode_and_an_encoder_in_one_forward():
    dense = tiny_llama(layers=2)
    sliced = copy.deepcopy(dense)
    adapter = adapter_for(sliced)
    for layer in adapter.layer_modules(sliced):  # one of the two key/value groups (its two query heads), 16 neurons
        adapter.slice_layer(layer, torch.arange(2), torch.arange(16), adapter.dims(sliced.config).head_size)
    assert default_modes(dense) == ("prefill", "decode") and default_modes(tiny_model()) == ("forward",)
    models = {"original": dense, "pruned": sliced}
    result = profile_models(models, [2], [6], repeats=2, warmup=1, vocab_size=64, modes=default_modes(dense))
    assert [(e.model, e.mode) for e in result.entries] == [
        ("original", "prefill"),
        ("pruned", "prefill"),
        ("original", "decode"),
        ("pruned", "decode"),
    ]
    figures = result.comparison("original", "pruned")
    decode = result.entry("pruned", batch_size=2, seq_len=6, mode="decode")
    assert figures["decode_speedup"] == decode.speedup and figures["decode_latency_after_ms"] == decode.p50_ms
    assert figures["speedup"] == figures["prefill_speedup"] > 0  # the plain keys: the first mode's
    assert "| pruned | decode | float32 | 2 | 6 |" in result.to_markdown()
    encoder = profile_models({"m": tiny_model()}, [1], [4], repeats=1, warmup=0, vocab_size=100)
    assert "decode_speedup" not in encoder.comparison("m", "m") and " mode |" not in encoder.to_markdown()
    with pytest.raises(ConfigError, match="profile modes \\['generate'\\]: each must be one of forward, prefill"):
        profile_models(models, [1], [4], modes=["generate"])
    with pytest.raises(ConfigError, match="time a causal LM; bert does not generate: use forward"):
        profile_models({"bert": tiny_model()}, [1], [4], modes=["decode"])
