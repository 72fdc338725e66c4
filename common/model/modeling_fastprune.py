"""Modeling code of a model pruned by fastprune: load it with plain transformers, no fastprune needed.

fastprune copies this file into every exported folder whose layers keep different numbers of attention heads or FFN
neurons (which no stock config can describe). The folder's ``config.json`` names a model type of its own
(``fastprune_bert``, ...) and points ``auto_map`` at the classes below, so::

    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    classify = pipeline("text-classification", model=model, tokenizer=tokenizer)

A bare encoder (sentence embeddings) loads with ``AutoModel`` the same way, and its sentence-transformers folder with
``SentenceTransformer(folder, trust_remote_code=True)``.

Each class is the stock transformers class whose layers are re-sized, in ``__init__`` and before the weights load,
to the per-layer structure stored in the config under ``fastprune_structure`` (``num_heads`` and
``intermediate_size``, one entry per layer; under grouped-query attention also ``head_groups``, the key/value group of
each kept query head: a layer whose groups keep different numbers of query heads hands each query head its group's
key and value). A causal language model (Llama, Mistral, Qwen2, Qwen3) loads with ``AutoModelForCausalLM`` and
generates with its key/value cache. A layer may keep no heads (its attention is then only the output
projection's bias, without calling the attention kernel) or no FFN neurons. Without ``trust_remote_code=True``
transformers refuses the folder (its model type is not a stock one) instead of loading it into the wrong shapes.

This file imports only torch and transformers.
"""

from __future__ import annotations

import inspect
import types
import warnings
from typing import Any

import torch
from torch import nn
from transformers import (
    BertConfig,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertModel,
    CamembertConfig,
    CamembertForQuestionAnswering,
    CamembertForSequenceClassification,
    CamembertModel,
    DistilBertConfig,
    DistilBertForQuestionAnswering,
    DistilBertForSequenceClassification,
    DistilBertModel,
    ElectraConfig,
    ElectraForQuestionAnswering,
    ElectraForSequenceClassification,
    ElectraModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    MPNetConfig,
    MPNetForQuestionAnswering,
    MPNetForSequenceClassification,
    MPNetModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
    RobertaConfig,
    RobertaForQuestionAnswering,
    RobertaForSequenceClassification,
    RobertaModel,
    XLMRobertaConfig,
    XLMRobertaForQuestionAnswering,
    XLMRobertaForSequenceClassification,
    XLMRobertaModel,
)

STRUCTURE_KEY = "fastprune_structure"
MODEL_TYPE_PREFIX = "fastprune_"
"""The model type of a pruned folder is this prefix followed by the stock model type (``fastprune_bert``)."""

# Where each family keeps its units: (layers, attention, query, key, value, attention output, FFN in, FFN out,
# the attention's head-count attribute, config fields: hidden size, head count; then, for grouped-query attention
# and a gated MLP: the gate projection, the attention's query-heads-per-group attribute, config fields: key/value
# head count, head size).
_BERT_LIKE = (
    "encoder.layer",
    "attention.self",
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
    "num_attention_heads",
    "hidden_size",
    "num_attention_heads",
    None,
    None,
    None,
    None,
)
_DISTILBERT = (
    "transformer.layer",
    "attention",
    "attention.q_lin",
    "attention.k_lin",
    "attention.v_lin",
    "attention.out_lin",
    "ffn.lin1",
    "ffn.lin2",
    "n_heads",
    "dim",
    "n_heads",
    None,
    None,
    None,
    None,
)
_LLAMA_LIKE = (
    "layers",
    "self_attn",
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.up_proj",
    "mlp.down_proj",
    None,  # transformers 5's Llama attention infers its head count from the projections' shapes
    "hidden_size",
    "num_attention_heads",
    "mlp.gate_proj",
    "num_key_value_groups",
    "num_key_value_heads",
    "head_dim",
)
_MPNET = (
    "encoder.layer",
    "attention.attn",
    "attention.attn.q",
    "attention.attn.k",
    "attention.attn.v",
    "attention.attn.o",
    "intermediate.dense",
    "output.dense",
    "num_attention_heads",
    "hidden_size",
    "num_attention_heads",
    None,
    None,
    None,
    None,
)
LAYOUTS: dict[str, tuple[str | None, ...]] = {
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "xlm-roberta": _BERT_LIKE,
    "camembert": _BERT_LIKE,
    "electra": _BERT_LIKE,
    "distilbert": _DISTILBERT,
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "mpnet": _MPNET,
}
SHARED_BIAS = {"mpnet": "position_bias"}
"""Families whose encoder computes one relative position bias (one channel per dense head) and passes it to every
layer's attention: the attention's forward argument that carries it. The structure then lists, under
``position_bias_heads``, the dense head of each kept head, whose bias channel the layer receives."""
BIAS_HEADS_KEY = "position_bias_heads"


def _get(module: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        module = getattr(module, part)
    return module


def _set(module: Any, dotted: str, new: nn.Module) -> None:
    parent, _, leaf = dotted.rpartition(".")
    setattr(_get(module, parent) if parent else module, leaf, new)


def _resized(linear: nn.Linear, in_features: int, out_features: int) -> nn.Linear:
    """An uninitialised Linear of the new shape, like ``linear`` otherwise (its weights are loaded next)."""
    with warnings.catch_warnings():  # zero-sized layers (every head or neuron pruned) are valid
        warnings.simplefilter("ignore", UserWarning)
        return nn.Linear(
            in_features,
            out_features,
            bias=linear.bias is not None,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
        )


class KVExpandedLinear(nn.Linear):
    """A key or value projection holding the kept groups' rows only, whose output repeats, for every kept query
    head, its group's head (``head_groups[j]``: the group of query head ``j``): a layer whose kept groups keep
    different numbers of query heads. Its state dict is a plain linear's (the index is not saved: the structure in
    ``config.json`` rebuilds it)."""

    head_groups: torch.Tensor

    def __init__(self, linear: nn.Linear, head_groups: torch.Tensor, head_size: int):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            super().__init__(
                linear.in_features,
                linear.out_features,
                bias=linear.bias is not None,
                device=linear.weight.device,
                dtype=linear.weight.dtype,
            )
        self.weight, self.bias = linear.weight, linear.bias
        self.head_size = head_size
        # a plain attribute, not a buffer: built on the CPU even when the model is built on the meta device
        self.head_groups = torch.as_tensor(head_groups.tolist(), dtype=torch.long, device="cpu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if self.head_groups.device != out.device:
            self.head_groups = self.head_groups.to(out.device)
        heads = out.view(*out.shape[:-1], -1, self.head_size).index_select(-2, self.head_groups)
        return heads.flatten(-2)


def _no_heads_forward(self: Any, hidden_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, None]:
    """The attention of a layer without heads: an empty context (only the output projection's bias reaches the
    residual); the attention kernel is not called (CUDA's SDPA returns no tensor for zero heads)."""
    context = hidden_states.new_zeros(*hidden_states.shape[:-1], 0)
    return (_get(self, self.fastprune_out)(context) if self.fastprune_out else context), None


def keep_bias_heads(attention: Any, heads: Any, argument: str) -> None:
    """Make a layer's ``attention`` receive only the channels ``heads`` (the dense head of each kept head) of the
    position bias shared by all layers, passed to it as the forward argument ``argument``. The heads are kept as
    plain integers (no tensor: ``from_pretrained`` builds the model on the meta device), as a tensor on the bias's
    device once it runs."""
    position = list(inspect.signature(type(attention).forward).parameters).index(argument) - 1  # less self
    if not hasattr(attention, "fastprune_bias_heads"):
        attention.register_forward_pre_hook(_select_bias_heads, with_kwargs=True)
    attention.fastprune_bias_heads = tuple(int(h) for h in heads)
    attention.fastprune_bias_at = (argument, position)
    attention.fastprune_bias_index = None


def bias_heads(attention: Any) -> torch.Tensor | None:
    """The dense head of each of the attention's heads, if it was sliced by :func:`keep_bias_heads`."""
    heads = getattr(attention, "fastprune_bias_heads", None)
    return None if heads is None else torch.tensor(heads, dtype=torch.long, device="cpu")


def _select_bias_heads(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Forward pre-hook: the shared position bias's channels of the attention's kept heads."""
    name, position = module.fastprune_bias_at
    bias = kwargs.get(name, args[position] if len(args) > position else None)
    if bias is None or module.fastprune_bias_heads == tuple(range(bias.shape[1])):  # a layer keeping every head
        return args, kwargs
    index = module.fastprune_bias_index
    if index is None or index.device != bias.device:
        index = module.fastprune_bias_index = torch.tensor(
            module.fastprune_bias_heads, dtype=torch.long, device=bias.device
        )
    if name in kwargs:
        return args, {**kwargs, name: bias.index_select(1, index)}
    return (*args[:position], bias.index_select(1, index), *args[position + 1 :]), kwargs


def reshape_layers(model: Any, base_model_type: str, structure: dict) -> None:
    """Re-size every layer of ``model`` (a stock model of ``base_model_type``) to ``structure``: the number of
    attention heads and FFN neurons kept in each layer (and, under grouped-query attention, the key/value group of
    each kept query head)."""
    layout = LAYOUTS[base_model_type]
    layers_at, attention_at, query, key, value, attn_out, ffn_in, ffn_out = (str(x) for x in layout[:8])
    heads_attr, hidden_key, heads_key, ffn_gate, group_attr, _, head_size_key = layout[8:]
    config = model.config
    dense_heads = getattr(config, str(heads_key))
    head_size = (getattr(config, head_size_key, None) if head_size_key else None) or (
        getattr(config, str(hidden_key)) // dense_heads
    )
    layers = list(_get(model.base_model, layers_at))
    heads, neurons = structure["num_heads"], structure["intermediate_size"]
    head_groups = structure.get("head_groups") or [None] * len(layers)
    if not len(layers) == len(heads) == len(neurons) == len(head_groups):
        raise ValueError(f"{STRUCTURE_KEY} describes {len(heads)}/{len(neurons)} layers, the model has {len(layers)}")
    for layer, n_heads, n_neurons, groups_of in zip(layers, heads, neurons, head_groups, strict=True):
        width = int(n_heads) * head_size
        _set(layer, query, _resized(_get(layer, query), _get(layer, query).in_features, width))
        attention = _get(layer, attention_at)
        if groups_of is None:  # plain attention: a key and value head per query head
            for path in (key, value):
                _set(layer, path, _resized(_get(layer, path), _get(layer, path).in_features, width))
        else:
            _reshape_groups(layer, (key, value), [int(g) for g in groups_of], head_size)
            setattr(attention, str(group_attr), _per_group(groups_of))
        old = _get(layer, attn_out)
        _set(layer, attn_out, _resized(old, width, old.out_features))
        for path in (ffn_gate, ffn_in) if ffn_gate else (ffn_in,):
            old = _get(layer, path)
            _set(layer, path, _resized(old, old.in_features, int(n_neurons)))
        old = _get(layer, ffn_out)
        _set(layer, ffn_out, _resized(old, int(n_neurons), old.out_features))
        if heads_attr:
            setattr(attention, heads_attr, int(n_heads))
        if hasattr(attention, "all_head_size"):
            attention.all_head_size = width
        if n_heads == 0:
            owns_out = attn_out.startswith(attention_at + ".")  # DistilBERT's attention applies its projection
            attention.fastprune_out = attn_out[len(attention_at) + 1 :] if owns_out else None
            attention.forward = types.MethodType(_no_heads_forward, attention)
    if base_model_type in SHARED_BIAS:
        for layer, kept in zip(layers, structure.get(BIAS_HEADS_KEY) or [range(h) for h in heads], strict=True):
            keep_bias_heads(_get(layer, attention_at), kept, SHARED_BIAS[base_model_type])


def _in_order(head_groups: list[int]) -> bool:
    """Whether query head ``j`` uses group ``j // (heads / groups)``: the family's own grouped attention."""
    groups = len(set(head_groups))
    heads = len(head_groups)
    return groups > 0 and heads % groups == 0 and head_groups == [j // (heads // groups) for j in range(heads)]


def _per_group(head_groups: list[int]) -> int:
    """The attention's query heads per key/value head: 1 when the projections expand the groups (uneven)."""
    return len(head_groups) // len(set(head_groups)) if _in_order(head_groups) else 1


def _reshape_groups(layer: Any, paths: tuple[str, str], head_groups: list[int], size: int) -> None:
    """Key and value projections of the kept groups; expanded to one head per query head when uneven."""
    groups = len(set(head_groups))
    for path in paths:
        old = _get(layer, path)
        new = _resized(old, old.in_features, groups * size)
        even = not head_groups or _in_order(head_groups)
        _set(layer, path, new if even else KVExpandedLinear(new, torch.tensor(head_groups, device="cpu"), size))


class _Pruned:
    """Re-sizes the stock model's layers to the config's structure as soon as the stock layers exist."""

    base_model_type = ""

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        reshape_layers(self, self.base_model_type, getattr(config, STRUCTURE_KEY))


# ----- configurations: the stock ones under a model type of their own ------------------------------------------------
class FastpruneBertConfig(BertConfig):
    model_type = MODEL_TYPE_PREFIX + "bert"


class FastpruneRobertaConfig(RobertaConfig):
    model_type = MODEL_TYPE_PREFIX + "roberta"


class FastpruneXLMRobertaConfig(XLMRobertaConfig):
    model_type = MODEL_TYPE_PREFIX + "xlm-roberta"


class FastpruneCamembertConfig(CamembertConfig):
    model_type = MODEL_TYPE_PREFIX + "camembert"


class FastpruneElectraConfig(ElectraConfig):
    model_type = MODEL_TYPE_PREFIX + "electra"


class FastpruneDistilBertConfig(DistilBertConfig):
    model_type = MODEL_TYPE_PREFIX + "distilbert"


class FastpruneLlamaConfig(LlamaConfig):
    model_type = MODEL_TYPE_PREFIX + "llama"


class FastpruneMistralConfig(MistralConfig):
    model_type = MODEL_TYPE_PREFIX + "mistral"


class FastpruneQwen2Config(Qwen2Config):
    model_type = MODEL_TYPE_PREFIX + "qwen2"


class FastpruneQwen3Config(Qwen3Config):
    model_type = MODEL_TYPE_PREFIX + "qwen3"


class FastpruneMPNetConfig(MPNetConfig):
    model_type = MODEL_TYPE_PREFIX + "mpnet"


# ----- models -----------------------------------------------------------------------------------------------------
class FastpruneBertForSequenceClassification(_Pruned, BertForSequenceClassification):
    config_class, base_model_type = FastpruneBertConfig, "bert"


class FastpruneBertForQuestionAnswering(_Pruned, BertForQuestionAnswering):
    config_class, base_model_type = FastpruneBertConfig, "bert"


class FastpruneRobertaForSequenceClassification(_Pruned, RobertaForSequenceClassification):
    config_class, base_model_type = FastpruneRobertaConfig, "roberta"


class FastpruneRobertaForQuestionAnswering(_Pruned, RobertaForQuestionAnswering):
    config_class, base_model_type = FastpruneRobertaConfig, "roberta"


class FastpruneXLMRobertaForSequenceClassification(_Pruned, XLMRobertaForSequenceClassification):
    config_class, base_model_type = FastpruneXLMRobertaConfig, "xlm-roberta"


class FastpruneXLMRobertaForQuestionAnswering(_Pruned, XLMRobertaForQuestionAnswering):
    config_class, base_model_type = FastpruneXLMRobertaConfig, "xlm-roberta"


class FastpruneCamembertForSequenceClassification(_Pruned, CamembertForSequenceClassification):
    config_class, base_model_type = FastpruneCamembertConfig, "camembert"


class FastpruneCamembertForQuestionAnswering(_Pruned, CamembertForQuestionAnswering):
    config_class, base_model_type = FastpruneCamembertConfig, "camembert"


class FastpruneElectraForSequenceClassification(_Pruned, ElectraForSequenceClassification):
    config_class, base_model_type = FastpruneElectraConfig, "electra"


class FastpruneElectraForQuestionAnswering(_Pruned, ElectraForQuestionAnswering):
    config_class, base_model_type = FastpruneElectraConfig, "electra"


class FastpruneDistilBertForSequenceClassification(_Pruned, DistilBertForSequenceClassification):
    config_class, base_model_type = FastpruneDistilBertConfig, "distilbert"


class FastpruneDistilBertForQuestionAnswering(_Pruned, DistilBertForQuestionAnswering):
    config_class, base_model_type = FastpruneDistilBertConfig, "distilbert"


class FastpruneLlamaForCausalLM(_Pruned, LlamaForCausalLM):
    config_class, base_model_type = FastpruneLlamaConfig, "llama"


class FastpruneMistralForCausalLM(_Pruned, MistralForCausalLM):
    config_class, base_model_type = FastpruneMistralConfig, "mistral"


class FastpruneQwen2ForCausalLM(_Pruned, Qwen2ForCausalLM):
    config_class, base_model_type = FastpruneQwen2Config, "qwen2"


class FastpruneQwen3ForCausalLM(_Pruned, Qwen3ForCausalLM):
    config_class, base_model_type = FastpruneQwen3Config, "qwen3"


class FastpruneMPNetForSequenceClassification(_Pruned, MPNetForSequenceClassification):
    config_class, base_model_type = FastpruneMPNetConfig, "mpnet"


class FastpruneMPNetForQuestionAnswering(_Pruned, MPNetForQuestionAnswering):
    config_class, base_model_type = FastpruneMPNetConfig, "mpnet"


# ----- bare encoders (sentence embeddings: sentence-transformers loads them with AutoModel) --------------------------
class FastpruneBertModel(_Pruned, BertModel):
    config_class, base_model_type = FastpruneBertConfig, "bert"


class FastpruneRobertaModel(_Pruned, RobertaModel):
    config_class, base_model_type = FastpruneRobertaConfig, "roberta"


class FastpruneXLMRobertaModel(_Pruned, XLMRobertaModel):
    config_class, base_model_type = FastpruneXLMRobertaConfig, "xlm-roberta"


class FastpruneCamembertModel(_Pruned, CamembertModel):
    config_class, base_model_type = FastpruneCamembertConfig, "camembert"


class FastpruneElectraModel(_Pruned, ElectraModel):
    config_class, base_model_type = FastpruneElectraConfig, "electra"


class FastpruneDistilBertModel(_Pruned, DistilBertModel):
    config_class, base_model_type = FastpruneDistilBertConfig, "distilbert"


class FastpruneMPNetModel(_Pruned, MPNetModel):
    config_class, base_model_type = FastpruneMPNetConfig, "mpnet"
