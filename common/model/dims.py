"""A model's dense dimensions and the MAC cost model of its prunable units, as data.

An attention layer holds ``num_heads`` query heads grouped over ``num_key_value_heads`` key/value heads (grouped-
query attention when there are fewer key/value heads than query heads; one key/value head per query head is plain
multi-head attention). An MLP has one input projection (``mlp_inputs=1``) or two (a gated MLP: gate and up) and one
output projection. The units are a query head, a key/value group and an MLP neuron; their cost is stated by the
family's :class:`MacCost` (see :attr:`fastprune.common.model.arch.ArchAdapter.cost`), which the dimensions carry, so
code that holds only the dimensions (the searches, the latency table) prices units as the family does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

import torch
from pydantic import Field

from ..errors import ConfigError


@dataclass(frozen=True)
class MacCost:
    """The paper's MAC cost model, per sequence of ``seq_len`` tokens: the projections' MACs per token times the
    length, plus the attention scores and context (``2 * seq_len`` per token and head dimension).

    - a query head: its rows of the query projection and its columns of the output projection, and the two
      attention matmuls; with plain multi-head attention, also its key and value rows (its own group), so a head
      costs ``4 s d dh + 2 s^2 dh`` as in the paper;
    - a key/value group (grouped-query attention only): its rows of the key and value projections, ``2 s d dh``; a
      group is paid once while any of its query heads is kept;
    - an MLP neuron: a row of each input projection and a column of the output one, ``(inputs + 1) s d``.

    A family whose units cost otherwise overrides these methods in its adapter's ``cost``."""

    def head_projections_per_token(self, dims: ModelDims) -> float:
        """MACs per token of one query head's projections (with its key and value ones under plain attention)."""
        return (2 if dims.grouped else 4) * dims.hidden_size * dims.head_size

    def group_projections_per_token(self, dims: ModelDims) -> float:
        """MACs per token of one key/value group's projections (0 under plain attention: counted with the head)."""
        return 2 * dims.hidden_size * dims.head_size if dims.grouped else 0.0

    def attention_per_token(self, dims: ModelDims, seq_len: float) -> float:
        """MACs per token of one head's attention scores and context at sequence length ``seq_len``."""
        return 2 * seq_len * dims.head_size

    def neuron_per_token(self, dims: ModelDims) -> float:
        """MACs per token of one MLP neuron (a row of each input projection, a column of the output one)."""
        return (dims.mlp_inputs + 1) * dims.hidden_size

    # per sequence (written as the paper's formulas, so that the plain case rounds exactly as it always did)
    def head(self, seq_len: float, dims: ModelDims) -> float:
        s, d, dh = seq_len, dims.hidden_size, dims.head_size
        return (2 if dims.grouped else 4) * s * d * dh + 2 * s * s * dh

    def group(self, seq_len: float, dims: ModelDims) -> float:
        return 2 * seq_len * dims.hidden_size * dims.head_size if dims.grouped else 0.0

    def neuron(self, seq_len: float, dims: ModelDims) -> float:
        return (dims.mlp_inputs + 1) * seq_len * dims.hidden_size

    def units(self, heads: float, neurons: float, dims: ModelDims, seq_len: float, groups: float = 0.0) -> float:
        """MACs of ``heads`` query heads, ``groups`` key/value groups and ``neurons`` neurons (all layers)."""
        total = heads * self.head(seq_len, dims) + neurons * self.neuron(seq_len, dims)
        return total + groups * self.group(seq_len, dims) if dims.grouped else total

    def dense(self, dims: ModelDims, seq_len: float) -> float:
        per_layer = dims.num_heads * self.head(seq_len, dims) + dims.intermediate_size * self.neuron(seq_len, dims)
        if dims.grouped:
            per_layer = per_layer + dims.kv_heads * self.group(seq_len, dims)
        return dims.num_layers * per_layer


MAC_COST = MacCost()


@dataclass(frozen=True)
class ModelDims:
    """The dense dimensions of a model family instance (from its config), with the family's cost model."""

    num_layers: int
    num_heads: int  # query heads
    head_size: int
    hidden_size: int
    intermediate_size: int
    num_key_value_heads: int | None = None  # None: one per query head (plain multi-head attention)
    mlp_inputs: int = 1  # 2: a gated MLP (gate and up projections)
    cost: Annotated[MacCost, Field(exclude=True)] = field(default=MAC_COST, compare=False, repr=False)

    def __post_init__(self) -> None:
        kv = self.num_key_value_heads
        if kv is not None and (kv < 1 or self.num_heads % kv):
            raise ConfigError(
                f"num_key_value_heads={kv} must be a positive divisor of the {self.num_heads} query heads"
            )
        if self.mlp_inputs not in (1, 2):
            raise ConfigError(f"mlp_inputs must be 1 (plain MLP) or 2 (gated: gate and up), got {self.mlp_inputs}")

    @property
    def kv_heads(self) -> int:
        """Key/value heads (groups) per dense layer."""
        return self.num_heads if self.num_key_value_heads is None else self.num_key_value_heads

    @property
    def grouped(self) -> bool:
        """Grouped-query attention: fewer key/value heads than query heads."""
        return self.kv_heads < self.num_heads

    @property
    def group_size(self) -> int:
        """Query heads per key/value group in the dense model."""
        return self.num_heads // self.kv_heads

    def kept_groups(self, head_mask: torch.Tensor) -> torch.Tensor:
        """Which key/value groups a head mask [..., H] keeps (bool [..., G]): those with a kept query head."""
        kept = head_mask != 0
        return kept.view(*kept.shape[:-1], self.kv_heads, self.group_size).any(-1)
