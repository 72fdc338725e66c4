"""The benchmark suite's baselines on tiny models: random, weight-magnitude and uniform per-layer masks."""

import pytest
import torch
from fastprune.common.method.baselines import (
    magnitude_importance,
    magnitude_masks,
    random_masks,
    uniform_masks,
    uniform_split,
)
from fastprune.common.model.arch import ModelDims, adapter_for
from fastprune.common.model.cost import dense_macs, flops_ratio, head_macs, neuron_macs
from tiny import tiny_model

DIMS = ModelDims(num_layers=4, num_heads=6, head_size=8, hidden_size=48, intermediate_size=96)
SEQ_LEN = 20.0
CONSTRAINTS = (0.3, 0.5, 0.77)
LINEARS = ("query", "key", "value", "attn_out", "ffn_in", "ffn_out")


def _importance(seed: int = 0, dims: ModelDims = DIMS) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    head = torch.rand(dims.num_layers, dims.num_heads, generator=g, dtype=torch.float64)
    neuron = torch.rand(dims.num_layers, dims.intermediate_size, generator=g, dtype=torch.float64) * 0.05
    return head, neuron


def _one_neuron(dims: ModelDims = DIMS) -> float:
    return neuron_macs(SEQ_LEN, dims) / dense_macs(dims, SEQ_LEN)


@pytest.mark.parametrize("constraint", CONSTRAINTS)
def test_random_masks_fill_the_budget(constraint):
    masks = random_masks(DIMS, SEQ_LEN, constraint, seed=0)
    ratio = flops_ratio(masks, DIMS, SEQ_LEN)
    assert constraint - _one_neuron() < ratio <= constraint + 1e-12
    assert int(masks.head.sum()) == int(constraint * DIMS.num_layers * DIMS.num_heads)
    assert set(masks.head.unique().tolist()) <= {0.0, 1.0} and set(masks.neuron.unique().tolist()) <= {0.0, 1.0}


def test_random_masks_are_seeded():
    first, again, other = (random_masks(DIMS, SEQ_LEN, 0.5, seed=s) for s in (3, 3, 4))
    assert first.equal(again)
    assert not first.equal(other)


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_magnitude_importance_is_the_norm_of_a_units_weights(family):
    model = tiny_model(family)
    adapter = adapter_for(model)
    dims = adapter.dims(model.config)
    head, neuron = magnitude_importance(model)
    assert head.shape == (dims.num_layers, dims.num_heads) and neuron.shape == (dims.num_layers, dims.intermediate_size)
    layer, h, f = adapter.layer_modules(model)[1], 2, 5
    rows = slice(h * dims.head_size, (h + 1) * dims.head_size)
    weight = {n: adapter.linear(layer, n).weight.detach() for n in LINEARS}
    parts = [weight[n][rows] for n in ("query", "key", "value")] + [weight["attn_out"][:, rows].T]
    expected = torch.cat([p.flatten() for p in parts]).norm()
    assert float(head[1, h]) == pytest.approx(float(expected), rel=1e-5)
    ffn = torch.cat([weight["ffn_in"][f], weight["ffn_out"][:, f]])
    assert float(neuron[1, f]) == pytest.approx(float(ffn.norm()), rel=1e-5)


def test_magnitude_keeps_the_largest_units_within_the_budget():
    model = tiny_model("bert", layers=3, heads=4, intermediate=64)
    adapter = adapter_for(model)
    dims = adapter.dims(model.config)
    layers = adapter.layer_modules(model)
    with torch.no_grad():
        for name in ("query", "key", "value"):
            adapter.linear(layers[2], name).weight[dims.head_size : 2 * dims.head_size] *= 50  # head 1 of layer 2
        adapter.linear(layers[0], "ffn_in").weight[7] *= 50  # neuron 7 of layer 0
        adapter.linear(layers[1], "attn_out").weight.zero_()  # layer 1's heads: the smallest
    masks = magnitude_masks(model, SEQ_LEN, 0.4)
    ratio = flops_ratio(masks, dims, SEQ_LEN)
    assert 0.4 - neuron_macs(SEQ_LEN, dims) / dense_macs(dims, SEQ_LEN) < ratio <= 0.4
    assert int(masks.head.sum()) == int(0.4 * dims.num_layers * dims.num_heads)
    assert masks.head[2, 1] == 1 and masks.neuron[0, 7] == 1 and masks.head[1].sum() == 0
    for importance, mask in zip(magnitude_importance(model), (masks.head, masks.neuron), strict=True):
        kept = mask.bool()
        assert float(importance[kept].min()) >= float(importance[~kept].max())  # the largest units across layers


@pytest.mark.parametrize("constraint", CONSTRAINTS)
def test_uniform_masks_are_uniform_and_fill_the_budget(constraint):
    head, neuron = _importance()
    masks = uniform_masks(head, neuron, DIMS, SEQ_LEN, constraint)
    heads, neurons = masks.heads_per_layer(), masks.neurons_per_layer()
    assert len(set(heads)) == 1 and len(set(neurons)) == 1
    ratio = flops_ratio(masks, DIMS, SEQ_LEN)
    assert ratio <= constraint + 1e-12
    if neurons[0] < DIMS.intermediate_size:  # one more neuron in every layer would not fit
        assert ratio + DIMS.num_layers * _one_neuron() > constraint


def test_uniform_masks_keep_each_layers_most_important_units():
    head, neuron = _importance(seed=1)
    masks = uniform_masks(head, neuron, DIMS, SEQ_LEN, 0.5)
    for importance, mask in ((head, masks.head), (neuron, masks.neuron)):
        for row, kept in zip(importance, mask.bool(), strict=True):
            if 0 < int(kept.sum()) < row.numel():
                assert float(row[kept].min()) >= float(row[~kept].max())


def test_uniform_split_is_the_best_split_within_the_budget():
    head, neuron = _importance(seed=2)
    chosen = uniform_split(head, neuron, DIMS, SEQ_LEN, 0.5)
    budget = 0.5 * dense_macs(DIMS, SEQ_LEN) / DIMS.num_layers

    def score(h: int, f: int) -> float:
        top = lambda t, k: float(torch.sort(t, dim=1, descending=True).values[:, :k].sum())  # noqa: E731
        return top(head, h) + top(neuron, f)

    candidates = [
        (h, min(DIMS.intermediate_size, int((budget - h * head_macs(SEQ_LEN, DIMS)) // neuron_macs(SEQ_LEN, DIMS))))
        for h in range(DIMS.num_heads + 1)
        if h * head_macs(SEQ_LEN, DIMS) <= budget
    ]
    best = max(candidates, key=lambda c: score(*c))
    assert chosen == best


def test_uniform_with_heads_far_more_important_keeps_all_heads():
    head, neuron = _importance()
    head = head + 1e6
    heads, neurons = uniform_split(head, neuron, DIMS, SEQ_LEN, 0.8)
    assert heads == DIMS.num_heads and 0 < neurons < DIMS.intermediate_size
