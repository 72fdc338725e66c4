"""The searches under grouped-query attention charge a key/value group while any of its query heads is kept, and
decide both how many query heads each group keeps and which groups go; the uniform split keeps whole, even groups
(a stock config); the rearrangement moves heads only within their group."""

from __future__ import annotations

import itertools

import pytest
import torch
from fastprune.common.method.allocate import search_flops_block
from fastprune.common.method.baselines import uniform_masks
from fastprune.common.method.fisher import MaskGradients
from fastprune.common.method.rearrange import rearrange_masks
from fastprune.common.method.search import search_flops
from fastprune.common.model.cost import dense_macs, group_macs, head_macs, masked_macs, neuron_macs
from fastprune.common.model.dims import ModelDims
from fastprune.common.model.masks import Masks
from fastprune.common.model.portable import fits_stock_config

SEQ = 16
ONE_LAYER = ModelDims(1, 4, 8, 32, 12, num_key_value_heads=2, mlp_inputs=2)
DIMS = ModelDims(3, 6, 8, 32, 40, num_key_value_heads=2, mlp_inputs=2)


def _best_by_brute_force(head: torch.Tensor, neuron: torch.Tensor, dims: ModelDims, constraint: float) -> float:
    """The largest kept importance within the budget, over every set of heads of a one-layer model."""
    budget = constraint * dense_macs(dims, SEQ)
    ranked = torch.sort(neuron[0].double(), descending=True).values
    best = 0.0
    for keep in itertools.product([0, 1], repeat=dims.num_heads):
        kept = torch.tensor(keep, dtype=torch.bool)
        groups = int(dims.kept_groups(kept[None])[0].sum())
        left = budget - int(kept.sum()) * head_macs(SEQ, dims) - groups * group_macs(SEQ, dims)
        if left < 0:
            continue
        n = min(int(left // neuron_macs(SEQ, dims)), dims.intermediate_size)
        best = max(best, float(head[0][kept].double().sum() + ranked[:n].sum()))
    return best


def _kept(masks: Masks, head: torch.Tensor, neuron: torch.Tensor) -> float:
    return float((head * masks.head).sum() + (neuron * masks.neuron).sum())


def test_a_group_of_unimportant_heads_goes_whole():
    """Group 1's two heads matter little: pruning both frees the group's key/value projections too, which buys more
    neurons than pruning one head in each group; the search finds the best split a brute force finds."""
    head = torch.tensor([[1.0, 0.9, 0.02, 0.01]])
    neuron = torch.linspace(0.2, 0.01, 12)[None]
    masks = search_flops(head, neuron, ONE_LAYER, SEQ, 0.6)
    assert masks.head.tolist() == [[1.0, 1.0, 0.0, 0.0]]
    assert masked_macs(masks, ONE_LAYER, SEQ) <= 0.6 * dense_macs(ONE_LAYER, SEQ)
    assert _kept(masks, head, neuron) == pytest.approx(_best_by_brute_force(head, neuron, ONE_LAYER, 0.6))
    # spreading the same head cuts over both groups keeps the group's cost: fewer neurons fit
    spread = Masks(torch.tensor([[1.0, 0.0, 1.0, 0.0]]), masks.neuron)
    assert masked_macs(spread, ONE_LAYER, SEQ) > masked_macs(masks, ONE_LAYER, SEQ)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("constraint", [0.3, 0.55, 0.8])
def test_the_grouped_search_stays_in_budget_near_the_best(seed, constraint):
    g = torch.Generator().manual_seed(seed)
    head, neuron = torch.rand(1, 4, generator=g), torch.rand(1, 12, generator=g) * 0.3
    masks = search_flops(head, neuron, ONE_LAYER, SEQ, constraint)
    assert masked_macs(masks, ONE_LAYER, SEQ) <= constraint * dense_macs(ONE_LAYER, SEQ) + 1e-6
    assert _kept(masks, head, neuron) >= 0.97 * _best_by_brute_force(head, neuron, ONE_LAYER, constraint)


def _grads(seed: int = 0, rows: int = 8) -> MaskGradients:
    g = torch.Generator().manual_seed(seed)
    return MaskGradients(
        torch.randn(rows, DIMS.num_layers, DIMS.num_heads, generator=g),
        torch.randn(rows, DIMS.num_layers, DIMS.intermediate_size, generator=g) * 0.3,
    )


@pytest.mark.parametrize("constraint", [0.2, 0.5, 0.8])
def test_every_allocation_pays_for_the_groups_it_keeps(constraint):
    grads = _grads()
    heads, neurons = grads.head_importance(), grads.neuron_importance()
    searched = {
        "global": search_flops(heads, neurons, DIMS, SEQ, constraint),
        "block": search_flops_block(grads.head, grads.neuron, heads, neurons, DIMS, SEQ, constraint),
        "uniform": uniform_masks(heads, neurons, DIMS, SEQ, constraint),
    }
    for name, masks in searched.items():
        assert masked_macs(masks, DIMS, SEQ) <= constraint * dense_macs(DIMS, SEQ) + 1e-6, name
        assert masked_macs(masks, DIMS, SEQ) >= (constraint - 0.1) * dense_macs(DIMS, SEQ), name


@pytest.mark.parametrize("constraint", [0.25, 0.5, 0.7])
def test_uniform_keeps_even_whole_groups_a_stock_config_describes(constraint):
    grads = _grads(1)
    masks = uniform_masks(grads.head_importance(), grads.neuron_importance(), DIMS, SEQ, constraint)
    per_group = (masks.head != 0).view(DIMS.num_layers, DIMS.kv_heads, DIMS.group_size).sum(-1)
    kept = per_group[per_group > 0]
    assert kept.numel() and len(set(kept.tolist())) == 1  # the same number of query heads in every kept group
    assert len(set((per_group > 0).sum(1).tolist())) == 1  # the same number of groups in every layer
    assert len(set(masks.neurons_per_layer())) == 1
    heads = int(kept[0])
    structure = {
        "num_heads": masks.heads_per_layer(),
        "intermediate_size": masks.neurons_per_layer(),
        "head_groups": [[j // heads for j in range(n)] for n in masks.heads_per_layer()],
    }
    assert fits_stock_config(structure, DIMS.num_heads, free_head_count=True)


def test_rearrangement_moves_heads_within_their_group_only():
    grads = _grads(2, rows=16)
    masks = search_flops(grads.head_importance(), grads.neuron_importance(), DIMS, SEQ, 0.5)
    moved = rearrange_masks(masks, grads, head_block=DIMS.group_size)
    per_group = (masks.head != 0).view(DIMS.num_layers, DIMS.kv_heads, -1).sum(-1)
    assert torch.equal((moved.head != 0).view(DIMS.num_layers, DIMS.kv_heads, -1).sum(-1), per_group)
    assert masked_macs(moved, DIMS, SEQ) == masked_macs(masks, DIMS, SEQ)
