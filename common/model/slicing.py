"""Physical slicing of linears and attention: the tools :class:`~.arch.ArchAdapter` slices a layer with.

Under grouped-query attention the query projection is sliced by the kept query heads and the key and value
projections by the kept key/value groups (a group whose query heads are all pruned goes). When every kept group
keeps the same number of query heads, in order, the attention computes as the family's own code does (its
heads-per-group attribute is set). Otherwise the key and value projections become :class:`KVExpandedLinear`: they
compute only the kept groups' rows and hand each query head its group's key and value (the family's attention then
runs with one query head per key/value head)."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from .modeling_fastprune import KVExpandedLinear

__all__ = ["KVExpandedLinear", "in_order", "no_heads_forward", "plain_linear", "slice_linear", "unit_columns"]


def unit_columns(units: torch.Tensor, size: int) -> torch.Tensor:
    """The row (or column) indices of ``units`` of ``size`` consecutive rows each."""
    return (units[:, None] * size + torch.arange(size)).flatten()


def slice_linear(linear: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    """A plain ``nn.Linear`` holding the given rows (outputs) and columns (inputs) of ``linear``; zero-sized ones
    are valid (a layer with all its heads or neurons pruned)."""
    weight = linear.weight.detach()
    bias = linear.bias.detach() if linear.bias is not None else None
    if rows is not None:
        weight = weight[rows.to(weight.device)]
        bias = bias[rows.to(weight.device)] if bias is not None else None
    if cols is not None:
        weight = weight[:, cols.to(weight.device)]
    with warnings.catch_warnings():  # zero-sized layers (all heads or neurons pruned) are valid
        warnings.simplefilter("ignore", UserWarning)
        new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    new = new.to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    new.weight.requires_grad_(linear.weight.requires_grad)
    if bias is not None:
        new.bias.requires_grad_(linear.bias.requires_grad)
    return new


def plain_linear(linear: nn.Linear) -> nn.Linear:
    """``linear`` without a key/value expansion (the same parameters)."""
    if not isinstance(linear, KVExpandedLinear):
        return linear
    return slice_linear(linear)


def in_order(head_groups: torch.Tensor, groups: int) -> bool:
    """Whether query head ``j`` uses group ``j // (H / G)``: what a family's own grouped attention computes."""
    heads = head_groups.numel()
    if groups == 0 or heads % groups:
        return False
    return bool(torch.equal(head_groups.cpu(), torch.arange(heads) // (heads // groups)))


def no_heads_forward(self: nn.Module, hidden_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, None]:
    """The attention of a layer whose heads were all pruned: an empty context (so only the output projection's bias
    reaches the residual), without calling the attention kernel, which CUDA's SDPA cannot run on zero heads (it
    returns no tensor)."""
    context = hidden_states.new_zeros(*hidden_states.shape[:-1], 0)
    if not self.fastprune_out:
        return context, None
    out: nn.Module = self
    for part in str(self.fastprune_out).split("."):
        out = getattr(out, part)
    return out(context), None
