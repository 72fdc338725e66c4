"""Export: fold the tuned scales into the weights, slice away pruned units, save and reload.

The saved folder is a normal Hugging Face folder (``config.json``, ``model.safetensors``, the
tokenizer) whose ``config.json`` also holds the per-layer structure under ``fastprune_structure``.
:func:`load_pruned` rebuilds that structure before loading the weights, so the result is a plain
transformers model: no fastprune hooks at run time.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import nn
from transformers import AutoTokenizer

from ..errors import ConfigError, IntegrityError
from ..folders import staged_folder
from ..tasks.st_folder import POOLING_KEY, Pooling, write_st_files
from .arch import NEURON_MULTIPLE, STRUCTURE_KEY, ArchAdapter, adapter_for, padded_size
from .checkpoint import check_pruned_config, check_shapes, model_class, read_header
from .masks import Masks, weight_targets
from .portable import make_portable, read_config

WEIGHTS = "model.safetensors"


def export_pruned(
    model: nn.Module,
    masks: Masks,
    neuron_multiple: int = NEURON_MULTIPLE,
    adapter: ArchAdapter | None = None,
    even_groups: bool = True,
) -> nn.Module:
    """A physically smaller copy of ``model``: each head's scale multiplies its columns of the
    attention output projection, each neuron's its column of the FFN output projection; pruned
    units are sliced away (layers may keep zero heads or zero neurons).

    Each layer's FFN is padded to a multiple of ``neuron_multiple`` neurons (1: no padding) with pruned neurons
    whose weights are zeroed, so the model computes exactly what the masked one does; at most
    ``neuron_multiple - 1`` neurons per layer, a fraction of a percent of the FLOPs. ``adapter``: the model's
    family (default: the registered one for its model type).

    Under grouped-query attention a layer whose kept groups keep different numbers of query heads is padded
    (``even_groups``) with pruned heads of the short groups, whose output-projection columns are zero, until every
    kept group has as many: the family's own grouped attention runs and the key/value cache holds one head per kept
    group (a few query heads computed for nothing). Without it the key/value projections expand the groups
    (:class:`~.slicing.KVExpandedLinear`) and the cache holds one head per query head in such a layer."""
    if neuron_multiple < 1:
        raise ConfigError(f"neuron_multiple must be a positive integer (1: no padding), got {neuron_multiple}")
    adapter = adapter or adapter_for(model)
    dims = adapter.dims(model.config)
    if tuple(masks.head.shape) != (dims.num_layers, dims.num_heads) or tuple(masks.neuron.shape) != (
        dims.num_layers,
        dims.intermediate_size,
    ):
        raise ConfigError(
            f"masks of shape head {tuple(masks.head.shape)}, neuron {tuple(masks.neuron.shape)} do not fit "
            f"the model ({dims.num_layers} layers, {dims.num_heads} heads, {dims.intermediate_size} neurons)"
        )
    pruned = copy.deepcopy(model).eval()
    with torch.no_grad():  # the output projections refit by mask tuning (refit mode)
        for param, value in weight_targets(pruned, masks.weights, adapter):
            param.copy_(value.to(param))
    for i, layer in enumerate(adapter.layer_modules(pruned)):
        head, neuron = masks.head[i].float(), masks.neuron[i].float()
        with torch.no_grad():
            w_o = adapter.linear(layer, "attn_out").weight
            w_o.mul_(head.to(w_o).repeat_interleave(dims.head_size)[None, :])
            w_2 = adapter.linear(layer, "ffn_out").weight
            w_2.mul_(neuron.to(w_2)[None, :])
            keep_neurons = _padded(neuron, neuron_multiple)
            padding = keep_neurons[neuron[keep_neurons] == 0]
            for name in adapter.ffn_inputs:  # padding neurons: zero in, zero out (w_2 masked above)
                ffn_in = adapter.linear(layer, name)
                ffn_in.weight[padding.to(ffn_in.weight.device)] = 0.0
                if ffn_in.bias is not None:
                    ffn_in.bias[padding.to(ffn_in.bias.device)] = 0.0
        even = even_groups and dims.grouped
        keep_heads = _even_groups(head, dims.group_size) if even else head.nonzero().flatten()
        adapter.slice_layer(layer, keep_heads, keep_neurons, dims.head_size)
    setattr(pruned.config, STRUCTURE_KEY, adapter.structure(pruned))
    return pruned


def _even_groups(mask: torch.Tensor, group_size: int) -> torch.Tensor:
    """The indices of the kept query heads of ``mask`` (non-zero), with the first pruned heads of each kept group
    that keeps fewer than the most added, so that every kept group keeps as many."""
    kept = (mask != 0).view(-1, group_size).clone()
    target = int(kept.sum(1).max()) if kept.numel() else 0
    for group in kept:
        if group.any():
            group[(~group).nonzero().flatten()[: target - int(group.sum())]] = True
    return kept.flatten().nonzero().flatten()


def _padded(mask: torch.Tensor, multiple: int) -> torch.Tensor:
    """The indices of the kept units of ``mask`` (non-zero), with the first pruned ones added up to a multiple of
    ``multiple`` (or to all units)."""
    kept = mask != 0
    count = int(kept.sum())
    target = padded_size(count, mask.numel(), multiple)
    padding = (~kept).nonzero().flatten()[: target - count]
    kept[padding] = True
    return kept.nonzero().flatten()


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_pruned(model: nn.Module, path: str | Path, tokenizer=None, metadata: dict | None = None) -> Path:
    """Write the model (safetensors + config with its structure) and tokenizer to ``path``,
    atomically: the folder appears complete or not at all. The folder loads without fastprune too (see
    :mod:`.portable`): with a stock config where one fits, else with its own modeling code."""
    path = Path(path)
    with staged_folder(path) as tmp:
        config: Any = model.config
        config.architectures = [type(model).__name__]
        if not hasattr(config, STRUCTURE_KEY):
            setattr(config, STRUCTURE_KEY, adapter_for(model).structure(model))
        config.save_pretrained(tmp)
        make_portable(tmp, adapter_for(model), adapter_for(model).dims(config).num_heads)
        save_model(model, str(tmp / WEIGHTS))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        pooling = getattr(config, POOLING_KEY, None)
        if pooling:  # an embedding model: a sentence-transformers folder
            hidden = adapter_for(model).dims(config).hidden_size
            write_st_files(tmp, Pooling.model_validate({**pooling, "transformer_path": ""}), hidden)
        if metadata:
            (tmp / "fastprune.json").write_text(json.dumps(metadata, indent=2, default=str))
    return path


def load_pruned(path: str | Path, device: torch.device | str = "cpu", with_tokenizer: bool = True):
    """Rebuild a model saved by :func:`save_pruned` (or any dense model folder saved the same way), as the stock
    transformers class (a portable folder's own code is not run). Returns ``(model, tokenizer)``; the tokenizer is
    None when the folder has none.

    Nothing is trusted before it is checked: the weights' header (a complete safetensors file), the architecture
    (a sequence classifier or question-answering model of a supported family, never any other class), and the
    per-layer structure and every tensor's shape against the weights, before any memory is allocated."""
    path = Path(path)
    if not (path / "config.json").is_file() or not (path / WEIGHTS).is_file():
        raise IntegrityError(f"{path} is not a saved model: it needs config.json and {WEIGHTS}")
    tensors = read_header(path / WEIGHTS)
    config = read_config(path)
    cls = model_class(config, str(path))
    check_pruned_config(config, tensors, str(path))
    structure = getattr(config, STRUCTURE_KEY, None)
    with torch.device("meta"):  # every shape checked against the file before a byte is allocated
        skeleton = cls(config)
    if structure:
        try:
            adapter_for(skeleton).reshape_to(skeleton, structure)
        except (ValueError, IndexError, RuntimeError, TypeError) as e:
            raise IntegrityError(f"{path}/config.json: its {STRUCTURE_KEY} does not fit the model: {e}") from None
    check_shapes(skeleton, tensors, str(path))
    model = _build(cls, config, structure)
    try:
        load_model(model, str(path / WEIGHTS), strict=True, device=str(device))
    except Exception as e:
        raise IntegrityError(f"{path}/{WEIGHTS} does not match its config: {e}") from e
    model.to(device).eval()
    tokenizer = None
    if with_tokenizer and any((path / f).exists() for f in ("tokenizer.json", "vocab.txt", "tokenizer_config.json")):
        tokenizer = AutoTokenizer.from_pretrained(path, config=config)  # a portable folder's code not run
    return model, tokenizer


def _build(cls, config, structure: dict | None) -> nn.Module:
    """The model with the checked structure; a pruned one is built with its largest layer's FFN, not the dense
    config's (which was never checked against the weights), and the config keeps its dense value."""
    if not structure:
        return cls(config)
    adapter = adapter_for(config)
    dense = getattr(config, adapter.cfg_intermediate)
    setattr(config, adapter.cfg_intermediate, max(structure["intermediate_size"], default=0))
    try:
        model = cls(config)
    finally:
        setattr(config, adapter.cfg_intermediate, dense)
    adapter.reshape_to(model, structure)
    return model


def cache_summary(dense: nn.Module, pruned: nn.Module) -> dict:
    """A decoder's key/value cache bytes per token of context, dense and pruned (what bounds generation)."""
    adapter = adapter_for(dense)
    if not adapter.causal:
        return {}
    return {
        "kv_cache_bytes_per_token": {"dense": adapter.kv_cache_bytes(dense), "pruned": adapter.kv_cache_bytes(pruned)}
    }
