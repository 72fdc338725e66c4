"""The latency cost of masks and the latency-constrained search (the paper's Algorithm, under
the fitted latency table instead of MACs)."""

from __future__ import annotations

import torch

from ..errors import ConfigError
from ..model.dims import ModelDims
from ..model.masks import Masks
from .latency_table import BlockFit, LatencyTable
from .search import check_constraint


def groups_per_layer(masks: Masks, dims: ModelDims) -> list[int]:
    """Key/value groups each layer keeps (those with a kept query head; its heads under plain attention)."""
    if not dims.grouped:
        return masks.heads_per_layer()
    return dims.kept_groups(masks.head).sum(dim=1).tolist()


def masks_latency(masks: Masks, table: LatencyTable) -> float:
    """Block latency (ms) of the masked model under the fitted curves: the sum over layers of the
    attention block's (its query heads over its kept key/value groups) and the FFN block's fitted latency
    (a block with 0 units costs 0)."""
    groups = groups_per_layer(masks, table.dims)
    heads = sum(table.attention_ms(h, g) for h, g in zip(masks.heads_per_layer(), groups, strict=True))
    neurons = sum(table.neuron_fit.predict(n) for n in masks.neurons_per_layer())
    return heads + neurons


def latency_ratio(masks: Masks, table: LatencyTable) -> float:
    """Fitted block latency of the masked model relative to the dense model's."""
    return masks_latency(masks, table) / table.dense_ms()


def _ranked(importance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Units of a [L, N] table in descending importance (ties by position): flat indices, their
    layer, and their rank inside their layer (1 = the layer's first unit in this order)."""
    flat = importance.detach().flatten().double().cpu()
    order = torch.argsort(flat, descending=True, stable=True)
    layer = order // importance.shape[1]
    rank = torch.empty_like(order)
    for lay in range(importance.shape[0]):
        where = (layer == lay).nonzero().flatten()
        rank[where] = torch.arange(1, where.numel() + 1)
    return order, layer, rank


def _prefix(values: torch.Tensor) -> torch.Tensor:
    return torch.cat([values.new_zeros(1), values.cumsum(0)])


class _NeuronFill:
    """Greedy neuron selection in global importance order under a per-layer piecewise cost."""

    def __init__(self, importance: torch.Tensor, fit: BlockFit, num_layers: int):
        order, layer, rank = _ranked(importance)
        self.order, self.layer_list = order, layer.tolist()
        self.importance = importance.detach().flatten().double().cpu()[order]
        self.imp_list = self.importance.tolist()
        self.fit, self.num_layers = fit, num_layers
        marginal = fit.predict_tensor(rank) - fit.predict_tensor(rank - 1)
        self.cost_prefix = _prefix(marginal)
        self.imp_prefix = _prefix(self.importance)
        self.layer = layer

    def _prefix_part(self, budget: float) -> tuple[int, float, list[int]]:
        """The longest affordable prefix of the ranking: its length, leftover budget, layer counts."""
        query = torch.tensor([budget], dtype=torch.float64)
        j = int(torch.searchsorted(self.cost_prefix, query, right=True)) - 1
        counts = torch.bincount(self.layer[:j], minlength=self.num_layers).tolist()
        return j, budget - float(self.cost_prefix[j]), counts

    def score(self, budget: float) -> float:
        """Summed importance of the neurons ``select`` would choose (-inf when the budget is negative)."""
        if budget < 0:
            return -float("inf")
        j, remaining, counts = self._prefix_part(budget)
        return float(self.imp_prefix[j]) + self._scan(j, counts, remaining)[1]

    def select(self, budget: float) -> list[int]:
        """Positions (in the ranked order) of the chosen neurons: the longest affordable prefix of the
        ranking at once, then a scan of the rest that adds every neuron whose marginal cost still fits
        (skipping those that do not)."""
        if budget < 0:
            return []
        j, remaining, counts = self._prefix_part(budget)
        return list(range(j)) + self._scan(j, counts, remaining)[0]

    def _scan(self, start: int, counts: list[int], remaining: float) -> tuple[list[int], float]:
        fit = self.fit
        first = fit.predict(1)  # a layer's first neuron pays the flat part
        slope, threshold = fit.slope_ms_per_unit, fit.threshold
        free = sum(max(0, threshold - c) for c in counts if c > 0)  # neurons still inside a flat part
        added: list[int] = []
        gained = 0.0
        for pos in range(start, len(self.layer_list)):
            if remaining < first and remaining < slope and free == 0:
                break
            lay = self.layer_list[pos]
            c = counts[lay]
            cost = first if c == 0 else (0.0 if c < threshold else slope)
            if cost > remaining:
                continue
            remaining -= cost
            counts[lay] = c + 1
            free += max(0, threshold - 1) if c == 0 else (-1 if c < threshold else 0)
            added.append(pos)
            gained += self.imp_list[pos]
        return added, gained

    def mask(self, positions: list[int], shape: torch.Size) -> torch.Tensor:
        mask = torch.zeros(shape[0] * shape[1], dtype=torch.float32)
        mask[self.order[positions]] = 1.0
        return mask.view(shape)


def search_latency(
    head_importance: torch.Tensor,
    neuron_importance: torch.Tensor,
    table: LatencyTable,
    constraint: float,
) -> Masks:
    """Masks with the largest summed importance whose block latency under the table's fitted curves
    stays within ``constraint`` times the dense model's.

    Heads and neurons are ranked globally by importance, as in the FLOPs search. Under the
    piecewise-linear fit a unit costs the block's slope, except that a layer's first unit pays the
    block's whole flat part (the latency up to the threshold), after which the layer's units up to
    the threshold are free; the flat part is saved only when the whole block is dropped. Under
    grouped-query attention the first kept head of a key/value group also pays the group's latency
    (the table's ``group_ms``): a group whose heads are all dropped goes with its keys and values. For every
    number k of kept heads (the globally top-k), the per-layer head counts give the attention latency;
    the rest of the budget goes to neurons, greedily in global importance order with that per-layer
    cost (neurons that no longer fit are skipped, cheaper later ones are still taken). The k with the
    largest summed head + neuron importance wins. Every cost is checked against the remaining budget,
    so the result never exceeds the budget under the fitted model.
    """
    constraint = check_constraint(constraint)
    d = table.dims
    _check_shape(head_importance, (d.num_layers, d.num_heads), "head_importance")
    _check_shape(neuron_importance, (d.num_layers, d.intermediate_size), "neuron_importance")
    budget = constraint * table.dense_ms() * (1.0 - 1e-9)  # margin for float summation order

    head_order, _, _ = _ranked(head_importance)
    head_cost = _prefix(_head_marginals(head_order, table))
    head_score = _prefix(head_importance.detach().flatten().double().cpu()[head_order])
    fill = _NeuronFill(neuron_importance, table.neuron_fit, d.num_layers)

    best_k, best_score = 0, -float("inf")
    for k in range(head_order.numel() + 1):
        left = budget - float(head_cost[k])
        if left < 0:
            break  # head cost only grows with k
        score = float(head_score[k]) + fill.score(left)
        if score > best_score:
            best_k, best_score = k, score
    positions = fill.select(budget - float(head_cost[best_k]))
    head_mask = torch.zeros(head_importance.numel(), dtype=torch.float32)
    head_mask[head_order[:best_k]] = 1.0
    return Masks(head_mask.view(d.num_layers, d.num_heads), fill.mask(positions, neuron_importance.shape))


def _head_marginals(order: torch.Tensor, table: LatencyTable) -> torch.Tensor:
    """What each head of ``order`` (flat indices into [L, H], in the order they are kept) adds to the fitted latency:
    the difference of its layer's attention block with and without it, over the layer's key/value groups kept so far
    (its own group is paid by the first of its heads kept)."""
    d = table.dims
    heads, groups = [0] * d.num_layers, [set[int]() for _ in range(d.num_layers)]
    marginals = []
    for index in order.tolist():
        layer, within = divmod(index, d.num_heads)
        group = within // d.group_size
        before = table.attention_ms(heads[layer], len(groups[layer]))
        heads[layer] += 1
        groups[layer].add(group)
        marginals.append(table.attention_ms(heads[layer], len(groups[layer])) - before)
    return torch.tensor(marginals, dtype=torch.float64)


def _check_shape(tensor: torch.Tensor, expected: tuple[int, int], name: str) -> None:
    if tuple(tensor.shape) != expected:
        raise ConfigError(f"{name} must have shape {list(expected)} to match the table, got {list(tensor.shape)}")
