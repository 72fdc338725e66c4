"""The sample pass: per-example gradients of the task loss w.r.t. every head and neuron mask.

The loss is the task's (:meth:`~fastprune.common.tasks.base.Task.fisher_loss`): against the sample's labels (the
empirical Fisher, as the paper) or, with ``labels="model"``, against labels drawn from the model's own predictive
distribution, y ~ p(y|x) (the true Fisher; unlabeled data works): a class for classification, start and end
positions for extractive QA, and y ~ N(prediction, 1) for regression."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from ..model.arch import adapter_for
from ..model.masks import Masks, masks_applied
from ..tasks.spec import LabelSource, Task, task_for_model

log = logging.getLogger(__name__)

__all__ = ["LabelSource", "MaskGradients", "collect_mask_gradients", "to_device"]


@dataclass
class MaskGradients:
    """Gradients of the loss w.r.t. the mask values, one row per example (or per mini-batch):
    head [N, L, H], neuron [N, L, F]. Their squares summed over rows are the diagonal Fisher importance.

    ``available`` (binary masks) marks the units still there when the gradients were measured (iterative
    Fisher); the others are already pruned: their importance is -inf, so no search brings them back."""

    head: torch.Tensor
    neuron: torch.Tensor
    available: Masks | None = None

    def head_importance(self) -> torch.Tensor:
        return self._importance(self.head, None if self.available is None else self.available.head)

    def neuron_importance(self) -> torch.Tensor:
        return self._importance(self.neuron, None if self.available is None else self.available.neuron)

    @staticmethod
    def _importance(rows: torch.Tensor, available: torch.Tensor | None) -> torch.Tensor:
        importance = rows.double().pow(2).sum(0)
        return importance if available is None else importance.masked_fill(available == 0, -torch.inf)

    def save(self, path: str | Path) -> None:
        tensors = {"head": self.head, "neuron": self.neuron}
        if self.available is not None:
            tensors |= {"available_head": self.available.head, "available_neuron": self.available.neuron}
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))

    @classmethod
    def load(cls, path: str | Path) -> MaskGradients:
        t = load_file(str(path))
        available = Masks(t["available_head"], t["available_neuron"]) if "available_head" in t else None
        return cls(t["head"], t["neuron"], available)


def to_device(batch: dict, device: torch.device | str) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def collect_mask_gradients(
    model: nn.Module,
    batches: Iterable[dict],
    masks: Masks | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    per_example: bool = True,
    labels: LabelSource = "data",
    seed: int = 0,
    start: tuple[int, Sequence[torch.Tensor]] | None = None,
    task: Task | None = None,
) -> MaskGradients:
    """Run the model on every batch with the masks applied (all ones by default) and keep the
    gradient of the task loss w.r.t. the masks.

    ``per_example`` (default): one row per example, the gradient of that example's loss, which is the
    paper's Fisher definition and does not depend on how examples are batched; it costs the same one
    backward pass per batch (each example gets its own copy of the masks). Otherwise one row per
    mini-batch, the gradient of the batch's mean loss, as the reference code does.

    ``labels="model"`` draws each example's label from the model's prediction (seeded by ``seed``) instead of
    reading it from the batch, which then needs no labels. Model parameters are frozen for the pass (and
    restored after), so only activation gradients are computed. The result's ``available`` is ``masks``.

    ``start=(k, hidden)`` starts each forward pass at layer ``k``, which receives ``hidden[b]`` for batch ``b``
    (the hidden states a pruned model gives there): the layers below are skipped and their gradients are 0.
    It costs the layers from ``k`` up only.

    ``task`` computes the loss (by default the built-in task that fits the model's head)."""
    task = task or task_for_model(model)
    adapter = adapter_for(model)
    dims = adapter.dims(model.config)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    base = masks.to(device) if masks is not None else Masks.ones(dims, device)

    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    head_grads, neuron_grads = [], []
    generator = torch.Generator().manual_seed(seed)
    entry = _entered_at(adapter.layer_modules(model), *start) if start is not None else contextlib.nullcontext()
    try:
        with entry:
            for batch in tqdm(batches, desc="fisher", disable=not progress, leave=False):
                batch = to_device(batch, device)
                size = task.examples(batch)
                shape = (size,) if per_example else ()
                head = base.head.expand(*shape, *base.head.shape).clone().requires_grad_(True)
                neuron = base.neuron.expand(*shape, *base.neuron.shape).clone().requires_grad_(True)
                with masks_applied(model, head, neuron, adapter):
                    loss = task.fisher_loss(model, batch, labels, generator)
                grad_h, grad_n = torch.autograd.grad(loss, (head, neuron))
                scale = size if per_example else 1  # the loss is a batch mean: undo it per example
                head_grads.append((grad_h * scale).reshape(-1, *base.head.shape).detach().float().cpu())
                neuron_grads.append((grad_n * scale).reshape(-1, *base.neuron.shape).detach().float().cpu())
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)
    if not head_grads:
        raise ValueError("no batches: the sample is empty")
    available = masks.binary().to("cpu") if masks is not None else None  # where the gradients are
    return MaskGradients(torch.cat(head_grads), torch.cat(neuron_grads), available)


@contextlib.contextmanager
def _entered_at(layers: list[nn.Module], k: int, hidden: Sequence[torch.Tensor]) -> Iterator[None]:
    """Forward passes skip ``layers[:k]`` (each returns its input) and ``layers[k]`` receives the next of ``hidden``
    (as a plain tensor: the carried states may come from inference mode)."""
    if not 0 <= k < len(layers):
        raise ValueError(f"start layer {k} is outside the model's {len(layers)} layers")
    states = iter(hidden)

    def enter(_module, args, kwargs):
        state = next(states, None)
        if state is None:
            raise ValueError("start: fewer hidden states than batches")
        return (state.clone(), *args[1:]), kwargs

    for layer in layers[:k]:
        layer.forward = _passthrough
    handle = layers[k].register_forward_pre_hook(enter, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
        for layer in layers[:k]:
            del layer.forward


def _passthrough(hidden: torch.Tensor, *_args, **_kwargs) -> torch.Tensor:
    return hidden
