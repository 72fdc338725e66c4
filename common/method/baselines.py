"""Baselines for the benchmark suite, at the same FLOPs budget as the method's masks.

- :func:`random_masks`: a fraction ``constraint`` of the heads chosen uniformly at random across layers, the rest of
  the budget in random neurons (seeded, reproducible).
- :func:`magnitude_masks`: the same split, keeping the heads and neurons of largest weight norm across layers
  (:func:`magnitude_importance`: a head's slices of Q/K/V (rows) and of the attention output projection (columns),
  a neuron's FFN input row and FFN output column).
- :func:`uniform_masks`: uniform per-layer pruning; every layer keeps the same number of heads and the same number
  of neurons, chosen by (Fisher) importance within each layer. Of the per-layer splits that use the budget as fully
  as possible without exceeding it, the one of largest summed importance wins.

None of them tunes the kept units: they give binary masks, evaluated as masked models.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..model.arch import ModelDims, adapter_for
from ..model.cost import dense_macs, group_macs, head_macs, neuron_macs
from ..model.masks import Masks
from .search import check_constraint, top_k_mask


def _budget(dims: ModelDims, seq_len: float, constraint: float) -> float:
    """The MACs the kept heads and neurons may spend."""
    return check_constraint(constraint) * dense_macs(dims, seq_len)


def _neurons_left(budget: float, heads: int, dims: ModelDims, seq_len: float, limit: int) -> int:
    """How many neurons (at most ``limit``) fit in what ``heads`` heads leave of ``budget``; -1 if they don't fit."""
    left = budget - heads * head_macs(seq_len, dims)
    if left < 0:
        return -1
    return min(limit, math.floor(left / neuron_macs(seq_len, dims) + 1e-9))


# ----- random and weight magnitude: a fixed share of heads, the budget's rest in neurons --------------------
def proportional_masks(
    head_scores: torch.Tensor, neuron_scores: torch.Tensor, dims: ModelDims, seq_len: float, constraint: float
) -> Masks:
    """The ``floor(constraint * L * H)`` highest-scoring heads across layers, then as many of the highest-scoring
    neurons across layers as the rest of the budget allows. Heads and neurons are ranked separately, so scores of
    different scales (weight norms) never trade heads against neurons."""
    heads = math.floor(check_constraint(constraint) * dims.num_layers * dims.num_heads)
    limit = dims.num_layers * dims.intermediate_size
    neurons = _neurons_left(_budget(dims, seq_len, constraint), heads, dims, seq_len, limit)
    return Masks(top_k_mask(head_scores, heads), top_k_mask(neuron_scores, neurons))


def random_masks(dims: ModelDims, seq_len: float, constraint: float, seed: int) -> Masks:
    """Random structured masks within the budget (:func:`proportional_masks` of uniform random scores, ``seed``)."""
    generator = torch.Generator().manual_seed(seed)
    head_scores = torch.rand(dims.num_layers, dims.num_heads, generator=generator)
    neuron_scores = torch.rand(dims.num_layers, dims.intermediate_size, generator=generator)
    return proportional_masks(head_scores, neuron_scores, dims, seq_len, constraint)


@torch.no_grad()
def magnitude_importance(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(head [L, H], neuron [L, F]) L2 norms of each unit's weights: a head's rows of the query, key and value
    projections (under grouped-query attention, its group's key and value rows) and its columns of the attention
    output projection; a neuron's rows of the MLP input projection(s) and its column of the output projection
    (biases are not counted)."""
    adapter = adapter_for(model)
    dims = adapter.dims(model.config)
    heads, neurons = [], []
    for layer in adapter.layer_modules(model):
        rows = [adapter.linear(layer, name).weight.float().pow(2).sum(1) for name in ("query", "key", "value")]
        if dims.grouped:  # a group's key and value rows count for each of its query heads
            per_head = adapter.head_groups(layer, dims.head_size)
            rows[1:] = [r.view(-1, dims.head_size)[per_head].flatten() for r in rows[1:]]
        squares = sum(rows) + adapter.linear(layer, "attn_out").weight.float().pow(2).sum(0)
        heads.append(squares.view(dims.num_heads, dims.head_size).sum(1).sqrt())
        ffn_in = sum(adapter.linear(layer, name).weight.float().pow(2).sum(1) for name in adapter.ffn_inputs)
        ffn_out = adapter.linear(layer, "ffn_out").weight.float().pow(2).sum(0)
        neurons.append((ffn_in + ffn_out).sqrt())
    return torch.stack(heads).double().cpu(), torch.stack(neurons).double().cpu()


def magnitude_masks(model: nn.Module, seq_len: float, constraint: float) -> Masks:
    """The largest-norm heads and neurons within the budget (:func:`proportional_masks` of
    :func:`magnitude_importance`). A norm says nothing about how a head compares with a neuron, so the split
    between them is the random baseline's, not a search's (a global search on norms keeps no head at all on
    MiniLM at FLOPs 0.5, on squared norms every head)."""
    head, neuron = magnitude_importance(model)
    return proportional_masks(head, neuron, adapter_for(model).dims(model.config), seq_len, constraint)


# ----- uniform per layer -------------------------------------------------------------------------
def _layer_prefix_sums(importance: torch.Tensor) -> torch.Tensor:
    """[N + 1] summed over layers: entry k is the importance of every layer's top-k units together."""
    top = torch.sort(importance.double(), dim=1, descending=True).values.sum(0)
    return torch.cat([top.new_zeros(1), top.cumsum(0)])


def uniform_split(
    head_importance: torch.Tensor, neuron_importance: torch.Tensor, dims: ModelDims, seq_len: float, constraint: float
) -> tuple[int, int]:
    """(heads, neurons) kept in every layer: the largest summed importance among the splits within the budget,
    each with as many neurons as the budget leaves."""
    layer_budget = _budget(dims, seq_len, constraint) / dims.num_layers
    head_sums, neuron_sums = _layer_prefix_sums(head_importance), _layer_prefix_sums(neuron_importance)
    best: tuple[float, int, int] = (-math.inf, 0, 0)
    for heads in range(dims.num_heads + 1):
        neurons = _neurons_left(layer_budget, heads, dims, seq_len, dims.intermediate_size)
        score = float(head_sums[heads] + neuron_sums[neurons]) if neurons >= 0 else -math.inf
        if score > best[0]:
            best = (score, heads, neurons)
    return best[1], best[2]


def _top_per_layer(importance: torch.Tensor, k: int) -> torch.Tensor:
    """1.0 for the k most important units of every layer (ties broken by position), else 0.0."""
    return torch.stack([top_k_mask(row[None], k)[0] for row in importance])


def uniform_masks(
    head_importance: torch.Tensor, neuron_importance: torch.Tensor, dims: ModelDims, seq_len: float, constraint: float
) -> Masks:
    """Uniform per-layer pruning: the same number of heads and of neurons in every layer (see
    :func:`uniform_split`), each layer keeping its most important ones."""
    if dims.grouped:
        return _uniform_grouped(head_importance, neuron_importance, dims, seq_len, constraint)
    heads, neurons = uniform_split(head_importance, neuron_importance, dims, seq_len, constraint)
    return Masks(_top_per_layer(head_importance, heads), _top_per_layer(neuron_importance, neurons))


def _uniform_grouped(
    head_importance: torch.Tensor, neuron_importance: torch.Tensor, dims: ModelDims, seq_len: float, constraint: float
) -> Masks:
    """Uniform pruning under grouped-query attention: every layer keeps the same number of key/value groups, each
    with the same number of query heads (its most important ones; the layer's groups of largest importance so
    kept), and the same number of neurons: a stock config describes the exported model. Of the splits within the
    budget, each with as many neurons as it leaves, the one of largest summed importance wins."""
    layer_budget = _budget(dims, seq_len, constraint) / dims.num_layers
    layers, groups, size = dims.num_layers, dims.kv_heads, dims.group_size
    per_group = torch.sort(head_importance.double().view(layers, groups, size), dim=2, descending=True).values
    tops = torch.cat([per_group.new_zeros(layers, groups, 1), per_group.cumsum(2)], dim=2)  # [L, G, size + 1]
    neuron_sums = _layer_prefix_sums(neuron_importance)
    best: tuple[float, int, int, int] = (-math.inf, 0, 0, 0)
    for kept_groups in range(groups + 1):
        for heads in range(1 if kept_groups else 0, size + 1 if kept_groups else 1):
            group_cost = kept_groups * group_macs(seq_len, dims)
            neurons = _neurons_left(
                layer_budget - group_cost, kept_groups * heads, dims, seq_len, dims.intermediate_size
            )
            if neurons < 0:
                continue
            best_groups = torch.sort(tops[:, :, heads], dim=1, descending=True).values[:, :kept_groups]
            score = float(best_groups.sum() + neuron_sums[neurons])
            if score > best[0]:
                best = (score, kept_groups, heads, neurons)
    _, kept_groups, heads, neurons = best
    head = torch.zeros(head_importance.shape)
    for i in range(layers):
        chosen = torch.argsort(tops[i, :, heads], descending=True, stable=True)[:kept_groups]
        for g in chosen.tolist():
            within = torch.argsort(head_importance[i, g * size : (g + 1) * size], descending=True, stable=True)
            head[i, g * size + within[:heads]] = 1.0
    return Masks(head, _top_per_layer(neuron_importance, neurons))
