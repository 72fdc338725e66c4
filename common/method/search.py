"""Mask search under a FLOPs (MAC) constraint with diagonal Fisher importance (paper, section 3)."""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError
from ..model.arch import ModelDims
from ..model.cost import dense_macs, group_macs, head_macs, neuron_macs
from ..model.masks import Masks


def check_constraint(constraint: float) -> float:
    valid = isinstance(constraint, (int, float)) and not math.isnan(constraint) and 0.0 < constraint < 1.0
    if not valid:
        raise ConfigError(
            f"constraint must be a fraction strictly between 0 and 1 (0.5 keeps half), got {constraint!r}"
        )
    return float(constraint)


def top_k_mask(importance: torch.Tensor, k: int) -> torch.Tensor:
    """1.0 for the k most important units of a [L, N] importance table (ties broken by position), else 0.0."""
    flat = importance.flatten()
    order = torch.argsort(flat, descending=True, stable=True)
    mask = torch.zeros_like(flat, dtype=torch.float32)
    mask[order[:k]] = 1.0
    return mask.view_as(importance)


def search_flops(
    head_importance: torch.Tensor,
    neuron_importance: torch.Tensor,
    dims: ModelDims,
    seq_len: float,
    constraint: float,
) -> Masks:
    """Keep the heads and neurons with the largest summed importance whose MACs stay within
    ``constraint`` times the dense model's. Heads and neurons are ranked globally; for every number
    of kept heads the rest of the budget goes to the top neurons, and the best split wins. Units
    whose importance is -inf are unavailable (already pruned). Under grouped-query attention the key/value groups
    are paid for too (:func:`search_flops_grouped`)."""
    constraint = check_constraint(constraint)
    if seq_len <= 0:
        raise ConfigError(f"seq_len must be positive, got {seq_len}")
    if dims.grouped:
        return search_flops_grouped(head_importance, neuron_importance, dims, seq_len, constraint)
    head_cost, neuron_cost = head_macs(seq_len, dims), neuron_macs(seq_len, dims)
    budget = constraint * (head_importance.numel() * head_cost + neuron_importance.numel() * neuron_cost)
    n_heads = int(torch.isfinite(head_importance).sum())
    n_neurons = int(torch.isfinite(neuron_importance).sum())

    head_sorted = torch.sort(head_importance.flatten().double(), descending=True).values[:n_heads]
    neuron_sorted = torch.sort(neuron_importance.flatten().double(), descending=True).values[:n_neurons]
    head_cum = torch.cat([head_sorted.new_zeros(1), head_sorted.cumsum(0)])
    neuron_cum = torch.cat([neuron_sorted.new_zeros(1), neuron_sorted.cumsum(0)])

    k = torch.arange(n_heads + 1, dtype=torch.float64)
    left = budget - k * head_cost
    feasible = left >= 0
    n = torch.floor(left.clamp(min=0) / neuron_cost).clamp(max=n_neurons).long()
    score = head_cum + neuron_cum[n]
    score[~feasible] = -math.inf
    best = int(torch.argmax(score))
    return Masks(top_k_mask(head_importance, best), top_k_mask(neuron_importance, int(n[best])))


# ----- grouped-query attention: a key/value group is paid while any of its query heads is kept ---------------------
def diagonal_curve(importance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``order`` (available units, most important first; -inf: unavailable) and the diagonal Fisher loss of keeping
    ``order[:k]``: the summed importance of the available units pruned."""
    order = torch.argsort(importance, descending=True, stable=True)[: int(torch.isfinite(importance).sum())]
    values = importance[order].double()
    return order, torch.cat([values.flip(0).cumsum(0).flip(0), values.new_zeros(1)])


def search_flops_grouped(
    head_importance: torch.Tensor,
    neuron_importance: torch.Tensor,
    dims: ModelDims,
    seq_len: float,
    constraint: float,
) -> Masks:
    """The global search under grouped-query attention: the heads and neurons of largest summed importance whose
    MACs, with a key/value group's paid once while any of its query heads is kept, stay within ``constraint`` of the
    dense model's. So a group whose heads all matter little goes whole (its key and value projections with it)
    rather than losing one head in each group.

    Exact for the diagonal objective: a dynamic programme over the groups gives the best head importance for every
    number of kept heads and of kept groups (each group keeping its most important heads), and for each of those
    the rest of the budget goes to the top neurons, as in :func:`search_flops`."""
    constraint = check_constraint(constraint)
    budget = constraint * dense_macs(dims, seq_len)
    size = dims.group_size
    blocks = [
        diagonal_curve(head_importance[i, g * size : (g + 1) * size])
        for i in range(len(head_importance))
        for g in range(dims.kv_heads)
    ]
    heads_max, groups_max = sum(len(order) for order, _ in blocks), len(blocks)
    best = torch.full((heads_max + 1, groups_max + 1), -math.inf, dtype=torch.float64)
    best[0, 0] = 0.0
    choices = []  # per group: the number of heads it keeps in the best state reached with it
    reach = 0  # heads the groups so far can keep: the states beyond are unreachable
    for b, (order, loss) in enumerate(blocks):
        gain = loss[0] - loss  # importance of keeping the first j heads
        reach += len(order)
        view = best[: reach + 1, : b + 2]
        new, choice = view.clone(), torch.zeros(view.shape, dtype=torch.int8)
        for j in range(1, len(order) + 1):
            candidate = view[:-j, :-1] + gain[j]
            better = candidate > new[j:, 1:]
            new[j:, 1:] = torch.where(better, candidate, new[j:, 1:])
            choice[j:, 1:].masked_fill_(better, j)
        view.copy_(new)
        choices.append(choice)
    k = torch.arange(heads_max + 1, dtype=torch.float64)[:, None]
    m = torch.arange(groups_max + 1, dtype=torch.float64)[None, :]
    left = budget - k * head_macs(seq_len, dims) - m * group_macs(seq_len, dims)
    n_neurons = int(torch.isfinite(neuron_importance).sum())
    neuron_sorted = torch.sort(neuron_importance.flatten().double(), descending=True).values[:n_neurons]
    neuron_cum = torch.cat([neuron_sorted.new_zeros(1), neuron_sorted.cumsum(0)])
    n = torch.floor(left.clamp(min=0) / neuron_macs(seq_len, dims) + 1e-9).clamp(max=n_neurons).long()
    score = torch.where(left >= 0, best + neuron_cum[n], torch.tensor(-math.inf, dtype=torch.float64))
    flat = int(torch.argmax(score))
    kept_heads, kept_groups = divmod(flat, groups_max + 1)
    head = torch.zeros(head_importance.shape)
    for b in reversed(range(len(blocks))):  # walk the programme back: what each group keeps
        j = int(choices[b][kept_heads, kept_groups]) if kept_groups else 0
        layer, group = divmod(b, dims.kv_heads)
        head[layer, group * size + blocks[b][0][:j]] = 1.0
        kept_heads, kept_groups = kept_heads - j, kept_groups - (j > 0)
    return Masks(head, top_k_mask(neuron_importance, int(n.flatten()[flat])))
