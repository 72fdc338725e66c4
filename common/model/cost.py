"""The MAC cost of masks and of units, priced by the family's cost model (:class:`~.dims.MacCost`, carried by the
model's :class:`~.dims.ModelDims`): these functions only delegate to it."""

from __future__ import annotations

from .dims import ModelDims
from .masks import Masks


def head_macs(seq_len: float, dims: ModelDims) -> float:
    """MACs of one query head (with its key and value projections under plain multi-head attention)."""
    return dims.cost.head(seq_len, dims)


def group_macs(seq_len: float, dims: ModelDims) -> float:
    """MACs of one key/value group of grouped-query attention (0 under plain attention)."""
    return dims.cost.group(seq_len, dims)


def neuron_macs(seq_len: float, dims: ModelDims) -> float:
    """MACs of one MLP neuron."""
    return dims.cost.neuron(seq_len, dims)


def units_macs(heads: float, neurons: float, dims: ModelDims, seq_len: float, groups: float = 0.0) -> float:
    """MACs of ``heads`` query heads, ``groups`` key/value groups and ``neurons`` neurons (all layers together)."""
    return dims.cost.units(heads, neurons, dims, seq_len, groups)


def masked_macs(masks: Masks, dims: ModelDims, seq_len: float) -> float:
    """MACs of the units ``masks`` keep; a key/value group is kept while any of its query heads is."""
    groups = float(dims.kept_groups(masks.head).sum()) if dims.grouped else 0.0
    return units_macs(float((masks.head != 0).sum()), float((masks.neuron != 0).sum()), dims, seq_len, groups)


def structure_macs(structure: dict[str, list], dims: ModelDims, seq_len: float) -> float:
    """MACs of a sliced model's per-layer structure (:meth:`~.arch.ArchAdapter.structure`)."""
    groups = sum(structure["num_key_value_heads"]) if "num_key_value_heads" in structure else 0
    return units_macs(sum(structure["num_heads"]), sum(structure["intermediate_size"]), dims, seq_len, groups)


def dense_macs(dims: ModelDims, seq_len: float) -> float:
    return dims.cost.dense(dims, seq_len)


def flops_ratio(masks: Masks, dims: ModelDims, seq_len: float) -> float:
    """Kept MACs of the heads and FFNs relative to the dense model (embeddings and the task
    head are not counted, as in the paper)."""
    return masked_macs(masks, dims, seq_len) / dense_macs(dims, seq_len)
