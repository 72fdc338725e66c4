"""Head and neuron masks and applying them with hooks (the MAC cost model is the family's: :mod:`.dims`).

The head mask is over query heads: under grouped-query attention a key/value group goes when all its query heads
are masked, and the slicing removes its key and value rows."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .arch import ArchAdapter, ModelDims, adapter_for


@dataclass
class Masks:
    """Per-layer mask values: ``head`` is [L, H] (query heads), ``neuron`` is [L, F]. 1 keeps a unit unchanged,
    0 removes it, any other value scales it (after mask tuning).

    ``weights`` optionally replaces output-projection parameters (mask tuning's refit mode), keyed
    ``"{layer}.{attn_out|ffn_out}.{weight|bias}"``; they travel with the masks (same file) and are applied by
    :func:`weights_applied` and by the export."""

    head: torch.Tensor
    neuron: torch.Tensor
    weights: dict[str, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def ones(cls, dims: ModelDims, device: torch.device | str = "cpu") -> Masks:
        return cls(
            head=torch.ones(dims.num_layers, dims.num_heads, device=device),
            neuron=torch.ones(dims.num_layers, dims.intermediate_size, device=device),
        )

    @classmethod
    def ones_like(cls, other: Masks) -> Masks:
        return cls(torch.ones_like(other.head), torch.ones_like(other.neuron))

    def clone(self) -> Masks:
        weights = {k: v.detach().clone() for k, v in self.weights.items()}
        return Masks(self.head.detach().clone(), self.neuron.detach().clone(), weights)

    def to(self, device: torch.device | str) -> Masks:
        return Masks(self.head.to(device), self.neuron.to(device), {k: v.to(device) for k, v in self.weights.items()})

    def binary(self) -> Masks:
        """Which units are kept (1.0) or pruned (0.0), whatever their scale."""
        return Masks((self.head != 0).float(), (self.neuron != 0).float())

    def heads_per_layer(self) -> list[int]:
        return (self.head != 0).sum(dim=1).tolist()

    def neurons_per_layer(self) -> list[int]:
        return (self.neuron != 0).sum(dim=1).tolist()

    def equal(self, other: Masks) -> bool:
        return torch.equal(self.head.cpu(), other.head.cpu()) and torch.equal(self.neuron.cpu(), other.neuron.cpu())

    def save(self, path: str | Path) -> None:
        tensors = {"head": self.head, "neuron": self.neuron, **{_WEIGHT_PREFIX + k: v for k, v in self.weights.items()}}
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))

    @classmethod
    def load(cls, path: str | Path) -> Masks:
        tensors = load_file(str(path))
        weights = {k.removeprefix(_WEIGHT_PREFIX): v for k, v in tensors.items() if k.startswith(_WEIGHT_PREFIX)}
        return cls(tensors["head"], tensors["neuron"], weights)


_WEIGHT_PREFIX = "weights."


def weight_key(layer: int, linear: str, param: str) -> str:
    return f"{layer}.{linear}.{param}"


def weight_targets(model: nn.Module, weights: dict[str, torch.Tensor], adapter: ArchAdapter | None = None):
    """(parameter of ``model``, replacement value) for every entry of ``weights``."""
    adapter = adapter or adapter_for(model)
    layers = adapter.layer_modules(model)
    for key, value in weights.items():
        layer, linear, param = key.split(".")
        yield getattr(adapter.linear(layers[int(layer)], linear), param), value


@contextlib.contextmanager
def weights_applied(
    model: nn.Module, weights: dict[str, torch.Tensor], adapter: ArchAdapter | None = None
) -> Iterator[None]:
    """Swap in the refit output-projection parameters of ``weights`` (see :class:`Masks`), restored after."""
    saved = []
    try:
        with torch.no_grad():
            for param, value in weight_targets(model, weights, adapter):
                saved.append((param, param.detach().clone()))
                param.copy_(value.to(param))
        yield
    finally:
        with torch.no_grad():
            for param, old in saved:
                param.copy_(old)


@contextlib.contextmanager
def pruning_applied(model: nn.Module, masks: Masks | None, device: torch.device | str) -> Iterator[None]:
    """The model as ``masks`` prune it: their head and neuron values and their refit weights (``None``: as is)."""
    if masks is None:
        yield
        return
    with masks_applied(model, masks.head.to(device), masks.neuron.to(device)), weights_applied(model, masks.weights):
        yield


def _scale_hook(values: torch.Tensor, repeat: int):
    """Scale the input's units by ``values``: [U] for every example, or [B, U] per example."""

    def hook(_module, args):
        x = args[0]
        scale = values.to(x.dtype)
        if repeat > 1:
            scale = scale.repeat_interleave(repeat, dim=-1)
        if scale.dim() == 2 and x.dim() == 3:
            scale = scale[:, None, :]
        return (x * scale,) + tuple(args[1:])

    return hook


def _layer_hooks(
    adapter: ArchAdapter,
    layer: nn.Module,
    head_size: int,
    head: torch.Tensor | None,
    neuron: torch.Tensor | None,
) -> list:
    handles = []
    if head is not None:
        handles.append(adapter.linear(layer, "attn_out").register_forward_pre_hook(_scale_hook(head, head_size)))
    if neuron is not None:
        handles.append(adapter.linear(layer, "ffn_out").register_forward_pre_hook(_scale_hook(neuron, 1)))
    return handles


@contextlib.contextmanager
def masks_applied(
    model: nn.Module,
    head: torch.Tensor | None,
    neuron: torch.Tensor | None,
    adapter: ArchAdapter | None = None,
) -> Iterator[None]:
    """Multiply every head's context vector and every neuron's activation by its mask value,
    through forward pre-hooks on the attention output and FFN output projections. Masks are [L, H]
    and [L, F], or [B, L, H] and [B, L, F] for one mask per example of a batch of B. They may
    require grad (the Fisher pass differentiates through them). ``None`` leaves that kind of
    unit unmasked."""
    adapter = adapter or adapter_for(model)
    head_size = adapter.dims(model.config).head_size
    handles = []
    try:
        for i, layer in enumerate(adapter.layer_modules(model)):
            handles += _layer_hooks(
                adapter,
                layer,
                head_size,
                None if head is None else head[..., i, :],
                None if neuron is None else neuron[..., i, :],
            )
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def layer_masks_applied(
    adapter: ArchAdapter,
    layer: nn.Module,
    head_size: int,
    head: torch.Tensor | None,
    neuron: torch.Tensor | None,
) -> Iterator[None]:
    """``masks_applied`` for one layer module: ``head`` is [H], ``neuron`` is [F]."""
    handles = _layer_hooks(adapter, layer, head_size, head, neuron)
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


# ----- the paper's MAC cost model ---------------------------------------------------------------
