"""Retraining-free structured-pruning baselines for decoder LLMs, re-implemented from their papers' descriptions
(no code copied), at an exact FLOPs budget under fastprune's cost model.

Every baseline gives head [L, H] and neuron [L, F] masks (and FLAP a bias per output projection) whose MACs, priced
by :func:`fastprune.common.model.cost.masked_macs` (a key/value group paid while any of its query heads is kept),
are at most ``constraint`` times the dense model's and within one unit of it:

- *magnitude*: a unit's weight L2 norm (:func:`fastprune.common.model.masks` units: its q/k/v rows and o_proj
  columns; its gate/up rows and down_proj column), the same share of heads and of neurons pruned in every layer.
- *Wanda-sp* (structured Wanda, as defined in the FLAP paper, An et al. AAAI 2024): ``|W_ij| * ||X_j||`` summed over
  the output projection's weights of a unit (o_proj columns of a head, the down_proj column of a neuron), ``X`` the
  calibration activations entering the projection; uniform per layer, as Wanda-sp.
- *FLAP* (An et al.): the fluctuation metric ``Var(X_j) * ||W_:,j||^2`` summed over a unit's input channels of the
  output projection, standardized within each layer's attention and MLP (adaptive structure: one global ranking of
  the standardized scores), and bias compensation: the removed channels' mean activation times their weight columns
  added to the projection's output (``W_:,pruned @ E[X_pruned]``).
- *uniform Fisher*: fastprune's Fisher importance, the same number of heads and of neurons in every layer, the split
  between heads and neurons that keeps the most summed importance (what exports to a stock config).
- *Torch-Pruning*: :mod:`llm_torch_pruning` (its own pruner and Taylor importance).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from fastprune.common.model.arch import ModelDims, adapter_for
from fastprune.common.model.cost import dense_macs, group_macs, head_macs, masked_macs, neuron_macs
from fastprune.common.model.masks import Masks
from torch import nn

BASELINES = ("magnitude", "wanda-sp", "flap", "uniform-fisher")


# ----- calibration statistics of the output projections' inputs ---------------------------------------------------
@dataclass
class ChannelStats:
    """Per layer, over every calibration token: the sum and sum of squares of each input channel of the attention
    output projection (``attn`` [L, H * dh]) and of the MLP output projection (``ffn`` [L, F]), and the token count."""

    attn_sum: torch.Tensor
    attn_sq: torch.Tensor
    ffn_sum: torch.Tensor
    ffn_sq: torch.Tensor
    tokens: int

    def norm(self, block: str) -> torch.Tensor:
        """``||X_j||`` over the calibration tokens (Wanda's activation norm)."""
        return (self.attn_sq if block == "attn" else self.ffn_sq).sqrt()

    def mean(self, block: str) -> torch.Tensor:
        return (self.attn_sum if block == "attn" else self.ffn_sum) / self.tokens

    def variance(self, block: str) -> torch.Tensor:
        """The per-channel variance over tokens (FLAP's fluctuation)."""
        sq = (self.attn_sq if block == "attn" else self.ffn_sq) / self.tokens
        return (sq - self.mean(block).pow(2)).clamp(min=0)


@torch.no_grad()
def channel_stats(model: nn.Module, windows: Iterable[torch.Tensor]) -> ChannelStats:
    """:class:`ChannelStats` of the dense model on the calibration ``windows`` (token ids [B, T] each)."""
    adapter = adapter_for(model)
    layers = adapter.layer_modules(model)
    sums: dict[tuple[int, str], list[torch.Tensor]] = {}

    def hook(i: int, block: str):
        def record(_module, args):
            x = args[0].detach().double().flatten(0, -2)
            acc = sums.setdefault((i, block), [torch.zeros(x.shape[-1], dtype=torch.float64)] * 2)
            sums[(i, block)] = [acc[0] + x.sum(0).cpu(), acc[1] + x.pow(2).sum(0).cpu()]

        return record

    handles = []
    for i, layer in enumerate(layers):
        handles.append(adapter.linear(layer, "attn_out").register_forward_pre_hook(hook(i, "attn")))
        handles.append(adapter.linear(layer, "ffn_out").register_forward_pre_hook(hook(i, "ffn")))
    tokens = 0
    try:
        model.eval()
        for ids in windows:
            model(input_ids=ids)
            tokens += ids.numel()
    finally:
        for h in handles:
            h.remove()
    if not tokens:
        raise ValueError("no calibration windows")

    def stack(block: str, k: int) -> torch.Tensor:
        return torch.stack([sums[(i, block)][k] for i in range(len(layers))])

    return ChannelStats(stack("attn", 0), stack("attn", 1), stack("ffn", 0), stack("ffn", 1), tokens)


def _out_weights(model: nn.Module, block: str) -> torch.Tensor:
    """[L, out, in] weights of every layer's attention (``attn``) or MLP (``ffn``) output projection."""
    adapter = adapter_for(model)
    name = "attn_out" if block == "attn" else "ffn_out"
    return torch.stack([adapter.linear(layer, name).weight.detach().double() for layer in adapter.layer_modules(model)])


def _per_head(channels: torch.Tensor, dims: ModelDims) -> torch.Tensor:
    """[L, H * dh] channel scores summed to [L, H] head scores."""
    return channels.view(dims.num_layers, dims.num_heads, dims.head_size).sum(-1)


@torch.no_grad()
def wanda_sp_scores(model: nn.Module, stats: ChannelStats) -> tuple[torch.Tensor, torch.Tensor]:
    """(head [L, H], neuron [L, F]) Wanda-sp scores: ``sum_i |W_ij| * ||X_j||`` over each unit's output-projection
    columns."""
    dims = adapter_for(model).dims(model.config)
    attn = _out_weights(model, "attn").abs().sum(1) * stats.norm("attn")
    ffn = _out_weights(model, "ffn").abs().sum(1) * stats.norm("ffn")
    return _per_head(attn, dims), ffn


@torch.no_grad()
def flap_scores(model: nn.Module, stats: ChannelStats) -> tuple[torch.Tensor, torch.Tensor]:
    """(head [L, H], neuron [L, F]) FLAP fluctuation scores ``Var(X_j) * ||W_:,j||^2``, standardized within each
    layer's heads and within each layer's neurons, so that one global ranking compares them."""
    dims = adapter_for(model).dims(model.config)
    attn = _per_head(_out_weights(model, "attn").pow(2).sum(1) * stats.variance("attn"), dims)
    ffn = _out_weights(model, "ffn").pow(2).sum(1) * stats.variance("ffn")
    return _standardized(attn), _standardized(ffn)


def _standardized(scores: torch.Tensor) -> torch.Tensor:
    return (scores - scores.mean(1, keepdim=True)) / scores.std(1, keepdim=True).clamp(min=1e-12)


@torch.no_grad()
def flap_biases(model: nn.Module, stats: ChannelStats, masks: Masks) -> dict[str, torch.Tensor]:
    """FLAP's bias compensation: per layer and output projection, ``W_:,pruned @ E[X_pruned]`` (the mean output the
    pruned channels gave), keyed ``"{layer}.{attn_out|ffn_out}"``."""
    dims = adapter_for(model).dims(model.config)
    pruned = {
        "attn": (masks.head == 0).double().repeat_interleave(dims.head_size, dim=1),
        "ffn": (masks.neuron == 0).double(),
    }
    biases = {}
    for block, name in (("attn", "attn_out"), ("ffn", "ffn_out")):
        weights, mean = _out_weights(model, block), stats.mean(block) * pruned[block]
        for i in range(dims.num_layers):
            biases[f"{i}.{name}"] = (weights[i] @ mean[i]).float()
    return biases


@contextlib.contextmanager
def biases_applied(model: nn.Module, biases: dict[str, torch.Tensor]) -> Iterator[None]:
    """Add ``biases`` (see :func:`flap_biases`) to the output projections' outputs with forward hooks: the Llama
    family has no bias terms, so FLAP's compensation is evaluated in-process this way (a stock export would carry
    it as ``attention_bias`` / ``mlp_bias`` with zero biases on the other projections)."""
    adapter = adapter_for(model)
    layers = adapter.layer_modules(model)
    handles = []
    try:
        for key, bias in biases.items():
            layer, name = key.split(".")
            linear = adapter.linear(layers[int(layer)], name)
            handles.append(linear.register_forward_hook(lambda _m, _a, out, b=bias: out + b.to(out)))
        yield
    finally:
        for h in handles:
            h.remove()


# ----- allocation at an exact budget ------------------------------------------------------------------------------
def budget_macs(dims: ModelDims, seq_len: float, constraint: float) -> float:
    if not 0.0 < constraint < 1.0:
        raise ValueError(f"FLOPs kept must be strictly between 0 and 1, got {constraint}")
    return constraint * dense_macs(dims, seq_len)


def _per_layer_top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """1.0 for each layer's ``k`` highest-scoring units."""
    mask = torch.zeros_like(scores, dtype=torch.float32)
    if k > 0:
        mask.scatter_(1, torch.topk(scores, k, dim=1).indices, 1.0)
    return mask


def uniform_masks(
    head_scores: torch.Tensor,
    neuron_scores: torch.Tensor,
    dims: ModelDims,
    seq_len: float,
    constraint: float,
    heads: int | None = None,
) -> Masks:
    """The same number of heads and of neurons in every layer, each layer's highest-scoring ones; the neurons take
    what the heads (and their key/value groups) leave of the budget. ``heads`` per layer: given when the scores of
    heads and neurons are not comparable (:func:`same_share_heads`: the same share pruned of each, as Wanda-sp);
    ``None``: the split of largest summed score (comparable scores: Fisher)."""
    budget = budget_macs(dims, seq_len, constraint)
    candidates = [heads] if heads is not None else list(range(dims.num_heads + 1))
    best: tuple[float, Masks] | None = None
    for h in candidates:
        head_mask = _per_layer_top(head_scores, h)
        left = budget - masked_macs(Masks(head_mask, torch.zeros_like(neuron_scores)), dims, seq_len)
        n = min(dims.intermediate_size, math.floor(left / (dims.num_layers * neuron_macs(seq_len, dims)) + 1e-9))
        if n < 0:
            continue
        masks = Masks(head_mask, _per_layer_top(neuron_scores, n))
        score = float((head_scores * masks.head).sum() + (neuron_scores * masks.neuron).sum())
        if best is None or score > best[0]:
            best = (score, masks)
    if best is None:
        raise ValueError(f"no uniform split fits FLOPs {constraint}")
    return best[1]


def same_share_heads(dims: ModelDims, constraint: float) -> int:
    """Heads kept per layer when a layer keeps the same share of its heads as of its MACs."""
    return round(constraint * dims.num_heads)


def global_masks(
    head_scores: torch.Tensor, neuron_scores: torch.Tensor, dims: ModelDims, seq_len: float, constraint: float
) -> Masks:
    """One ranking of every head and neuron of every layer (FLAP's adaptive structure): the lowest-scoring units go
    first until the kept MACs fit the budget; a key/value group's cost goes with its last query head."""
    budget = budget_macs(dims, seq_len, constraint)
    masks = Masks.ones(dims)
    h_cost, n_cost, g_cost = head_macs(seq_len, dims), neuron_macs(seq_len, dims), group_macs(seq_len, dims)
    spent = dense_macs(dims, seq_len)
    group_left = torch.full((dims.num_layers, dims.kv_heads), dims.group_size)
    order = torch.argsort(torch.cat([head_scores.flatten(), neuron_scores.flatten()]).double(), stable=True)
    n_heads = head_scores.numel()
    for unit in order.tolist():
        if spent <= budget:
            break
        if unit < n_heads:
            layer, head = divmod(unit, dims.num_heads)
            masks.head[layer, head] = 0.0
            group = head // dims.group_size
            group_left[layer, group] -= 1
            spent -= h_cost + (g_cost if dims.grouped and group_left[layer, group] == 0 else 0.0)
        else:
            layer, neuron = divmod(unit - n_heads, dims.intermediate_size)
            masks.neuron[layer, neuron] = 0.0
            spent -= n_cost
    return masks
