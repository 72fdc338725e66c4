"""Budget allocation by the block-diagonal Fisher (``search.allocation = "block"``)."""

import itertools

import pytest
import torch
from fastprune.common.method.allocate import (
    AUTO_CANDIDATES,
    allocate,
    choose_allocation,
    removal_curve,
    search_by,
    search_flops_block,
    spend_curve,
    teacher_masks,
)
from fastprune.common.method.fisher import MaskGradients
from fastprune.common.method.rearrange import head_block, rearrange_masks
from fastprune.common.method.search import search_flops
from fastprune.common.model.arch import ModelDims
from fastprune.common.model.cost import dense_macs, flops_ratio, masked_macs
from fastprune.common.stages.config import PruneConfig, SearchParams

DIMS = ModelDims(num_layers=3, num_heads=4, head_size=8, hidden_size=32, intermediate_size=24)
SEQ = 10.0


def test_removal_curve_is_the_block_fisher_cost_of_the_least_important_units():
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(50, 6, generator=g)
    importance = rows.double().pow(2).sum(0)
    importance[2] = -torch.inf  # unavailable: never kept, never counted
    order, loss = removal_curve(rows, importance)
    assert 2 not in order.tolist() and len(loss) == 6
    ranked = [i for i in torch.argsort(importance, descending=True).tolist() if i != 2]
    assert order.tolist() == ranked
    for k in range(6):
        pruned = ranked[k:]
        expected = rows[:, pruned].double().sum(1).pow(2).sum() if pruned else 0.0
        assert float(loss[k]) == pytest.approx(float(expected), rel=1e-9, abs=1e-12)


def test_allocate_finds_a_cheap_split_within_the_budget():
    """Within the budget; on convex curves at least as cheap as the best split of the budget less one unit's cost
    (the relaxation is exact up to that), otherwise never worse than pruning everything."""
    g = torch.Generator().manual_seed(1)
    for trial in range(40):
        # convex decreasing curves (a knapsack the relaxation solves exactly), then random ones
        curves = [torch.rand(5, generator=g, dtype=torch.float64).sort(descending=True).values for _ in range(3)]
        if trial < 20:
            curves = [torch.cat([(c.flip(0).cumsum(0).flip(0)), c.new_zeros(1)]) for c in curves]
        else:
            curves = [torch.cat([c, c.new_zeros(1)]) for c in curves]
        costs, budget = [3.0, 1.0, 2.0], float(torch.randint(1, 25, (1,), generator=g))
        ks = allocate(curves, [spend_curve(len(c) - 1, w) for c, w in zip(curves, costs, strict=True)], budget)
        assert sum(k * w for k, w in zip(ks, costs, strict=True)) <= budget + 1e-9
        got = sum(float(c[k]) for c, k in zip(curves, ks, strict=True))
        smaller = [
            sum(float(c[k]) for c, k in zip(curves, combo, strict=True))
            for combo in itertools.product(*(range(len(c)) for c in curves))
            if sum(k * w for k, w in zip(combo, costs, strict=True)) <= budget - max(costs)
        ]
        if trial < 20 and smaller:
            assert got <= min(smaller) + 1e-9
        assert got <= sum(float(c[0]) for c in curves) + 1e-9


def test_uncorrelated_gradients_give_the_diagonal_search():
    """With one non-zero gradient entry per row, the block cost of a pruned set is its summed diagonal importance:
    the allocation solves the paper's problem and keeps as much importance as its exact search."""
    g = torch.Generator().manual_seed(2)
    L, H, F = DIMS.num_layers, DIMS.num_heads, DIMS.intermediate_size
    head_rows, neuron_rows = torch.zeros(L * H, L, H), torch.zeros(L * F, L, F)
    head_rows.view(L * H, L * H)[range(L * H), range(L * H)] = torch.rand(L * H, generator=g) * 3
    neuron_rows.view(L * F, L * F)[range(L * F), range(L * F)] = torch.rand(L * F, generator=g)
    rows_h = torch.cat([head_rows, torch.zeros(L * F, L, H)])
    rows_n = torch.cat([torch.zeros(L * H, L, F), neuron_rows])
    hi, ni = rows_h.double().pow(2).sum(0), rows_n.double().pow(2).sum(0)
    for constraint in (0.2, 0.5, 0.8):
        block = search_flops_block(rows_h, rows_n, hi, ni, DIMS, SEQ, constraint)
        diag = search_flops(hi, ni, DIMS, SEQ, constraint)
        assert flops_ratio(block, DIMS, SEQ) <= constraint + 1e-9
        kept = [float(hi[m.head == 1].sum() + ni[m.neuron == 1].sum()) for m in (block, diag)]
        assert kept[0] == pytest.approx(kept[1], rel=0.02)


def test_correlated_units_of_a_layer_are_not_all_pruned():
    """Layer 2's neurons each look unimportant, but their gradients add up: the diagonal search prunes most of
    them, the block allocation keeps more there."""
    g = torch.Generator().manual_seed(3)
    L, H, F, R = DIMS.num_layers, DIMS.num_heads, DIMS.intermediate_size, 64
    head_rows = torch.randn(R, L, H, generator=g)
    neuron_rows = torch.randn(R, L, F, generator=g)
    neuron_rows[:, 2] = 0.3 * torch.randn(R, 1, generator=g).abs()  # small, and all of one sign per row
    hi, ni = head_rows.double().pow(2).sum(0), neuron_rows.double().pow(2).sum(0)
    block = search_flops_block(head_rows, neuron_rows, hi, ni, DIMS, SEQ, 0.15)
    diag = search_flops(hi, ni, DIMS, SEQ, 0.15)
    assert diag.neurons_per_layer()[2] == 0
    assert block.neurons_per_layer()[2] > 0
    assert masked_macs(block, DIMS, SEQ) <= 0.15 * dense_macs(DIMS, SEQ) + 1e-6


def test_block_allocation_is_for_the_flops_constraint():
    assert SearchParams(constraint=0.5, allocation="block").allocation == "block"
    with pytest.raises(ValueError, match="allocation 'block' supports the FLOPs constraint only"):
        SearchParams(constraint=0.5, allocation="block", constraint_metric="latency")
    with pytest.raises(ValueError, match="allocation 'uniform' supports the FLOPs constraint only"):
        PruneConfig(
            model="m", task="sst2", train_data="t", constraint=0.5, constraint_metric="latency", allocation="uniform"
        )


@pytest.mark.parametrize("allocation", ["global", "uniform", "block"])
def test_search_by_covers_the_layers_from_start(allocation):
    g = torch.Generator().manual_seed(4)
    grads = MaskGradients(torch.randn(16, 3, 4, generator=g), torch.randn(16, 3, 24, generator=g))
    whole = search_by(allocation, grads, DIMS, SEQ, 0.5)
    if allocation == "global":
        assert whole.equal(search_flops(grads.head_importance(), grads.neuron_importance(), DIMS, SEQ, 0.5))
    top = search_by(allocation, grads, DIMS, SEQ, 0.5, start=1)
    top_dims = ModelDims(num_layers=2, num_heads=4, head_size=8, hidden_size=32, intermediate_size=24)
    assert tuple(top.head.shape) == (2, 4) and tuple(top.neuron.shape) == (2, 24)
    assert 0.4 < flops_ratio(top, top_dims, SEQ) <= 0.5 + 1e-9
    if allocation == "uniform":
        assert len(set(top.heads_per_layer())) == 1 and len(set(top.neurons_per_layer())) == 1


def test_auto_allocation_keeps_the_split_the_loss_prefers():
    """``choose_allocation`` searches each split and keeps the one of lowest loss, whatever the Fisher ranking says."""
    g = torch.Generator().manual_seed(5)
    grads = MaskGradients(torch.randn(16, 3, 4, generator=g), torch.randn(16, 3, 24, generator=g))
    splits = {a: search_by(a, grads, DIMS, SEQ, 0.5) for a in AUTO_CANDIDATES}
    for preferred in AUTO_CANDIDATES:  # a loss that is lowest for the preferred split's masks only

        def loss(masks, preferred=preferred):
            return 0.0 if masks.equal(splits[preferred]) else 1.0

        chosen, masks, losses = choose_allocation(grads, DIMS, 0.5, SEQ, loss)
        assert chosen == preferred and masks.equal(splits[preferred])
        assert losses == {a: float(a != preferred) for a in AUTO_CANDIDATES}


def test_the_schedule_teacher_is_rearranged_with_the_rearrangement_stages_shrinkage():
    """Layer 0's neurons 0 and 1 cancel (large gradients of opposite sign): the paper's rearrangement prunes the
    pair, full shrinkage toward the diagonal keeps them."""
    g = torch.Generator().manual_seed(6)
    neurons = torch.randn(8, 3, 24, generator=g)
    neurons[:, 0, :2] = 5 * torch.randn(8, 1, generator=g) * torch.tensor([1.0, -1.0])
    grads = MaskGradients(torch.randn(8, 3, 4, generator=g), neurons)
    loose = search_by("global", grads, DIMS, SEQ, 0.5**0.5)
    assert teacher_masks(grads, DIMS, 0.5, SEQ, "dense") is None
    assert teacher_masks(grads, DIMS, 0.5, SEQ, "schedule", shrink=1.0).equal(loose)  # the diagonal: no move
    paper = teacher_masks(grads, DIMS, 0.5, SEQ, "schedule")
    assert paper.equal(rearrange_masks(loose, grads, head_block(DIMS))) and not paper.equal(loose)
