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
    model: nn.Module, masks: Masks, batches: list[dict], device: torch.device | str = "cpu", task: Task | None = None
) -> float:
    """The task loss (against the data's labels) of the masked model, averaged over examples of the held-out
    batches. ``task`` computes the loss (by default the built-in task that fits the model's head)."""
    task = task or task_for_model(model)
    model.eval()
    total, count = 0.0, 0
    with pruning_applied(model, masks, device):
        for batch in batches:
            n = task.examples(batch)
            total += float(task.fisher_loss(model, to_device(batch, device))) * n
            count += n
    return total / max(count, 1)


class StageValidator:
    """Chooses between a stage's input and output masks by held-out loss, and records the decisions."""

    def __init__(
        self, model: nn.Module, batches: list[dict], device: torch.device | str = "cpu", task: Task | None = None
    ):
        self.model, self.batches, self.device, self.task = model, batches, device, task
        self.report: dict[str, dict] = {}
        self._last: tuple[Masks, float] | None = None  # the last chosen masks and their loss

    def loss(self, masks: Masks) -> float:
        if self._last is not None and self._last[0] is masks:
            return self._last[1]
        return heldout_loss(self.model, masks, self.batches, self.device, self.task)

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
