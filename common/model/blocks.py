"""The blocks a latency table times: one attention block and one MLP block of a family, built from the data its
adapter states (norm kind and placement, activation, biases, key/value groups, gated MLP).

Post-norm (BERT): ``norm(sublayer(x) + x)``. Pre-norm (Llama): ``sublayer(norm(x)) + x``. Rotary position
embeddings and the padding mask are not timed (elementwise work; the models skip the mask for unpadded batches), nor is
MPNet's relative position bias (MPNet's eager attention plus the bias timed within 15% of this block at 12 and 6 heads,
either way, at batch 32 x sequence 128 on 2 busy CPU threads: benchmarks/mpnet_check.py, results/mpnet_check_cpu.md).
An attention block times either a prefill (a whole sequence) or one decoding step over a key/value cache."""

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
    """What one attention block computes with ``heads`` query heads over ``groups`` key/value heads (default: as few
    as hold ``group_size`` query heads each; ``groups == heads`` is plain multi-head attention), the heads spread
    over the groups in order: Q/K/V projections, scaled dot-product attention (causal for a decoder's prefill),
    output projection, residual and norm (no padding mask: the models skip it for unpadded batches too).

    Called with ``past`` (the key and value caches, each ``[batch, groups, cache_length, head_size]``), it is one
    decoding step: the new tokens' keys and values are appended to the cache (a new tensor, as transformers'
    dynamic cache does; the cache passed in is left unchanged) and the new tokens attend over all of them."""

    def __init__(
        self,
        hidden: int,
        heads: int,
        head_size: int,
        eps: float = 1e-12,
        group_size: int = 1,
        style: BlockStyle = BERT_STYLE,
        groups: int | None = None,
        causal: bool = False,
    ):
        super().__init__()
        groups = -(-heads // group_size) if groups is None else groups
        if heads > 0 and not -(-heads // group_size) <= groups <= heads:
            raise ValueError(f"{heads} query heads (at most {group_size} a group) cannot fill {groups} groups")
        inner = heads * head_size
        self.heads, self.groups, self.head_size, self.style, self.causal = heads, groups, head_size, style, causal
        self.query = nn.Linear(hidden, inner, bias=style.bias)
        self.key = nn.Linear(hidden, groups * head_size, bias=style.bias)
        self.value = nn.Linear(hidden, groups * head_size, bias=style.bias)
        spread = torch.arange(heads) * groups // max(1, heads)  # each group's heads next to each other
        self.head_groups = spread if groups < heads else None
        self.out = nn.Linear(inner, hidden, bias=style.bias)
        self.norm = style.make_norm(hidden, eps)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape
        return x.view(batch, seq, -1, self.head_size).transpose(1, 2)

    def _attention(self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        batch, seq, _ = x.shape
        key, value = self._split(self.key(x)), self._split(self.value(x))
        if past is not None:  # one decoding step: the new keys and values join the cached ones
            key, value = torch.cat([past[0], key], dim=2), torch.cat([past[1], value], dim=2)
        if self.head_groups is not None:  # each group's key and value serve its query heads
            index = self.head_groups.to(key.device)
            key, value = key.index_select(1, index), value.index_select(1, index)
        causal = self.causal and past is None and seq > 1
        ctx = F.scaled_dot_product_attention(self._split(self.query(x)), key, value, is_causal=causal)
        return self.out(ctx.transpose(1, 2).reshape(batch, seq, self.heads * self.head_size))

    def forward(self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        return self.style.around(self.norm, lambda h: self._attention(h, past), x)


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


def kv_cache(
    batch: int, groups: int, length: int, head_size: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random key and value caches of ``length`` tokens of ``groups`` key/value heads, as an attention block's
    ``past``: each ``[batch, groups, length, head_size]``."""
    shape = (batch, groups, length, head_size)
    return torch.randn(shape, device=device, dtype=dtype), torch.randn(shape, device=device, dtype=dtype)
