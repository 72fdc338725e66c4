"""The paper's MAC cost model of heads and FFN neurons."""

from __future__ import annotations

from .arch import ModelDims
from .masks import Masks


def head_macs(seq_len: float, dims: ModelDims) -> float:
    """MACs of one attention head: Q, K, V and output projections plus the two attention matmuls."""
    s, d, dh = seq_len, dims.hidden_size, dims.head_size
    return 4 * s * d * dh + 2 * s * s * dh


def neuron_macs(seq_len: float, dims: ModelDims) -> float:
    """MACs of one FFN neuron: one row of W1 and one column of W2."""
    return 2 * seq_len * dims.hidden_size


def units_macs(heads: float, neurons: float, dims: ModelDims, seq_len: float) -> float:
    """MACs of ``heads`` heads and ``neurons`` FFN neurons (in all layers together)."""
    return heads * head_macs(seq_len, dims) + neurons * neuron_macs(seq_len, dims)


def masked_macs(masks: Masks, dims: ModelDims, seq_len: float) -> float:
    return units_macs(float((masks.head != 0).sum()), float((masks.neuron != 0).sum()), dims, seq_len)


def dense_macs(dims: ModelDims, seq_len: float) -> float:
    return dims.num_layers * (
        dims.num_heads * head_macs(seq_len, dims) + dims.intermediate_size * neuron_macs(seq_len, dims)
    )


def flops_ratio(masks: Masks, dims: ModelDims, seq_len: float) -> float:
    """Kept MACs of the heads and FFNs relative to the dense model (embeddings and the task
    head are not counted, as in the paper)."""
    return masked_macs(masks, dims, seq_len) / dense_macs(dims, seq_len)
