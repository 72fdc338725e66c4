"""Stage validation: keep a stage's result only where it lowers the loss on held-out sample data.

The held-out part is split from the pruning sample (never the dev set), so choosing between stage
results cannot overfit the reported metric.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..model.masks import Masks, pruning_applied
from ..tasks.spec import Task, task_for_model
from .fisher import to_device

log = logging.getLogger(__name__)


@torch.inference_mode()
def heldout_loss(
    model: nn.Module,
    masks: Masks,
    batches: list[dict],
    device: torch.device | str = "cpu",
    task: Task | None = None,
    references: list | None = None,
) -> float:
    """The task's validation loss of the masked model (:meth:`~fastprune.common.tasks.base.Task.validation_loss`:
    against the data's labels, or against the dense model's ``references`` from :func:`dense_references`), averaged
    over examples of the held-out batches. ``task``: by default the built-in task that fits the model's head."""
    task = task or task_for_model(model)
    references = references or [None] * len(batches)
    model.eval()
    total, count = 0.0, 0
    with pruning_applied(model, masks, device):
        for batch, reference in zip(batches, references, strict=True):
            n = task.examples(batch)
            total += float(task.validation_loss(model, to_device(batch, device), reference)) * n
            count += n
    return total / max(count, 1)


@torch.inference_mode()
def dense_references(model: nn.Module, batches: list[dict], device: torch.device | str, task: Task) -> list:
    """What the unmasked model gives each held-out batch for the task's validation loss."""
    model.eval()
    return [task.validation_reference(model, to_device(batch, device)) for batch in batches]


class StageValidator:
    """Chooses between a stage's input and output masks by held-out loss, and records the decisions."""

    def __init__(
        self, model: nn.Module, batches: list[dict], device: torch.device | str = "cpu", task: Task | None = None
    ):
        self.model, self.batches, self.device = model, batches, device
        self.task = task or task_for_model(model)
        self.references = dense_references(model, batches, device, self.task)
        self.report: dict[str, dict] = {}
        self._last: tuple[Masks, float] | None = None  # the last chosen masks and their loss

    def loss(self, masks: Masks) -> float:
        if self._last is not None and self._last[0] is masks:
            return self._last[1]
        return heldout_loss(self.model, masks, self.batches, self.device, self.task, self.references)

    def choose(self, stage: str, before: Masks, after: Masks) -> Masks:
        """``after`` when its held-out loss is no higher than ``before``'s, else ``before``."""
        loss_before, loss_after = self.loss(before), self.loss(after)
        accepted = loss_after <= loss_before
        self.report[stage] = {"loss_before": loss_before, "loss_after": loss_after, "accepted": accepted}
        self._last = (after, loss_after) if accepted else (before, loss_before)
        log.info(
            "stage %s: held-out loss %.4f -> %.4f (%s)",
            stage,
            loss_before,
            loss_after,
            "kept" if accepted else "rejected",
        )
        return self._last[0]
