"""Torch-Pruning (PyPI ``torch-pruning``, a benchmark-only dependency) as the tool a user would pick: its
``BasePruner`` with its first-order Taylor importance (gradients of the next-token loss on the calibration windows),
the same pruning ratio in every layer (its default), no fine-tuning, at the FLOPs asked under fastprune's cost model.

What it prunes: the MLP's intermediate channels (gate/up rows and down_proj columns, which its dependency graph
couples). The residual width is kept (o_proj, down_proj and lm_head are ignored layers), since fastprune's cost model
and the other methods prune heads and neurons only. Its head pruning (``num_heads`` with ``prune_num_heads=True``)
did not finish within 300 s on a 2-layer grouped-query Llama under transformers 5 (torch-pruning 1.6.1), so the
attention is left whole and the MLP pays the whole budget (possible down to FLOPs ~0.37 on SmolLM2).
"""

from __future__ import annotations

import copy
import math

from fastprune.common.model.arch import adapter_for
from fastprune.common.model.cost import dense_macs, neuron_macs, units_macs
from torch import nn


def mlp_neurons_for(model: nn.Module, constraint: float, seq_len: float) -> int:
    """Neurons per layer that, with every head kept, spend at most ``constraint`` of the dense MACs."""
    dims = adapter_for(model).dims(model.config)
    attention = units_macs(dims.num_layers * dims.num_heads, 0, dims, seq_len, dims.num_layers * dims.kv_heads)
    left = constraint * dense_macs(dims, seq_len) - attention
    neurons = math.floor(left / (dims.num_layers * neuron_macs(seq_len, dims)) + 1e-9)
    if neurons < 1:
        raise ValueError(
            f"FLOPs {constraint} is below what the attention alone costs ({attention / dense_macs(dims, seq_len):.3f}"
            " of the dense MACs): Torch-Pruning here prunes MLP channels only"
        )
    return min(neurons, dims.intermediate_size)


def prune_to_flops(model: nn.Module, batches: list[dict], constraint: float, seq_len: float) -> nn.Module:
    """A pruned copy of ``model`` (``model`` is untouched)."""
    import torch_pruning as tp

    adapter = adapter_for(model)
    dims = adapter.dims(model.config)
    keep = mlp_neurons_for(model, constraint, seq_len)
    net = copy.deepcopy(model).train(False)
    ignored: list[nn.Module] = [net.get_output_embeddings()]
    for layer in adapter.layer_modules(net):
        ignored += [adapter.linear(layer, name) for name in ("query", "key", "value", "attn_out", "ffn_out")]
    ratio = (dims.intermediate_size - keep - 0.5) / dims.intermediate_size  # it keeps int(F * (1 - ratio))
    pruner = tp.pruner.BasePruner(
        net,
        example_inputs={"input_ids": batches[0]["input_ids"][:1, :16]},
        importance=tp.importance.TaylorImportance(),
        pruning_ratio=ratio,
        ignored_layers=ignored,
        output_transform=lambda out: out.logits,
    )
    net.zero_grad()
    for batch in batches:
        net(**batch).loss.backward()
    pruner.step()
    net.zero_grad(set_to_none=True)
    for p in net.parameters():
        p.requires_grad_(False)
    kept = [adapter.neurons_in_layer(layer) for layer in adapter.layer_modules(net)]
    if kept != [keep] * dims.num_layers:
        raise RuntimeError(f"Torch-Pruning kept {kept} neurons per layer, {keep} asked")
    return net
