"""The architecture seam: one small adapter per model family, describing its structure as data.

An adapter says where a family keeps its attention heads (query heads grouped over key/value heads) and MLP
neurons, how its blocks compute around them (norm placement, activation, biases), where tuning reads the residual
stream, what a unit costs, and how to slice units away. Everything else in fastprune (masks, Fisher, tuning, export,
latency) talks to the model only through :class:`ArchAdapter`, so adding a family means adding one entry to
``ADAPTERS``.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import UnsupportedArchitectureError
from .blocks import BERT_STYLE, AttentionBlock, BlockStyle, FFNBlock
from .dims import MAC_COST, MacCost, ModelDims
from .modeling_fastprune import BIAS_HEADS_KEY, bias_heads, keep_bias_heads
from .slicing import KVExpandedLinear, in_order, no_heads_forward, slice_linear, unit_columns

STRUCTURE_KEY = "fastprune_structure"
"""Key in ``config.json`` that holds the per-layer structure of a sliced model."""
NEURON_MULTIPLE = 8
"""Exported FFNs keep a multiple of this many neurons (padded with zero neurons): fp16/bf16 matrix products on a GPU
need dimensions of a multiple of 8 (16 bytes) for their fast tensor-core kernels."""


def padded_size(units: int, limit: int, multiple: int = NEURON_MULTIPLE) -> int:
    """``units`` rounded up to a multiple of ``multiple``, at most ``limit`` (the dense size): an exported FFN's."""
    return min(-(-units // multiple) * multiple, limit)


def _get(module: Any, dotted: str) -> Any:
    """The submodule at a dotted path (typed Any: nn.Module's attribute access is typed Tensor | Module)."""
    for part in dotted.split("."):
        module = getattr(module, part)
    return module


@dataclass(frozen=True)
class ArchAdapter:
    """One model family's structure, as data.

    Where the layers are (``layers``, relative to the base model) and, relative to one layer, the attention's
    projections (query heads grouped over key/value heads), the MLP's input projection(s) (``ffn_in``, and
    ``ffn_gate`` for a gated MLP: ``act(gate(x)) * up(x)``) and output projection; the config fields of the dense
    sizes; how a block computes around its projections (``style``: norm kind and placement, activation, biases);
    where the residual stream entering each block is read (the input of ``attn_residual`` / ``ffn_residual``);
    and the cost of a head, a key/value group and a neuron (``cost``). Masks, Fisher, tuning, export and the
    latency table read the model only through it."""

    family: str
    model_types: tuple[str, ...]
    layers: str
    attention: str  # the module holding q/k/v and the head-count attributes
    query: str
    key: str
    value: str
    attn_out: str  # its input is the concatenation of the heads' context vectors
    ffn_in: str  # the MLP's input projection (the up projection of a gated MLP)
    ffn_out: str  # its input is the FFN activation (one column per neuron)
    heads_attrs: tuple[str, ...]  # attributes of `attention` that store the head count
    cfg_layers: str
    cfg_heads: str
    cfg_hidden: str
    cfg_intermediate: str
    # ----- beyond the plain post-norm BERT layout ----------------------------------------------------------------
    ffn_gate: str | None = None  # a gated MLP's gate projection
    cfg_kv_heads: str | None = None  # grouped-query attention: the config's key/value head count
    cfg_head_size: str | None = None  # the config's head size (default hidden // heads)
    group_attrs: tuple[str, ...] = ()  # attributes of `attention` that store query heads per key/value head
    attn_residual: str | None = None  # its input is the residual stream entering attention (default: `query`)
    ffn_residual: str | None = None  # its input is the residual stream entering the MLP (default: `ffn_in`)
    style: BlockStyle = BERT_STYLE
    cfg_norm_eps: str = "layer_norm_eps"
    cost: MacCost = MAC_COST
    causal: bool = False  # a decoder (causal language model) family rather than an encoder
    # the attention's forward argument carrying a position bias computed once for all layers (one channel per dense
    # head, MPNet's): a sliced layer's attention receives its kept heads' channels, listed in the structure
    shared_bias: str | None = None
    layer_returns_tuple: bool = False  # a layer's forward returns (hidden states, ...), not the hidden states alone

    def __post_init__(self) -> None:
        if self.style.placement == "pre" and not (self.attn_residual and self.ffn_residual):
            raise ValueError(
                f"family {self.family!r}: a pre-norm block reads the residual stream before its norm; name the "
                "modules whose input it is (attn_residual, ffn_residual)"
            )

    # ----- structure ---------------------------------------------------------------------
    def dims(self, config) -> ModelDims:
        hidden = getattr(config, self.cfg_hidden)
        heads = getattr(config, self.cfg_heads)
        head_size = getattr(config, self.cfg_head_size, None) if self.cfg_head_size else None
        return ModelDims(
            num_layers=getattr(config, self.cfg_layers),
            num_heads=heads,
            head_size=head_size or hidden // heads,
            hidden_size=hidden,
            intermediate_size=getattr(config, self.cfg_intermediate),
            num_key_value_heads=getattr(config, self.cfg_kv_heads, None) if self.cfg_kv_heads else None,
            mlp_inputs=2 if self.ffn_gate else 1,
            cost=self.cost,
        )

    def layer_modules(self, model: nn.Module) -> list[nn.Module]:
        return list(_get(model.base_model, self.layers))

    def linear(self, layer: nn.Module, which: str) -> nn.Linear:
        """One of the layer's linears: ``query``, ``key``, ``value``, ``attn_out``, ``ffn_in``, ``ffn_gate``,
        ``ffn_out``."""
        return _get(layer, getattr(self, which))

    @property
    def ffn_inputs(self) -> tuple[str, ...]:
        """The MLP's input projections: ``("ffn_gate", "ffn_in")`` for a gated MLP, else ``("ffn_in",)``."""
        return ("ffn_gate", "ffn_in") if self.ffn_gate else ("ffn_in",)

    def residual(self, layer: nn.Module, block: str) -> nn.Module:
        """The module whose input is the residual stream entering ``block`` (``attention`` or ``ffn``): in a
        post-norm block the sublayer's own input, in a pre-norm block the input of the norm before it."""
        if block == "attention":
            return _get(layer, self.attn_residual or self.query)
        return _get(layer, self.ffn_residual or self.ffn_in)

    def norm_eps(self, config) -> float:
        return float(getattr(config, self.cfg_norm_eps, 1e-12))

    def heads_in_layer(self, layer: nn.Module, head_size: int) -> int:
        return self.linear(layer, "attn_out").in_features // head_size

    def groups_in_layer(self, layer: nn.Module, head_size: int) -> int:
        """Key/value heads (groups) of a layer (its query heads under plain attention)."""
        return self.linear(layer, "key").out_features // head_size

    def cached_heads_in_layer(self, layer: nn.Module, head_size: int) -> int:
        """Key (and value) heads a layer keeps in the key/value cache per token: its groups, or one per query head
        where the key/value projections expand uneven groups (:class:`~.slicing.KVExpandedLinear`)."""
        key = self.linear(layer, "key")
        return len(key.head_groups) if isinstance(key, KVExpandedLinear) else key.out_features // head_size

    def kv_cache_bytes(self, model: nn.Module) -> int:
        """Bytes the key/value cache holds per token of context (keys and values of every layer, in the model's
        dtype): what bounds a decoder's batch and context when it generates."""
        head_size = self.dims(model.config).head_size
        width = next(model.parameters()).element_size()
        return (
            2
            * head_size
            * width
            * sum(self.cached_heads_in_layer(layer, head_size) for layer in self.layer_modules(model))
        )

    def neurons_in_layer(self, layer: nn.Module) -> int:
        return self.linear(layer, "ffn_out").in_features

    def head_groups(self, layer: nn.Module, head_size: int) -> torch.Tensor:
        """The key/value group (index into the layer's current groups) of each of its query heads."""
        stored = getattr(_get(layer, self.attention), "fastprune_head_groups", None)
        if stored is not None:
            return stored
        heads, groups = self.heads_in_layer(layer, head_size), self.groups_in_layer(layer, head_size)
        return torch.arange(heads) // max(1, heads // max(1, groups))

    def structure(self, model: nn.Module) -> dict[str, list]:
        """The current per-layer number of heads and FFN neurons (and, for grouped-query attention, of key/value
        groups and the group of each query head)."""
        head_size = self.dims(model.config).head_size
        layers = self.layer_modules(model)
        structure: dict[str, list] = {
            "num_heads": [self.heads_in_layer(layer, head_size) for layer in layers],
            "intermediate_size": [self.neurons_in_layer(layer) for layer in layers],
        }
        if self.cfg_kv_heads:
            structure["num_key_value_heads"] = [self.groups_in_layer(layer, head_size) for layer in layers]
            structure["head_groups"] = [self.head_groups(layer, head_size).tolist() for layer in layers]
        if self.shared_bias:
            structure[BIAS_HEADS_KEY] = [self.dense_heads(layer, head_size).tolist() for layer in layers]
        return structure

    def dense_heads(self, layer: nn.Module, head_size: int) -> torch.Tensor:
        """The dense head of each of a layer's heads, as far as slicing records it (for a family with a shared
        position bias); otherwise taken to be its first heads."""
        stored = bias_heads(_get(layer, self.attention))
        return stored if stored is not None else torch.arange(self.heads_in_layer(layer, head_size), device="cpu")

    # ----- slicing -----------------------------------------------------------------------
    def slice_layer(
        self, layer: nn.Module, keep_heads: torch.Tensor, keep_neurons: torch.Tensor, head_size: int
    ) -> None:
        """Physically keep only the given query heads and neurons of one layer (indices into the layer's current
        units), and the key/value groups of the kept heads. Layers may end with zero heads or zero neurons."""
        keep_heads = torch.as_tensor(keep_heads, dtype=torch.long).flatten()
        keep_neurons = torch.as_tensor(keep_neurons, dtype=torch.long).flatten()
        cols = unit_columns(keep_heads, head_size)
        attention = _get(layer, self.attention)
        if self.shared_bias:
            keep_bias_heads(attention, self.dense_heads(layer, head_size)[keep_heads.cpu()], self.shared_bias)
        if self.cfg_kv_heads:
            self._slice_groups(layer, attention, keep_heads, head_size)
        else:
            for name in ("key", "value"):
                self._replace(layer, name, slice_linear(self.linear(layer, name), rows=cols))
        self._replace(layer, "query", slice_linear(self.linear(layer, "query"), rows=cols))
        self._replace(layer, "attn_out", slice_linear(self.linear(layer, "attn_out"), cols=cols))
        for name in self.ffn_inputs:
            self._replace(layer, name, slice_linear(self.linear(layer, name), rows=keep_neurons))
        self._replace(layer, "ffn_out", slice_linear(self.linear(layer, "ffn_out"), cols=keep_neurons))
        n_heads = int(keep_heads.numel())
        for attr in self.heads_attrs:
            if hasattr(attention, attr):
                setattr(attention, attr, n_heads)
        if hasattr(attention, "all_head_size"):
            attention.all_head_size = n_heads * head_size
        if n_heads == 0:  # skip the attention kernel (see no_heads_forward)
            owns_out = self.attn_out.startswith(self.attention + ".")  # DistilBERT's applies the output projection
            attention.fastprune_out = self.attn_out[len(self.attention) + 1 :] if owns_out else None
            attention.forward = types.MethodType(no_heads_forward, attention)

    def _slice_groups(self, layer: nn.Module, attention: nn.Module, keep_heads: torch.Tensor, head_size: int) -> None:
        """Keep the key/value groups of the kept query heads (see :mod:`.slicing`)."""
        groups_of = self.head_groups(layer, head_size)[keep_heads]
        kept, head_groups = torch.unique(groups_of, sorted=True, return_inverse=True)
        rows = unit_columns(kept, head_size)
        stock = keep_heads.numel() == 0 or in_order(head_groups, kept.numel())
        for name in ("key", "value"):
            sliced = slice_linear(self.linear(layer, name), rows=rows)
            self._replace(layer, name, sliced if stock else KVExpandedLinear(sliced, head_groups, head_size))
        per_group = keep_heads.numel() // kept.numel() if stock and kept.numel() else 1
        for attr in self.group_attrs:  # 1 when the key/value projections expand to one head per query head
            setattr(attention, attr, per_group)
        attention.fastprune_head_groups = head_groups

    def reshape_to(self, model: nn.Module, structure: dict[str, list]) -> None:
        """Give a dense model the per-layer shapes of a sliced one (weights to be loaded next)."""
        dims = self.dims(model.config)
        layers = self.layer_modules(model)
        groups = structure.get("head_groups") or [None] * len(layers)
        biased = structure.get(BIAS_HEADS_KEY) if self.shared_bias else None
        for i, (layer, h, f, g) in enumerate(
            zip(layers, structure["num_heads"], structure["intermediate_size"], groups, strict=True)
        ):
            keep = torch.arange(h) if g is None else _heads_with_groups(g, dims.group_size)
            self.slice_layer(layer, keep, torch.arange(f), dims.head_size)
            if self.shared_bias and biased:
                keep_bias_heads(_get(layer, self.attention), biased[i], self.shared_bias)

    def _replace(self, layer: nn.Module, which: str, new: nn.Linear) -> None:
        path = getattr(self, which)
        parent_path, _, leaf = path.rpartition(".")
        parent = _get(layer, parent_path) if parent_path else layer
        setattr(parent, leaf, new)

    # ----- the blocks a latency table times ----------------------------------------------
    def timed_block(self, config, kind: str, units: int, groups: int | None = None) -> nn.Module:
        """One attention block with ``units`` query heads (``kind="head"``; under grouped-query attention over
        ``groups`` key/value groups, default as few as hold them) or one MLP block with ``units`` neurons
        (``kind="neuron"``), computing as the family's blocks do (a decoder's prefill attends causally)."""
        dims, eps = self.dims(config), self.norm_eps(config)
        if kind == "head":
            return AttentionBlock(
                dims.hidden_size, units, dims.head_size, eps, dims.group_size, self.style, groups, self.causal
            )
        return FFNBlock(dims.hidden_size, units, eps, gated=self.ffn_gate is not None, style=self.style)


def _heads_with_groups(head_groups: list[int], group_size: int) -> torch.Tensor:
    """Dense query heads whose slicing leaves heads in the groups ``head_groups`` (group positions 0..G'-1): the
    k-th head given group position g is dense head ``g * group_size + k``."""
    taken: dict[int, int] = {}
    keep = []
    for g in head_groups:
        keep.append(g * group_size + taken.get(g, 0))
        taken[g] = taken.get(g, 0) + 1
    if any(count > group_size for count in taken.values()):
        raise ValueError(f"a structure's head groups {head_groups} hold more than {group_size} heads in a group")
    return torch.tensor(keep, dtype=torch.long)


_BERT_LIKE: dict[str, Any] = dict(
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
    attn_residual="attention.self.query",  # post-norm: the sublayers read the residual stream itself
    ffn_residual="intermediate.dense",
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
        attn_residual="attention.q_lin",
        ffn_residual="ffn.lin1",
    ),
    ArchAdapter(  # BERT's layout and post-norm blocks (timed as BERT's: SDPA, the bias add untimed), other names
        family="mpnet",
        model_types=("mpnet",),
        **_BERT_LIKE
        | dict(
            attention="attention.attn",
            query="attention.attn.q",
            key="attention.attn.k",
            value="attention.attn.v",
            attn_out="attention.attn.o",
            attn_residual="attention.attn.q",
        ),
        shared_bias="position_bias",  # the encoder's relative position bias, one channel per head, to every layer
        layer_returns_tuple=True,
    ),
)

_LLAMA_LIKE: dict[str, Any] = dict(
    layers="layers",
    attention="self_attn",
    query="self_attn.q_proj",
    key="self_attn.k_proj",
    value="self_attn.v_proj",
    attn_out="self_attn.o_proj",
    ffn_gate="mlp.gate_proj",
    ffn_in="mlp.up_proj",
    ffn_out="mlp.down_proj",
    heads_attrs=(),  # transformers 5's Llama attention infers its head count from the projections' shapes
    group_attrs=("num_key_value_groups",),
    cfg_layers="num_hidden_layers",
    cfg_heads="num_attention_heads",
    cfg_kv_heads="num_key_value_heads",
    cfg_head_size="head_dim",
    cfg_hidden="hidden_size",
    cfg_intermediate="intermediate_size",
    attn_residual="input_layernorm",  # pre-norm: the residual stream is the norm's input
    ffn_residual="post_attention_layernorm",
    style=BlockStyle(norm="rms", placement="pre", activation="silu", bias=False),
    cfg_norm_eps="rms_norm_eps",
    causal=True,
)
"""Llama's layout, shared by Mistral and the Qwen2/Qwen3 families in transformers 5 (Qwen2 adds biases to q/k/v,
Qwen3 a per-head RMSNorm on queries and keys: both are per-unit or per-head-size, so slicing heads keeps them)."""

ADAPTERS = (
    *ADAPTERS,
    ArchAdapter(family="llama", model_types=("llama",), **_LLAMA_LIKE),
    ArchAdapter(family="mistral", model_types=("mistral",), **_LLAMA_LIKE),
    ArchAdapter(family="qwen2", model_types=("qwen2",), **_LLAMA_LIKE),
    ArchAdapter(family="qwen3", model_types=("qwen3",), **_LLAMA_LIKE),
)

SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(t for a in ADAPTERS for t in a.model_types)


def adapter_for(model_or_config) -> ArchAdapter:
    """The adapter for a model (or its config); a clear error for any other architecture."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            if getattr(config, "is_decoder", False) and not adapter.causal:
                raise UnsupportedArchitectureError(
                    f"model_type {model_type!r} configured as a decoder is not supported: fastprune prunes "
                    "encoder models for classification and extractive QA"
                )
            return adapter
    raise UnsupportedArchitectureError(
        f"unsupported architecture: model_type={model_type!r}. Supported model types: "
        f"{', '.join(SUPPORTED_MODEL_TYPES)} (families: {', '.join(a.family for a in ADAPTERS)})"
    )
