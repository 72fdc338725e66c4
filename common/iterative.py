"""Iterative Fisher search: reach the budget in K steps on a geometric schedule, re-estimating the
mask gradients with the current mask applied between steps (issue: importance changes as units go).

Step k keeps ``C**(k/K)`` of the cost. Units pruned at an earlier step stay pruned: their importance
is set to -inf so that a later, smaller budget never brings them back. The last step's gradients
(measured on the model pruned by step K-1) are returned for the rearrangement stage.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from .arch import adapter_for
from .fisher import MaskGradients, collect_mask_gradients
from .masks import Masks

log = logging.getLogger(__name__)


def schedule(constraint: float, steps: int) -> list[float]:
    """The geometric schedule C^(1/K), C^(2/K), ..., C."""
    return [constraint ** ((k + 1) / steps) for k in range(steps)]


def iterative_search(
    model: nn.Module,
    batches: list[dict],
    constraint: float,
    steps: int,
    search,
    device: torch.device | str = "cpu",
    first_grads: MaskGradients | None = None,
    progress: bool = True,
) -> tuple[Masks, MaskGradients]:
    """``search(grads, constraint)`` is the one-shot search (FLOPs or latency) applied at each step,
    with pruned units excluded. Returns the final masks and the gradients they were chosen with."""
    dims = adapter_for(model).dims(model.config)
    masks = Masks.ones(dims)
    grads = first_grads
    for k, target in enumerate(schedule(constraint, steps)):
        if grads is None or k > 0:
            grads = collect_mask_gradients(model, batches, masks=masks, device=device, progress=progress)
        chosen = search(_Excluded(grads, masks), target)
        masks = Masks(chosen.head * masks.head, chosen.neuron * masks.neuron)
        log.info("iterative search step %d/%d: constraint %.3f, %d heads kept", k + 1, steps, target,
                 int(masks.head.sum()))  # fmt: skip
    return masks, grads


class _Excluded(MaskGradients):
    """Gradients whose importance is -inf for pruned units."""

    def __init__(self, grads: MaskGradients, masks: Masks):
        super().__init__(grads.head, grads.neuron)
        self._masks = masks

    def head_importance(self) -> torch.Tensor:
        return super().head_importance().masked_fill(self._masks.head == 0, -torch.inf)

    def neuron_importance(self) -> torch.Tensor:
        return super().neuron_importance().masked_fill(self._masks.neuron == 0, -torch.inf)
