"""Iterative Fisher: reach the budget in K steps on a geometric schedule, re-estimating the mask gradients
with the current mask applied between steps (importance changes as units go).

Step k keeps ``C**(k/K)`` of the cost. :func:`iterative_fisher` runs steps 1..K-1 and returns the gradients
measured on the model pruned by step K-1, with that mask as their ``available`` units: the ordinary one-shot
search at ``C`` on them is step K, and no later stage (search, rearrangement, the tuning teacher) brings back a
unit an earlier step pruned. With K = 1 it is the one-shot Fisher pass.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from ..model.masks import Masks
from ..tasks.spec import Task
from .fisher import LabelSource, MaskGradients, collect_mask_gradients

log = logging.getLogger(__name__)

Search = Callable[[MaskGradients, float], Masks]


def schedule(constraint: float, steps: int) -> list[float]:
    """The geometric schedule C^(1/K), C^(2/K), ..., C."""
    return [constraint ** ((k + 1) / steps) for k in range(steps)]


def iterative_fisher(
    model: nn.Module,
    batches: list[dict],
    constraint: float,
    steps: int,
    search: Search,
    device: torch.device | str = "cpu",
    progress: bool = True,
    labels: LabelSource = "data",
    seed: int = 0,
    task: Task | None = None,
    max_rows: int = 0,
    per_token: bool = False,
) -> MaskGradients:
    """``search(grads, constraint)`` is the one-shot search (it must respect ``grads.available``); ``task`` computes
    the loss, ``max_rows`` bounds the gradient rows kept and ``per_token`` gives a row per token (see
    :func:`~fastprune.common.method.fisher.collect_mask_gradients`)."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    collect = partial(
        collect_mask_gradients,
        model,
        batches,
        device=device,
        progress=progress,
        labels=labels,
        task=task,
        max_rows=max_rows,
        per_token=per_token,
    )
    grads = collect(seed=seed)
    for k, target in enumerate(schedule(constraint, steps)[:-1]):
        masks = search(grads, target)
        if grads.available is not None:
            masks = Masks(masks.head * grads.available.head, masks.neuron * grads.available.neuron)
        log.info(
            "iterative Fisher step %d/%d: constraint %.3f, %d heads and %d neurons kept",
            k + 1,
            steps,
            target,
            int(masks.head.sum()),
            int(masks.neuron.sum()),
        )
        grads = collect(masks=masks, seed=seed + k + 1)
    return grads
