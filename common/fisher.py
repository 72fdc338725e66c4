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
    """Gradients of the loss w.r.t. the mask values, one row per mini-batch: head [B, L, H],
    neuron [B, L, F]. Their squares summed over batches are the diagonal Fisher importance."""

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
) -> MaskGradients:
    """Run the model on every batch with the masks applied (all ones by default) and keep the
    gradient of the task loss w.r.t. the masks per batch. Model parameters are frozen for the pass
    (and restored after), so only activation gradients are computed."""
    adapter = adapter_for(model)
    dims = adapter.dims(model.config)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    base = masks.to(device) if masks is not None else Masks.ones(dims, device)
    head = base.head.detach().clone().requires_grad_(True)
    neuron = base.neuron.detach().clone().requires_grad_(True)

    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    head_grads, neuron_grads = [], []
    try:
        with masks_applied(model, head, neuron, adapter):
            for batch in tqdm(batches, desc="fisher", disable=not progress, leave=False):
                out = model(**to_device(batch, device))
                if out.loss is None:
                    raise ValueError("the model returned no loss: the batches must carry labels for the task")
                grad_h, grad_n = torch.autograd.grad(out.loss, (head, neuron))
                head_grads.append(grad_h.detach().float().cpu())
                neuron_grads.append(grad_n.detach().float().cpu())
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)
    if not head_grads:
        raise ValueError("no batches: the sample is empty")
    return MaskGradients(torch.stack(head_grads), torch.stack(neuron_grads))
