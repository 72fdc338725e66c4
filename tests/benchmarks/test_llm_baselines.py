"""The LLM benchmark's baselines, measurements and run of fastprune's stages (benchmarks/llm_*.py) on a tiny
in-process grouped-query Llama."""

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import llm_baselines as bl  # noqa: E402
import llm_bench  # noqa: E402
import llm_data  # noqa: E402
import llm_ours  # noqa: E402
import llm_report  # noqa: E402
from fastprune.common.model.arch import adapter_for  # noqa: E402
from fastprune.common.model.cost import dense_macs, flops_ratio, group_macs, head_macs, neuron_macs  # noqa: E402
from fastprune.common.model.masks import Masks, masks_applied  # noqa: E402
from tiny import tiny_llama  # noqa: E402

SEQ = 16


@pytest.fixture(scope="module")
def llama():
    return tiny_llama(vocab_size=64)


@pytest.fixture(scope="module")
def windows():
    return torch.randint(0, 64, (6, SEQ), generator=torch.Generator().manual_seed(1))


def _dims(model):
    return adapter_for(model).dims(model.config)


def _largest_unit(dims) -> float:
    return max(head_macs(SEQ, dims) + group_macs(SEQ, dims), neuron_macs(SEQ, dims)) / dense_macs(dims, SEQ)


@pytest.mark.parametrize("constraint", [0.5, 0.6, 0.8, 0.9])
def test_every_allocation_spends_the_budget_within_one_unit(llama, constraint):
    dims = _dims(llama)
    g = torch.Generator().manual_seed(2)
    head, neuron = torch.rand(2, 4, generator=g), torch.rand(2, 48, generator=g)
    global_ = bl.global_masks(head, neuron, dims, SEQ, constraint)
    assert constraint - _largest_unit(dims) < flops_ratio(global_, dims, SEQ) <= constraint
    per_layer_neuron = neuron_macs(SEQ, dims) * dims.num_layers / dense_macs(dims, SEQ)
    for heads in (None, bl.same_share_heads(dims, constraint)):
        uniform = bl.uniform_masks(head, neuron, dims, SEQ, constraint, heads)
        assert constraint - per_layer_neuron < flops_ratio(uniform, dims, SEQ) <= constraint
        assert len(set(uniform.heads_per_layer())) == 1 and len(set(uniform.neurons_per_layer())) == 1
    assert bl.uniform_masks(head, neuron, dims, SEQ, constraint, 3).heads_per_layer() == [3, 3]


def test_global_masks_remove_the_lowest_units_and_free_a_group_with_its_last_head(llama):
    dims = _dims(llama)
    head = torch.tensor([[-9.0, -8.0, 5.0, 5.0], [5.0, 5.0, 5.0, 5.0]])  # layer 0's first group ranks last
    neuron = torch.ones(2, 48)
    freed = (2 * head_macs(SEQ, dims) + group_macs(SEQ, dims)) / dense_macs(dims, SEQ)
    masks = bl.global_masks(head, neuron, dims, SEQ, 1.0 - freed + 1e-9)
    assert masks.head.tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]] and bool(masks.neuron.all())
    assert dims.kept_groups(masks.head).tolist() == [[False, True], [True, True]]


def _activations(model, windows, name):
    """Every token's input to each layer's ``name`` projection: [L, tokens, channels]."""
    adapter, seen = adapter_for(model), []
    handles = [
        adapter.linear(layer, name).register_forward_pre_hook(lambda _m, a: seen.append(a[0].flatten(0, -2)))
        for layer in adapter.layer_modules(model)
    ]
    with torch.no_grad():
        model(input_ids=windows)
    for h in handles:
        h.remove()
    return torch.stack(seen).double()


def test_wanda_sp_and_flap_scores_follow_their_definitions(llama, windows):
    stats = bl.channel_stats(llama, windows.split(4))
    assert stats.tokens == windows.numel()
    x = _activations(llama, windows, "ffn_out")
    down = adapter_for(llama).layer_modules(llama)[1].mlp.down_proj.weight.double()
    _, wanda = bl.wanda_sp_scores(llama, stats)
    assert torch.allclose(wanda[1], down.abs().sum(0) * x[1].pow(2).sum(0).sqrt())
    heads, neurons = bl.flap_scores(llama, stats)
    raw = x[1].var(0, unbiased=False) * down.pow(2).sum(0)
    assert torch.allclose(neurons[1], (raw - raw.mean()) / raw.std())
    assert torch.allclose(heads.mean(1), torch.zeros(2, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(heads.std(1), torch.ones(2, dtype=torch.float64))


def test_flap_bias_compensation_keeps_the_mean_output_of_a_pruned_projection(llama, windows):
    stats = bl.channel_stats(llama, [windows])
    dims = _dims(llama)
    masks = Masks.ones(dims)
    masks.neuron[0, ::2] = 0.0  # only layer 0's MLP is pruned: its input is the dense one
    down = adapter_for(llama).layer_modules(llama)[0].mlp.down_proj

    def mean_output():  # hooked last: after the masks' and the biases' hooks
        outs = []
        handle = down.register_forward_hook(lambda _m, _a, out: outs.append(out.flatten(0, -2).mean(0)))
        with torch.no_grad():
            llama(input_ids=windows)
        handle.remove()
        return outs[0]

    dense = mean_output()
    with masks_applied(llama, masks.head, masks.neuron):
        pruned = mean_output()
        with bl.biases_applied(llama, bl.flap_biases(llama, stats, masks)):
            compensated = mean_output()
    assert not torch.allclose(pruned, dense, atol=1e-4)
    assert torch.allclose(compensated, dense, atol=1e-5)


def test_perplexity_is_the_models_own_loss_and_windows_tile_the_text(llama, windows, tmp_path):
    dense = llm_data.perplexity(llama, windows[:1])
    with torch.no_grad():
        loss = llama(input_ids=windows[:1], labels=windows[:1]).loss
    assert dense == pytest.approx(math.exp(float(loss)), rel=1e-5)
    dims = _dims(llama)
    assert llm_data.perplexity(llama, windows, Masks.ones(dims), batch_size=4) == pytest.approx(
        llm_data.perplexity(llama, windows), rel=1e-6
    )
    text = tmp_path / "t.txt"
    text.write_text("abcdefghij", encoding="utf-8")

    def tokenizer(s, add_special_tokens):
        return {"input_ids": [ord(c) for c in s]}

    assert llm_data.text_windows(tokenizer, [text, text], 4).tolist() == [[97, 98, 99, 100], [101, 102, 103, 104]] * 2
    with pytest.raises(ValueError, match="no whole window"):
        llm_data.text_windows(tokenizer, [text], 11)


def test_costs_count_kept_groups(llama):
    dims = _dims(llama)
    masks = Masks.ones(dims)
    masks.head[0, :2] = 0.0  # layer 0's first group goes
    counts = llm_data.kept_counts(masks, dims)
    assert counts == {"heads": 6, "groups": 3, "neurons": 96}
    assert llm_data.kv_bytes_per_token(counts, dims) == 2 * 3 * 8 * 2
    assert llm_data.decoder_params(llm_data.dense_counts(dims), dims) == sum(
        p.numel() for n, p in llama.named_parameters() if "proj" in n
    )


def test_torch_pruning_prunes_a_copy_to_the_asked_flops(llama, windows):
    pytest.importorskip("torch_pruning")
    import llm_torch_pruning

    batches = llm_data.window_batches(windows, 3)
    for constraint in (0.8, 0.6):
        pruned = llm_torch_pruning.prune_to_flops(llama, batches, constraint, SEQ)
        keep = llm_torch_pruning.mlp_neurons_for(llama, constraint, SEQ)
        counts = llm_data.sliced_counts(pruned)
        assert counts == {"heads": 8, "groups": 4, "neurons": 2 * keep}
        masks = Masks(torch.ones(2, 4), (torch.arange(48) < keep).float().expand(2, 48))
        assert constraint - _largest_unit(_dims(llama)) * 2 < flops_ratio(masks, _dims(llama), SEQ) <= constraint
        assert pruned(input_ids=windows).logits.shape == (6, SEQ, 64)
    assert adapter_for(llama).neurons_in_layer(llama.model.layers[0]) == 48  # the original is untouched
    with pytest.raises(ValueError, match="attention alone"):
        llm_torch_pruning.mlp_neurons_for(llama, 0.1, SEQ)


def _record(method, c, ppl, seed=0):
    return {"method": method, "seed": seed, "constraint": c, "flops_kept": c, "ppl": {"wiki": ppl}, "prune_seconds": 1}


def test_report_checks_the_targets_against_dense_and_the_best_baseline():
    records = [_record("dense", 1.0, 10.0, None), _record("flap", 0.8, 16.0), _record("wanda-sp", 0.8, 14.0)]
    records += [_record("ours:tune", 0.8, 14.5, 0), _record("ours:tune", 0.8, 13.5, 1), _record("ours:tune", 0.6, 25.0)]
    verdicts = llm_report.verdicts(records)
    assert verdicts[0] == (
        "- FLOPs 0.8 `ours:tune`: 14.00 (1.40x dense); target <= 1.5x: met; best baseline `wanda-sp` 14.00: NOT beaten"
    )
    assert "target <= 3x: met" in verdicts[1] and "best baseline" not in verdicts[1]
    assert "| ours:tune | 14.00 (1.40x) [2] | 25.00 (2.50x) [1] |" in llm_report.table(records)


@pytest.fixture(scope="module")
def calibration(llama, windows):
    return llm_data.window_batches(windows, 3), llm_data.causal_lm_task()


def test_label_free_fisher_differs_from_the_empirical_and_is_seeded(llama, calibration):
    batches, task = calibration
    data = llm_ours.fisher(llama, batches, task)
    drawn = [llm_ours.fisher(llama, batches, task, "model", seed) for seed in (0, 0, 1)]
    assert data.head.shape == drawn[0].head.shape == (6, 2, 4)
    assert torch.equal(drawn[0].head, drawn[1].head)
    assert not torch.allclose(drawn[0].head, drawn[2].head)
    assert not torch.allclose(data.head, drawn[0].head)


def test_stages_keep_the_budget_and_tune_once_per_ridge(llama, calibration):
    batches, task = calibration
    dims = _dims(llama)
    grads = llm_ours.fisher(llama, batches, task)
    got = list(llm_ours.stages(llama, grads, batches, task, SEQ, 0.6, "global", "tune", (1e-2, 10.0)))
    assert [name for name, _ in got] == ["search", "rearrange", "tune@0.01", "tune@10.0"]
    search, rearranged = got[0][1], got[1][1]
    # rearrangement within key/value groups keeps the groups the search paid for, so the cost too
    assert torch.equal(dims.kept_groups(search.head), dims.kept_groups(rearranged.head))
    assert flops_ratio(rearranged, dims, SEQ) == pytest.approx(flops_ratio(search, dims, SEQ))
    assert flops_ratio(search, dims, SEQ) <= 0.6
    weak, strong = got[2][1].weights, got[3][1].weights
    assert weak.keys() == strong.keys() and weak
    # a stronger ridge keeps the refit nearer the original weights
    dense = adapter_for(llama).linear(adapter_for(llama).layer_modules(llama)[0], "ffn_out").weight
    key = "0.ffn_out.weight"
    kept = weak[key].abs().sum(0) != 0
    assert (strong[key] - dense)[:, kept].norm() < (weak[key] - dense)[:, kept].norm()


def test_stages_refit_the_input_projections_once_per_input_ridge(llama, calibration):
    batches, task = calibration
    grads = llm_ours.fisher(llama, batches, task)
    got = dict(llm_ours.stages(llama, grads, batches, task, SEQ, 0.6, "global", "tune", input_ridges=(None, 1.0)))
    assert list(got) == ["search", "rearrange", "tune", "tune@in1.0"]
    assert "1.query.weight" in got["tune@in1.0"].weights and "1.query.weight" not in got["tune"].weights
    assert got["tune"].equal(got["tune@in1.0"])  # the same units kept


def test_ridge_and_shrink_flags_read_numbers_and_their_words_and_refuse_the_rest():
    ridge = llm_bench._number_or("--tuning-ridge", ("auto",))
    assert ridge("auto") == "auto" and ridge("0.1") == 0.1 and ridge("100") == 100.0
    for bad in ("-1", "big", "nan", "cv"):
        with pytest.raises(Exception, match="--tuning-ridge must be a number in"):
            ridge(bad)
    shrink = llm_bench._number_or("--rearrange-shrink", ("auto",), 1.0)
    assert shrink("auto") == "auto" and shrink("0.5") == 0.5
    with pytest.raises(Exception, match=r"--rearrange-shrink must be a number in \[0, 1.0\]"):
        shrink("2")


def test_generated_windows_keep_the_prompt_and_sample_the_rest_reproducibly(llama, windows):
    real = windows[:3]
    made = llm_data.generated_windows(llama, real, prompt=4, seed=0)
    assert made.shape == real.shape
    assert torch.equal(made[:, :4], real[:, :4])
    assert not torch.equal(made[:, 4:], real[:, 4:])
    assert torch.equal(made, llm_data.generated_windows(llama, real, prompt=4, seed=0))
    with pytest.raises(ValueError, match="prompt must be between 1 and"):
        llm_data.generated_windows(llama, real, prompt=real.shape[1], seed=0)
