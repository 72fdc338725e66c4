"""Bounded Fisher rows (issue 19, item 8): beyond ``max_rows`` the examples' gradient rows are folded into the kept
ones (a count-sketch); the diagonal importance stays exact, so the searches are unchanged, and what reads the rows
(rearrangement, the block allocation) gets an unbiased estimate of their Gram matrix."""

import logging

import pytest
import torch
from fastprune.common.folders import GRADS_FILE
from fastprune.common.method.allocate import search_by
from fastprune.common.method.fisher import GradientRows, MaskGradients, auto_max_rows, collect_mask_gradients
from fastprune.common.method.rearrange import head_block, rearrange_masks
from fastprune.common.model.arch import adapter_for
from fastprune.common.stages.run import run_stage
from fastprune.common.tasks.finetune import save_finetuned
from tiny import SST2, tiny_llama, tiny_model, tiny_tokenizer

SEQ = 16


@pytest.fixture(scope="module")
def llama():
    """A tiny grouped-query Llama and 6 batches of 2 windows: 12 gradient rows."""
    model = tiny_llama(layers=2, heads=4, groups=2, intermediate=24)
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(6):
        ids = torch.randint(5, 200, (2, SEQ), generator=g)
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()})
    return model, batches, adapter_for(model).dims(model.config)


@pytest.fixture(scope="module")
def measured(llama):
    model, batches, _ = llama
    return {rows: collect_mask_gradients(model, batches, progress=False, max_rows=rows) for rows in (0, 12, 5)}


def test_rows_that_fit_are_kept_exactly(measured):
    full, bounded = measured[0], measured[12]
    assert full.head.shape[0] == 12 and not full.folded
    assert torch.equal(full.head, bounded.head) and torch.equal(full.neuron, bounded.neuron)
    assert bounded.head_sq is None


@pytest.mark.parametrize("allocation", ["global", "uniform", "block"])
def test_folded_rows_keep_the_exact_importance_and_the_search(measured, llama, allocation):
    _, _, dims = llama
    full, folded = measured[0], measured[5]
    assert folded.folded and folded.head.shape == (5, *full.head.shape[1:]) and folded.neuron.shape[0] == 5
    assert torch.allclose(folded.head_importance(), full.head_importance(), rtol=1e-12, atol=0)
    assert torch.allclose(folded.neuron_importance(), full.neuron_importance(), rtol=1e-12, atol=0)
    assert not torch.allclose(folded.head.pow(2).sum(0).double(), full.head_importance())  # the rows are a sketch
    searched = search_by(allocation, folded, dims, SEQ, 0.6)
    if allocation == "block":  # reads the rows: a valid split within the budget, not necessarily the same one
        assert searched.head.shape == full.head.shape[1:] and 0 < searched.neuron.sum() < searched.neuron.numel()
    else:
        assert torch.equal(searched.head, search_by(allocation, full, dims, SEQ, 0.6).head)
        assert torch.equal(searched.neuron, search_by(allocation, full, dims, SEQ, 0.6).neuron)


def test_rearrangement_of_folded_rows_keeps_the_counts(measured, llama):
    _, _, dims = llama
    folded = measured[5]
    masks = search_by("global", folded, dims, SEQ, 0.5)
    new = rearrange_masks(masks, folded, head_block(dims))
    assert set(new.head.unique().tolist()) <= {0.0, 1.0} and set(new.neuron.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(new.neuron.sum(1), masks.neuron.sum(1))
    groups = new.head.view(dims.num_layers, -1, dims.group_size).sum(2)
    assert torch.equal(groups, masks.head.view(dims.num_layers, -1, dims.group_size).sum(2))


def test_folded_gradients_save_and_load_and_old_files_load(measured, tmp_path):
    folded = measured[5]
    folded.save(tmp_path / "g.safetensors")
    again = MaskGradients.load(tmp_path / "g.safetensors")
    assert again.folded and torch.equal(again.head_importance(), folded.head_importance())
    assert torch.equal(again.neuron, folded.neuron)
    old = MaskGradients(folded.head, folded.neuron)  # a file of rows only, as written before the bound
    old.save(tmp_path / "old.safetensors")
    loaded = MaskGradients.load(tmp_path / "old.safetensors")
    assert not loaded.folded and torch.equal(loaded.head_importance(), old.head_importance())


def test_the_sketched_gram_is_unbiased_and_sharpens_with_more_rows():
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(400, 1, 6, generator=g) + torch.randn(1, 1, 6, generator=g)  # correlated units
    gram = torch.einsum("nli,nlj->ij", rows.double(), rows.double())

    def estimate(kept: int, seed: int) -> torch.Tensor:
        sketch = GradientRows(6, kept, seed)
        for chunk in rows.split(7):
            sketch.add(chunk, chunk[:, :, :2])
        r = sketch.result().head.double()
        return torch.einsum("nli,nlj->ij", r, r)

    def error(kept: int) -> float:
        return float(torch.stack([(estimate(kept, s) - gram).norm() for s in range(20)]).mean() / gram.norm())

    mean = torch.stack([estimate(20, s) for s in range(200)]).mean(0)
    assert float((mean - gram).norm() / gram.norm()) < 0.05  # unbiased: the seeds' mean is near the Gram matrix
    assert error(160) < error(40) < error(10)


def test_the_automatic_bound_and_bad_bounds():
    assert auto_max_rows(32 * (32 + 11008), memory=64 * 2**30) == 64 * 2**30 // 8 // (4 * 32 * 11040)
    assert auto_max_rows(10**9, memory=2**30) == 1
    assert GradientRows(100).max_rows > 1000  # any machine has room for a thousand tiny rows
    with pytest.raises(ValueError, match="max_rows must be 0"):
        GradientRows(10, -1)


@pytest.fixture(scope="module")
def sst2_stages(tmp_path_factory) -> dict:
    """A tiny BERT's prepare and sample stage folders: 24 SST-2 examples in batches of 8."""
    w = tmp_path_factory.mktemp("sst2_stages")
    folder = save_finetuned(tiny_model("bert", layers=2), tiny_tokenizer(), w / "tiny")
    run_stage("prepare", w / "model", {"model": str(folder), "task": "sst2"})
    sample = {"train_data": str(SST2 / "train.tsv"), "task": "sst2", "num_samples": 24, "batch_size": 8}
    run_stage("sample", w / "sample", sample)
    return {"model": w / "model", "sample": w / "sample"}


def test_fisher_stage_takes_the_bound_and_logs_the_folding(sst2_stages, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="fastprune.common.method.fisher"):
        run_stage("fisher", tmp_path / "grads", {"device": "cpu", "fisher_max_rows": 4}, **sst2_stages)
    grads = MaskGradients.load(tmp_path / "grads" / GRADS_FILE)
    assert grads.folded and grads.head.shape[0] == 4
    assert "24 examples folded into 4 rows" in caplog.text


def test_per_token_rows_are_the_positions_shares_of_each_window_row(llama, measured):
    model, batches, dims = llama
    tokens = collect_mask_gradients(model, batches, progress=False, per_token=True)
    windows = measured[0]
    assert tokens.head.shape == (12 * SEQ, dims.num_layers, dims.num_heads) and not tokens.folded
    summed = tokens.neuron.view(12, SEQ, *tokens.neuron.shape[1:]).sum(1)
    assert torch.allclose(summed, windows.neuron, rtol=1e-4, atol=1e-6)
    assert torch.allclose(tokens.head.view(12, SEQ, -1).sum(1), windows.head.flatten(1), rtol=1e-4, atol=1e-6)
    # the importance sums the positions' squares, not the square of their sum
    assert not torch.allclose(tokens.head_importance(), windows.head_importance(), rtol=1e-2)


def test_fisher_stage_rows_by_task_or_per_token(sst2_stages, tmp_path):
    example = run_stage("fisher", tmp_path / "example", {"device": "cpu"}, **sst2_stages)  # by-task: example for sst2
    token = run_stage("fisher", tmp_path / "token", {"device": "cpu", "fisher_rows": "token"}, **sst2_stages)
    assert (example["rows"], example["num_rows"]) == ("example", 24)
    assert token["rows"] == "token" and token["num_rows"] > 24 * 4  # every padded position of every example
    rows = MaskGradients.load(tmp_path / "token" / GRADS_FILE)
    assert rows.head.shape[0] == token["num_rows"]
