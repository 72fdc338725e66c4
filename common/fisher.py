"""The sample pass: per-mini-batch gradients of the task loss w.r.t. every head and neuron mask."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from .arch import adapter_for
from .masks import Masks, masks_applied

log = logging.getLogger(__name__)


@dataclass
class MaskGradients:
    """Gradients of the loss w.r.t. the mask values, one row per example (or per mini-batch):
    head [N, L, H], neuron [N, L, F]. Their squares summed over rows are the diagonal Fisher importance."""

    head: torch.Tensor
    neuron: torch.Tensor

    def head_importance(self) -> torch.Tensor:
        return self.head.double().pow(2).sum(0)

    def neuron_importance(self) -> torch.Tensor:
        return self.neuron.double().pow(2).sum(0)

    def save(self, path: str | Path) -> None:
        save_file({"head": self.head.contiguous(), "neuron": self.neuron.contiguous()}, str(path))

    @classmethod
    def load(cls, path: str | Path) -> MaskGradients:
        t = load_file(str(path))
        return cls(t["head"], t["neuron"])


def to_device(batch: dict, device: torch.device | str) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def collect_mask_gradients(
    model: nn.Module,
    batches: Iterable[dict],
    masks: Masks | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    per_example: bool = True,
) -> MaskGradients:
    """Run the model on every batch with the masks applied (all ones by default) and keep the
    gradient of the task loss w.r.t. the masks.

    ``per_example`` (default): one row per example, the gradient of that example's loss, which is the
    paper's Fisher definition and does not depend on how examples are batched; it costs the same one
    backward pass per batch (each example gets its own copy of the masks). Otherwise one row per
    mini-batch, the gradient of the batch's mean loss, as the reference code does.

    Model parameters are frozen for the pass (and restored after), so only activation gradients
    are computed."""
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
    try:
        for batch in tqdm(batches, desc="fisher", disable=not progress, leave=False):
            batch = to_device(batch, device)
            size = len(batch["input_ids"])
            shape = (size,) if per_example else ()
            head = base.head.expand(*shape, *base.head.shape).clone().requires_grad_(True)
            neuron = base.neuron.expand(*shape, *base.neuron.shape).clone().requires_grad_(True)
            with masks_applied(model, head, neuron, adapter):
                out = model(**batch)
            if out.loss is None:
                raise ValueError("the model returned no loss: the batches must carry labels for the task")
            grad_h, grad_n = torch.autograd.grad(out.loss, (head, neuron))
            scale = size if per_example else 1  # the loss is a batch mean: undo it per example
            head_grads.append((grad_h * scale).reshape(-1, *base.head.shape).detach().float().cpu())
            neuron_grads.append((grad_n * scale).reshape(-1, *base.neuron.shape).detach().float().cpu())
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)
    if not head_grads:
        raise ValueError("no batches: the sample is empty")
    return MaskGradients(torch.cat(head_grads), torch.cat(neuron_grads))
