"""Mask rearrangement with the block-diagonal Fisher (paper, section 4).

Per layer and unit kind, with the number of pruned units fixed, greedily choose which units to
prune so that the squared norm of the summed per-batch gradients of the pruned set,
``||sum_{i in P} g_i||^2`` (the block-diagonal Fisher estimate of the loss increase), is small.
"""

from __future__ import annotations

from typing import Literal

import torch

from ..model.dims import ModelDims
from ..model.masks import Masks
from .fisher import MaskGradients

Shrink = float | Literal["auto"]
"""How far the rearrangement shrinks the gradients' correlations toward zero (:func:`rearrange_units`)."""


def pruned_set_cost(grads: torch.Tensor, pruned: torch.Tensor) -> float:
    """``||sum of the pruned units' per-batch gradients||^2``; grads is [B, N], pruned a bool [N]."""
    return float(grads.double()[:, pruned].sum(1).pow(2).sum())


def shrinkage(grads: torch.Tensor) -> float:
    """The weight that shrinks the units' second-moment matrix ``S = g^T g / R`` toward its diagonal (Ledoit-Wolf,
    with the diagonal target of Schafer and Strimmer, 2005): the summed estimated variance of the off-diagonal
    entries over their summed squares, in [0, 1] (see :func:`rearrange_units`)."""
    rows = grads.shape[0]
    if rows < 2:
        return 1.0
    g = grads.double()
    per_row = g.pow(2).sum(1)  # ||g_k||^2
    gram = g.T @ g if rows > g.shape[1] else g @ g.T  # the smaller one: both have the same Frobenius norm
    second = gram.pow(2).sum() / rows**2  # sum over i, j of s_ij^2
    second_diag = (g.pow(2).sum(0) / rows).pow(2).sum()
    fourth = per_row.pow(2).sum()  # sum over k, i, j of (g_ki g_kj)^2
    fourth_diag = g.pow(4).sum()
    variance = ((fourth - fourth_diag) - rows * (second - second_diag)) / (rows * (rows - 1))
    off = second - second_diag
    return float((variance / off).clamp(0.0, 1.0)) if off > 0 else 1.0


def rearrange_units(
    kept: torch.Tensor, grads: torch.Tensor, diagonal: torch.Tensor | None = None, shrink: Shrink = 0.0
) -> torch.Tensor:
    """New bool keep-mask for one layer's units with the same number kept and a pruned-set cost no
    larger than the diagonal choice. ``grads`` is [R, N] (per-example or per-batch gradients of N units).

    Start from the P units of lowest diagonal importance; then offer every other unit in turn: add
    it to the pruned set and drop whichever member's removal leaves the smallest cost. Dropping the
    newcomer restores the previous set, so the cost never rises. Everything is computed from the
    units' Gram matrix ``G = g^T g``, so each offer costs O(P) whatever the number of gradient rows.

    ``diagonal`` [N]: the exact diagonal of the Gram matrix when the rows are a sketch (folded rows,
    :class:`~fastprune.common.method.fisher.GradientRows`): it replaces the sketch's, whose off-diagonal part stays
    an unbiased estimate.

    ``shrink``: the weight moving the off-diagonal part of ``G`` toward zero (1 keeps the diagonal choice). Few
    gradient rows against many units (512 rows, 3,072 neurons) make ``G`` rank-deficient, and the greedy search can
    then pick pruned sets whose *sampled* gradients merely cancel. ``"auto"``: :func:`shrinkage` (Ledoit-Wolf)."""
    kept = kept.bool()
    n_pruned = int((~kept).sum())
    if n_pruned == 0 or n_pruned == kept.numel():
        return kept.clone()
    gram = (grads.float().T @ grads.float()).double()  # [N, N]
    exact = gram.diagonal().clone() if diagonal is None else diagonal
    gram *= 1.0 - (shrinkage(grads) if shrink == "auto" else float(shrink))
    gram.diagonal().copy_(exact)
    sq = gram.diagonal()
    order = torch.argsort(sq, stable=True)
    members = order[:n_pruned].clone()
    dot = gram[members].sum(0)  # dot[x] = <sum of the pruned set's gradients, g_x>
    cost = float(dot[members].sum())  # ||sum of the pruned set's gradients||^2
    for u in order[n_pruned:].tolist():
        # ||t + g_u - g_i||^2 for every member i, with t the current pruned sum
        after = cost + sq[u] + 2 * dot[u] + sq[members] - 2 * dot[members] - 2 * gram[u, members]
        best = int(torch.argmin(after))
        if after[best] < cost:  # strictly better than dropping the newcomer
            cost = float(after[best])
            dot += gram[u] - gram[members[best]]
            members[best] = u
    new_kept = torch.ones_like(kept)
    new_kept[members] = False
    return new_kept


def head_block(dims: ModelDims) -> int | None:
    """The block of heads rearranged together: a key/value group's query heads (grouped-query attention), else
    the layer's (None)."""
    return dims.group_size if dims.grouped else None


def rearrange_masks(masks: Masks, grads: MaskGradients, head_block: int | None = None, shrink: Shrink = 0.0) -> Masks:
    """Rearrange every layer's heads and neurons; per-layer kept counts stay as they are. Units outside
    ``grads.available`` (pruned by an earlier iterative step) stay pruned. ``head_block``: rearrange the heads within
    blocks of that many (a key/value group's query heads, so that the kept groups, their cost and a uniform split's
    shape stay as the search chose them; default: the whole layer). ``shrink``: see :func:`rearrange_units`."""
    layers = [
        rearrange_layer(masks.head[i], masks.neuron[i], grads, i, head_block, shrink) for i in range(len(masks.head))
    ]
    return Masks(torch.stack([head for head, _ in layers]), torch.stack([neuron for _, neuron in layers]))


def rearrange_layer(
    head: torch.Tensor,
    neuron: torch.Tensor,
    grads: MaskGradients,
    layer: int,
    head_block: int | None = None,
    shrink: Shrink = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer ``layer``'s rearranged head and neuron keep-masks, from its masks ``head`` [H] and ``neuron`` [F] (only
    their kept counts are read; see :func:`rearrange_masks`)."""
    available = grads.available
    head_ok = torch.ones_like(head) if available is None else available.head[layer]
    neuron_ok = torch.ones_like(neuron) if available is None else available.neuron[layer]
    head_sq, neuron_sq = grads.head_sq, grads.neuron_sq  # the exact diagonal when the rows are folded
    size = head_block or head.shape[0]
    new_head = torch.zeros(head.shape[0])
    for start in range(0, head.shape[0], size):
        part = slice(start, start + size)
        new_head[part] = _rearrange_available(
            head[part],
            grads.head[:, layer, part],
            head_ok[part],
            None if head_sq is None else head_sq[layer, part],
            shrink,
        )
    new_neuron = _rearrange_available(
        neuron, grads.neuron[:, layer], neuron_ok, None if neuron_sq is None else neuron_sq[layer], shrink
    )
    return new_head, new_neuron


def _rearrange_available(
    kept: torch.Tensor,
    grads: torch.Tensor,
    available: torch.Tensor,
    diagonal: torch.Tensor | None = None,
    shrink: Shrink = 0.0,
) -> torch.Tensor:
    units = (available != 0).nonzero().flatten()
    new = torch.zeros(kept.shape, dtype=torch.float32)
    exact = None if diagonal is None else diagonal[units]
    new[units] = rearrange_units(kept[units] != 0, grads[:, units], exact, shrink).float()
    return new
