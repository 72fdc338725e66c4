"""The architecture seam: one small adapter per model family.

An adapter says where a family keeps its attention heads and FFN neurons, and how to slice
them away. Everything else in fastprune (masks, Fisher, tuning, export, latency) talks to the
model only through :class:`ArchAdapter`, so adding a family means adding one entry to
``ADAPTERS``.
"""

from __future__ import annotations

import types
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UnsupportedArchitectureError

STRUCTURE_KEY = "fastprune_structure"
"""Key in ``config.json`` that holds the per-layer structure of a sliced model."""
NEURON_MULTIPLE = 8
"""Exported FFNs keep a multiple of this many neurons (padded with zero neurons): fp16/bf16 matrix products on a GPU
need dimensions of a multiple of 8 (16 bytes) for their fast tensor-core kernels."""


def padded_size(units: int, limit: int, multiple: int = NEURON_MULTIPLE) -> int:
    """``units`` rounded up to a multiple of ``multiple``, at most ``limit`` (the dense size): an exported FFN's."""
    return min(-(-units // multiple) * multiple, limit)


@dataclass(frozen=True)
class ModelDims:
    """The dense dimensions of a model family instance (from its config)."""

    num_layers: int
    num_heads: int
    head_size: int
    hidden_size: int
    intermediate_size: int


def _get(module: nn.Module, dotted: str) -> nn.Module:
    for part in dotted.split("."):
        module = getattr(module, part)
    return module


@dataclass(frozen=True)
class ArchAdapter:
    """Where one model family keeps its prunable units (dotted paths relative to the base model
    and to one layer) and the names of its config fields."""

    family: str
    model_types: tuple[str, ...]
    layers: str
    attention: str  # the module holding q/k/v and the head-count attributes
    query: str
    key: str
    value: str
    attn_out: str  # its input is the concatenation of the heads' context vectors
    ffn_in: str
    ffn_out: str  # its input is the FFN activation (one column per neuron)
    heads_attrs: tuple[str, ...]  # attributes of `attention` that store the head count
    cfg_layers: str
    cfg_heads: str
    cfg_hidden: str
    cfg_intermediate: str

    # ----- structure ---------------------------------------------------------------------
    def dims(self, config) -> ModelDims:
        hidden = getattr(config, self.cfg_hidden)
        heads = getattr(config, self.cfg_heads)
        return ModelDims(
            num_layers=getattr(config, self.cfg_layers),
            num_heads=heads,
            head_size=hidden // heads,
            hidden_size=hidden,
            intermediate_size=getattr(config, self.cfg_intermediate),
        )

    def layer_modules(self, model: nn.Module) -> list[nn.Module]:
        return list(_get(model.base_model, self.layers))

    def linear(self, layer: nn.Module, which: str) -> nn.Linear:
        """One of the layer's linears: ``query``, ``key``, ``value``, ``attn_out``, ``ffn_in``,
        ``ffn_out``."""
        return _get(layer, getattr(self, which))

    def heads_in_layer(self, layer: nn.Module, head_size: int) -> int:
        return self.linear(layer, "attn_out").in_features // head_size

    def neurons_in_layer(self, layer: nn.Module) -> int:
        return self.linear(layer, "ffn_out").in_features

    def structure(self, model: nn.Module) -> dict[str, list[int]]:
        """The current per-layer number of heads and FFN neurons."""
        head_size = self.dims(model.config).head_size
        layers = self.layer_modules(model)
        return {
            "num_heads": [self.heads_in_layer(layer, head_size) for layer in layers],
            "intermediate_size": [self.neurons_in_layer(layer) for layer in layers],
        }

    # ----- slicing -----------------------------------------------------------------------
    def slice_layer(
        self, layer: nn.Module, keep_heads: torch.Tensor, keep_neurons: torch.Tensor, head_size: int
    ) -> None:
        """Physically keep only the given heads and neurons of one layer (indices into the
        layer's current units). Layers may end with zero heads or zero neurons."""
        keep_heads = torch.as_tensor(keep_heads, dtype=torch.long).flatten()
        keep_neurons = torch.as_tensor(keep_neurons, dtype=torch.long).flatten()
        cols = (keep_heads[:, None] * head_size + torch.arange(head_size)).flatten()
        for name in ("query", "key", "value"):
            self._replace(layer, name, _slice_linear(self.linear(layer, name), rows=cols))
        self._replace(layer, "attn_out", _slice_linear(self.linear(layer, "attn_out"), cols=cols))
        self._replace(layer, "ffn_in", _slice_linear(self.linear(layer, "ffn_in"), rows=keep_neurons))
        self._replace(layer, "ffn_out", _slice_linear(self.linear(layer, "ffn_out"), cols=keep_neurons))
        attention = _get(layer, self.attention)
        n_heads = int(keep_heads.numel())
        for attr in self.heads_attrs:
            if hasattr(attention, attr):
                setattr(attention, attr, n_heads)
        if hasattr(attention, "all_head_size"):
            attention.all_head_size = n_heads * head_size
        if n_heads == 0:  # skip the attention kernel (see _no_heads_forward)
            owns_out = self.attn_out.startswith(self.attention + ".")  # DistilBERT's applies the output projection
            attention.fastprune_out = self.attn_out[len(self.attention) + 1 :] if owns_out else None
            attention.forward = types.MethodType(_no_heads_forward, attention)

    def reshape_to(self, model: nn.Module, structure: dict[str, list[int]]) -> None:
        """Give a dense model the per-layer shapes of a sliced one (weights to be loaded next)."""
        head_size = self.dims(model.config).head_size
        for layer, h, f in zip(
            self.layer_modules(model), structure["num_heads"], structure["intermediate_size"], strict=True
        ):
            self.slice_layer(layer, torch.arange(h), torch.arange(f), head_size)

    def _replace(self, layer: nn.Module, which: str, new: nn.Linear) -> None:
        path = getattr(self, which)
        parent_path, _, leaf = path.rpartition(".")
        parent = _get(layer, parent_path) if parent_path else layer
        setattr(parent, leaf, new)


def _no_heads_forward(self: nn.Module, hidden_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, None]:
    """The attention of a layer whose heads were all pruned: an empty context (so only the output projection's bias
    reaches the residual), without calling the attention kernel, which CUDA's SDPA cannot run on zero heads (it
    returns no tensor)."""
    context = hidden_states.new_zeros(*hidden_states.shape[:-1], 0)
    return (_get(self, self.fastprune_out)(context) if self.fastprune_out else context), None


def _slice_linear(linear: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None):
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


_BERT_LIKE = dict(
    layers="encoder.layer",
    attention="attention.self",
    query="attention.self.query",
    key="attention.self.key",
    value="attention.self.value",
    attn_out="attention.output.dense",
    ffn_in="intermediate.dense",
    ffn_out="output.dense",
    heads_attrs=("num_attention_heads",),
    cfg_layers="num_hidden_layers",
    cfg_heads="num_attention_heads",
    cfg_hidden="hidden_size",
    cfg_intermediate="intermediate_size",
)

ADAPTERS: tuple[ArchAdapter, ...] = (
    ArchAdapter(family="bert", model_types=("bert",), **_BERT_LIKE),
    ArchAdapter(family="roberta", model_types=("roberta", "xlm-roberta", "camembert"), **_BERT_LIKE),
    ArchAdapter(family="electra", model_types=("electra",), **_BERT_LIKE),
    ArchAdapter(
        family="distilbert",
        model_types=("distilbert",),
        layers="transformer.layer",
        attention="attention",
        query="attention.q_lin",
        key="attention.k_lin",
        value="attention.v_lin",
        attn_out="attention.out_lin",
        ffn_in="ffn.lin1",
        ffn_out="ffn.lin2",
        heads_attrs=("n_heads",),
        cfg_layers="n_layers",
        cfg_heads="n_heads",
        cfg_hidden="dim",
        cfg_intermediate="hidden_dim",
    ),
)

SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(t for a in ADAPTERS for t in a.model_types)


def adapter_for(model_or_config) -> ArchAdapter:
    """The adapter for a model (or its config); a clear error for any other architecture."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            if getattr(config, "is_decoder", False):
                raise UnsupportedArchitectureError(
                    f"model_type {model_type!r} configured as a decoder is not supported: fastprune prunes "
                    "encoder models for classification and extractive QA"
                )
            return adapter
    raise UnsupportedArchitectureError(
        f"unsupported architecture: model_type={model_type!r}. Supported model types: "
        f"{', '.join(SUPPORTED_MODEL_TYPES)} (families: {', '.join(a.family for a in ADAPTERS)})"
    )
