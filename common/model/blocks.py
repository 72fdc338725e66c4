"""The blocks a latency table times: one attention block and one MLP block of a family, built from the data its
adapter states (norm kind and placement, activation, biases, key/value groups, gated MLP).

Post-norm (BERT): ``norm(sublayer(x) + x)``. Pre-norm (Llama): ``sublayer(norm(x)) + x``. Rotary position
embeddings and the padding mask are not timed (elementwise work; the models skip the mask for unpadded batches), nor is
MPNet's relative position bias (its eager attention plus the bias came to 6% over this block at 12 heads, 15% at 6, at
batch 32 x sequence 128 on 2 CPU threads: benchmarks/mpnet_check.py; about the same per head, so the table's
per-head costs, what the search trades, hold)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

NormKind = Literal["layer", "rms"]
NormPlacement = Literal["post", "pre"]
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"gelu": F.gelu, "silu": F.silu, "relu": F.relu}


@dataclass(frozen=True)
class BlockStyle:
    """How a family's blocks compute around their projections."""

    norm: NormKind = "layer"
    placement: NormPlacement = "post"
    activation: str = "gelu"
    bias: bool = True

    def make_norm(self, hidden: int, eps: float) -> nn.Module:
        return nn.LayerNorm(hidden, eps=eps) if self.norm == "layer" else nn.RMSNorm(hidden, eps=eps)

    def around(self, norm: nn.Module, sublayer: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor):
        """The block's output: the sublayer, the residual and the norm where the family places it."""
        if self.placement == "pre":
            return sublayer(norm(x)) + x
        return norm(sublayer(x) + x)


BERT_STYLE = BlockStyle()


class AttentionBlock(nn.Module):
    """What one attention block computes with ``heads`` query heads, ``group_size`` of them sharing a key/value head
    (1: plain multi-head attention; a last group may hold fewer): Q/K/V projections, scaled dot-product attention,
    output projection, residual and norm (no padding mask: the models skip it for unpadded batches too)."""

    def __init__(
        self,
        hidden: int,
        heads: int,
        head_size: int,
        eps: float = 1e-12,
        group_size: int = 1,
        style: BlockStyle = BERT_STYLE,
    ):
        super().__init__()
        inner = heads * head_size
        self.heads, self.head_size, self.style = heads, head_size, style
        groups = -(-heads // group_size)
        self.query = nn.Linear(hidden, inner, bias=style.bias)
        self.key = nn.Linear(hidden, groups * head_size, bias=style.bias)
        self.value = nn.Linear(hidden, groups * head_size, bias=style.bias)
        self.head_groups = torch.arange(heads) // group_size if group_size > 1 else None
        self.out = nn.Linear(inner, hidden, bias=style.bias)
        self.norm = style.make_norm(hidden, eps)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape
        return x.view(batch, seq, -1, self.head_size).transpose(1, 2)

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape
        key, value = self._split(self.key(x)), self._split(self.value(x))
        if self.head_groups is not None:  # each group's key and value serve its query heads
            index = self.head_groups.to(key.device)
            key, value = key.index_select(1, index), value.index_select(1, index)
        ctx = F.scaled_dot_product_attention(self._split(self.query(x)), key, value)
        return self.out(ctx.transpose(1, 2).reshape(batch, seq, self.heads * self.head_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.style.around(self.norm, self._attention, x)


class FFNBlock(nn.Module):
    """One MLP block with ``neurons`` intermediate units: input projection(s) (gated: ``act(gate(x)) * up(x)``),
    activation, output projection, residual and norm."""

    def __init__(
        self, hidden: int, neurons: int, eps: float = 1e-12, gated: bool = False, style: BlockStyle = BERT_STYLE
    ):
        super().__init__()
        self.style = style
        self.gate = nn.Linear(hidden, neurons, bias=style.bias) if gated else None
        self.inp = nn.Linear(hidden, neurons, bias=style.bias)
        self.out = nn.Linear(neurons, hidden, bias=style.bias)
        self.norm = style.make_norm(hidden, eps)
        self.act = ACTIVATIONS[style.activation]

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate is None:
            return self.out(self.act(self.inp(x)))
        return self.out(self.act(self.gate(x)) * self.inp(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.style.around(self.norm, self._mlp, x)
