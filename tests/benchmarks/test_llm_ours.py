"""The LLM benchmark's run of fastprune's stages (benchmarks/llm_ours.py) on a tiny in-process grouped-query Llama."""

import sys
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import llm_bench  # noqa: E402
import llm_data  # noqa: E402
import llm_ours  # noqa: E402
from fastprune.common.model.arch import adapter_for  # noqa: E402
from fastprune.common.model.cost import flops_ratio  # noqa: E402

SEQ = 16


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
    )
    model = LlamaForCausalLM(config).eval()
    windows = torch.randint(0, 64, (8, SEQ), generator=torch.Generator().manual_seed(1))
    return model, llm_data.window_batches(windows, 4), llm_data.causal_lm_task()


def test_label_free_fisher_differs_from_the_empirical_and_is_seeded(setup):
    model, batches, task = setup
    data = llm_ours.fisher(model, batches, task)
    drawn = [llm_ours.fisher(model, batches, task, "model", seed) for seed in (0, 0, 1)]
    assert data.head.shape == drawn[0].head.shape == (8, 2, 4)
    assert torch.equal(drawn[0].head, drawn[1].head)
    assert not torch.allclose(drawn[0].head, drawn[2].head)
    assert not torch.allclose(data.head, drawn[0].head)


def test_stages_keep_the_budget_and_tune_once_per_ridge(setup):
    model, batches, task = setup
    dims = adapter_for(model).dims(model.config)
    grads = llm_ours.fisher(model, batches, task)
    got = list(llm_ours.stages(model, grads, batches, task, SEQ, 0.6, "global", "tune", (1e-2, 10.0)))
    assert [name for name, _ in got] == ["search", "rearrange", "tune@0.01", "tune@10.0"]
    search, rearranged = got[0][1], got[1][1]
    # rearrangement within key/value groups keeps the groups the search paid for, so the cost too
    assert torch.equal(dims.kept_groups(search.head), dims.kept_groups(rearranged.head))
    assert flops_ratio(rearranged, dims, SEQ) == pytest.approx(flops_ratio(search, dims, SEQ))
    assert flops_ratio(search, dims, SEQ) <= 0.6
    weak, strong = got[2][1].weights, got[3][1].weights
    assert weak.keys() == strong.keys() and weak
    # a stronger ridge keeps the refit nearer the original weights
    dense = adapter_for(model).linear(adapter_for(model).layer_modules(model)[0], "ffn_out").weight
    key = "0.ffn_out.weight"
    kept = weak[key].abs().sum(0) != 0
    assert (strong[key] - dense)[:, kept].norm() < (weak[key] - dense)[:, kept].norm()


def test_ridge_flag_reads_numbers_and_auto_and_refuses_the_rest():
    assert llm_bench._ridge("auto") == "auto"
    assert llm_bench._ridge("0.1") == 0.1
    for bad in ("-1", "big"):
        with pytest.raises(Exception, match="--tuning-ridge must be a number >= 0 or auto"):
            llm_bench._ridge(bad)
