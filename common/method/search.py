"""Mask search under a FLOPs (MAC) constraint with diagonal Fisher importance (paper, section 3)."""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError
from ..model.arch import ModelDims
from ..model.cost import head_macs, neuron_macs
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
    whose importance is -inf are unavailable (already pruned)."""
    constraint = check_constraint(constraint)
    if seq_len <= 0:
        raise ConfigError(f"seq_len must be positive, got {seq_len}")
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
