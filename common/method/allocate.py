"""How the FLOPs search splits the budget between layers (``allocation``): ``global`` ranks every unit by its
diagonal Fisher importance (the paper, :func:`~fastprune.common.method.search.search_flops`), ``uniform`` keeps
the same counts in every layer (:func:`~fastprune.common.method.baselines.uniform_masks`), ``block`` uses the
block-diagonal Fisher.

The paper's search ranks every head and neuron by its diagonal Fisher importance, so the estimated loss of a
pruned set is the sum of its units' importances: removing a whole layer's FFN costs no more than removing as many
scattered neurons. The block-diagonal Fisher (the rearrangement's, paper section 4) counts the interactions within a
layer's heads or neurons: removing the set ``P`` of one block costs ``||sum_{i in P} g_i||^2`` over the gradient
rows. This search gives each block (one layer's heads, one layer's neurons) the curve of that cost against the
number of units kept (each block keeping its units of largest diagonal importance, as the paper's search does), and
splits the budget between the blocks to minimise the summed cost: a Lagrangian relaxation (one price per MAC,
bisected until the budget is spent), then the budget left filled greedily by the best loss saved per MAC. Under
grouped-query attention each key/value group's query heads are a block whose group cost is paid while it keeps a
head, so the split also decides which groups go.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..model.arch import ModelDims
from ..model.cost import dense_macs, group_macs, head_macs, neuron_macs
from ..model.masks import Masks
from .baselines import uniform_masks
from .fisher import MaskGradients
from .rearrange import Shrink, head_block, rearrange_masks
from .search import check_constraint, search_flops

Curve = Callable[[int, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""``curve(layer, units)``: a block's available units, most important first, and its loss of keeping the first k."""


def search_by(
    allocation: str, grads: MaskGradients, dims: ModelDims, seq_len: float, constraint: float, start: int = 0
) -> Masks:
    """The FLOPs search over the layers from ``start`` up (``constraint`` of their dense MACs), with the budget
    split between them by ``allocation``: global, uniform or block."""
    heads, neurons = grads.head_importance()[start:], grads.neuron_importance()[start:]
    top = dataclasses.replace(dims, num_layers=len(heads))
    if allocation == "block":
        rows = grads.head[:, start:], grads.neuron[:, start:]
        return search_flops_block(*rows, heads, neurons, top, seq_len, constraint, exact_diagonal=grads.folded)
    if allocation == "uniform":
        return uniform_masks(heads, neurons, top, seq_len, constraint)
    return search_flops(heads, neurons, top, seq_len, constraint)


@dataclass(frozen=True)
class Block:
    """Units whose kept count one allocation decides: one layer's neurons, or the query heads of one key/value group
    (of one layer's heads under plain attention). ``order``: the available units (indices into the block's row of
    the importance table), most important first; ``loss[k]`` and ``spend[k]``: the estimated loss and the MACs of
    keeping ``order[:k]``."""

    layer: int
    units: torch.Tensor  # the block's units in its layer's row of the table
    order: torch.Tensor
    loss: torch.Tensor
    spend: torch.Tensor


def spend_curve(units: int, unit_cost: float, fixed: float = 0.0) -> torch.Tensor:
    """MACs of keeping 0..units units of ``unit_cost`` each, plus ``fixed`` once any is kept (a key/value group)."""
    k = torch.arange(units + 1, dtype=torch.float64)
    return k * unit_cost + (k > 0).double() * fixed


def unit_blocks(importance: torch.Tensor, size: int, unit_cost: float, fixed: float, curve: Curve) -> list[Block]:
    """One block per ``size`` consecutive units of every layer of ``importance`` [L, N] (a key/value group's query
    heads, or a whole layer: ``size=N``), each costing ``fixed`` while it keeps a unit; ``curve(layer, units)`` gives
    the block's order and loss curve."""
    blocks = []
    for i in range(importance.shape[0]):
        for start in range(0, importance.shape[1], size):
            units = torch.arange(start, start + size)
            order, loss = curve(i, units)
            blocks.append(Block(i, units, order, loss, spend_curve(len(order), unit_cost, fixed)))
    return blocks


def allocate(curves: list[torch.Tensor], spends: list[torch.Tensor], budget: float) -> list[int]:
    """Units kept per block: minimise ``sum_j curves[j][k_j]`` subject to ``sum_j spends[j][k_j] <= budget`` (each
    spend curve increasing from 0): a Lagrangian relaxation (one price per MAC, bisected until the budget is spent),
    then the budget left filled greedily by the best loss saved per MAC."""

    def pick(price: float) -> list[int]:
        return [int(torch.argmin(c + price * w)) for c, w in zip(curves, spends, strict=True)]

    def spent(ks: list[int]) -> float:
        return sum(float(w[k]) for k, w in zip(ks, spends, strict=True))

    if spent([len(c) - 1 for c in curves]) <= budget:
        return [len(c) - 1 for c in curves]
    low, high = 0.0, 1.0
    while spent(pick(high)) > budget:
        high *= 4.0
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (low, mid) if spent(pick(mid)) <= budget else (mid, high)
    ks = pick(high)
    left = budget - spent(ks)
    while True:  # fill what the relaxation left: the best loss saved per MAC that still fits
        gains = [
            (float(c[k] - c[k + 1]) / float(w[k + 1] - w[k]), j)
            for j, (c, w, k) in enumerate(zip(curves, spends, ks, strict=True))
            if k + 1 < len(c) and float(w[k + 1] - w[k]) <= left + 1e-9
        ]
        if not gains:
            return ks
        _, j = max(gains)
        left -= float(spends[j][ks[j] + 1] - spends[j][ks[j]])
        ks[j] += 1


def masks_from_blocks(
    head_blocks: list[Block], neuron_blocks: list[Block], budget: float, head_shape, neuron_shape
) -> Masks:
    """Masks of the units kept when ``budget`` MACs are split between the blocks by :func:`allocate`."""
    blocks = head_blocks + neuron_blocks
    ks = allocate([b.loss for b in blocks], [b.spend for b in blocks], budget)
    head, neuron = torch.zeros(head_shape), torch.zeros(neuron_shape)
    for j, (block, k) in enumerate(zip(blocks, ks, strict=True)):
        table = head if j < len(head_blocks) else neuron
        table[block.layer, block.units[block.order[:k]]] = 1.0
    return Masks(head, neuron)


def removal_curve(
    rows: torch.Tensor, importance: torch.Tensor, exact_diagonal: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """One block: ``rows`` [R, U] gradient rows of its U units, ``importance`` [U] (-inf: unavailable).
    Returns ``order`` (the available units, most important first) and ``loss`` [A + 1]: ``loss[k]`` is the
    block-diagonal Fisher cost of keeping ``order[:k]`` and pruning the rest of the available units.

    ``exact_diagonal``: the rows are a sketch (folded, :class:`~fastprune.common.method.fisher.GradientRows`) and
    ``importance`` is the exact diagonal: each pruned unit's own term in the cost is the exact one, the cross terms
    the sketch's unbiased estimate."""
    available = torch.isfinite(importance)
    order = torch.argsort(importance.masked_fill(~available, -torch.inf), descending=True, stable=True)
    order = order[: int(available.sum())]
    g = rows[:, order].double()
    # suffix[:, k] = sum of the gradients of order[k:], for k = 0..A
    suffix = torch.cat([g.flip(1).cumsum(1).flip(1), g.new_zeros(len(g), 1)], dim=1)
    loss = suffix.pow(2).sum(0)
    if exact_diagonal:  # swap the sketch's diagonal terms of the pruned units for the exact ones
        correction = importance[order].double() - g.pow(2).sum(0)
        loss = loss + torch.cat([correction.flip(0).cumsum(0).flip(0), correction.new_zeros(1)])
    return order, loss


def search_flops_block(
    head_rows: torch.Tensor,
    neuron_rows: torch.Tensor,
    head_importance: torch.Tensor,
    neuron_importance: torch.Tensor,
    dims: ModelDims,
    seq_len: float,
    constraint: float,
    exact_diagonal: bool = False,
) -> Masks:
    """Masks within ``constraint`` of the dense MACs of these layers (``head_rows`` [R, L, H], ``neuron_rows``
    [R, L, F] gradient rows; importances [L, H], [L, F] with -inf for unavailable units), the budget split between
    the blocks by the block-diagonal Fisher (module docstring). ``exact_diagonal``: see :func:`removal_curve`."""
    constraint = check_constraint(constraint)
    budget = constraint * dense_macs(dims, seq_len)

    def head_curve(i: int, units: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return removal_curve(head_rows[:, i][:, units], head_importance[i, units], exact_diagonal)

    def neuron_curve(i: int, units: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return removal_curve(neuron_rows[:, i][:, units], neuron_importance[i, units], exact_diagonal)

    # one block per key/value group under grouped-query attention (the group paid while it keeps a head), else
    # one per layer's heads
    group_size, group_cost = (dims.group_size, group_macs(seq_len, dims)) if dims.grouped else (dims.num_heads, 0.0)
    heads = unit_blocks(head_importance, group_size, head_macs(seq_len, dims), group_cost, head_curve)
    neurons = unit_blocks(neuron_importance, neuron_importance.shape[1], neuron_macs(seq_len, dims), 0.0, neuron_curve)
    return masks_from_blocks(heads, neurons, budget, head_importance.shape, neuron_importance.shape)


def search_masks(
    grads: MaskGradients,
    dims: ModelDims,
    constraint: float,
    seq_len: float,
    latency_table=None,
    allocation: str = "global",
) -> Masks:
    """FLOPs-constrained search (``allocation``: see :class:`~fastprune.common.stages.config.SearchParams`), or
    latency-constrained when a latency table is given."""
    if latency_table is not None:
        from .latency_search import search_latency

        return search_latency(grads.head_importance(), grads.neuron_importance(), latency_table, constraint)
    return search_by(allocation, grads, dims, seq_len, constraint)


AUTO_CANDIDATES = ("global", "uniform")
"""The splits ``allocation auto`` chooses between: both keep each layer's units of largest diagonal importance, so
their searched masks compare the per-layer counts alone. ``block`` is left out: its masks already minimise the
block-diagonal cost that the rearrangement minimises next, so they look better than the others before it (on
all-MiniLM-L6-v2 it won the held-out comparison at 4 of 14 budgets and ended up to 1.5 points lower)."""


def choose_allocation(
    grads: MaskGradients, dims: ModelDims, constraint: float, seq_len: float, loss: Callable[[Masks], float]
) -> tuple[str, Masks, dict[str, float]]:
    """``allocation auto``: the split of :data:`AUTO_CANDIDATES` whose masks have the lowest ``loss`` (the stage
    validator's held-out loss: which split predicts the model best differs between models and budgets, and the
    Fisher estimate that every split ranks by cannot tell), its masks, and every candidate's loss."""
    found = {allocation: search_by(allocation, grads, dims, seq_len, constraint) for allocation in AUTO_CANDIDATES}
    losses = {allocation: loss(masks) for allocation, masks in found.items()}
    best = min(losses, key=losses.__getitem__)  # a tie keeps the earlier (the paper's split first)
    return best, found[best], losses


def teacher_masks(
    grads: MaskGradients,
    dims: ModelDims,
    constraint: float,
    seq_len: float,
    kind: str,
    latency_table=None,
    allocation: str = "global",
    shrink: Shrink = 0.0,
) -> Masks | None:
    """The tuning teacher: the model masked at the looser constraint sqrt(C) (the paper's schedule), rearranged
    with the rearrangement stage's ``shrink``, or ``None`` for the dense model."""
    if kind == "dense":
        return None
    loose = search_masks(grads, dims, math.sqrt(constraint), seq_len, latency_table, allocation)
    return rearrange_masks(loose, grads, head_block(dims), shrink)
