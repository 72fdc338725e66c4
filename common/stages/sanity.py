"""Loud warnings for runs that finish but are probably not what the user meant: an unpruned model at chance level
on the dev set (the wrong model or task), a budget that removes every attention head, a sample larger than the
data. Each is logged (``logging.warning``) and listed under ``warnings`` in the stage's results and the summary."""

from __future__ import annotations

import logging
from collections import Counter

from ..tasks.spec import Task

log = logging.getLogger("fastprune")

MIN_SANE_CONSTRAINT = 0.1
"""Below this fraction of the FLOPs (or latency) kept, pruned models are rarely better than chance."""


def warn(message: str) -> str:
    log.warning("%s", message)
    return message


def chance_warning(task: Task, labels: list, metrics: dict[str, float]) -> str | None:
    """A warning when the unpruned model scores at or below chance on the dev set: classification accuracy at or
    below the majority-class rate (and 1/num_labels); any other metric no better than the task's chance level
    (:attr:`Task.chance`: a correlation of 0, a SQuAD F1 of a few points), in the task's direction."""
    score = metrics.get(task.metric)
    if score is None:
        return None
    num_labels = getattr(task, "num_labels", 0)
    if labels and num_labels > 1 and task.metric == "accuracy":
        counts = Counter(labels)
        majority = max(counts.values()) / len(labels)
        chance, value, name = 100.0 * max(majority, 1.0 / num_labels), score, "accuracy"
        at_chance = value <= chance
    else:
        chance, value, name = metrics.get("chance", task.chance), score, task.metric  # a metric may state it
        at_chance = not task.better_than_chance(value, chance)
    if not at_chance:
        return None
    return warn(
        f"the unpruned model scores {name} {value:.2f} on the dev set, at or below chance ({chance:.2f}) for "
        f"task {task.name}: it is probably the wrong model for this task, or the wrong task for this model"
    )


def budget_warnings(
    constraint: float,
    metric: str,
    heads_per_layer: list[int],
    neurons_per_layer: list[int],
    total_heads: int,
    total_neurons: int,
) -> list[str]:
    """Warnings for a budget that leaves a model at chance level: every attention head removed, or a constraint
    below :data:`MIN_SANE_CONSTRAINT`."""
    found = []
    kept = f"{sum(heads_per_layer)} of {total_heads} heads and {sum(neurons_per_layer)} of {total_neurons} FFN neurons"
    if sum(heads_per_layer) == 0:
        found.append(
            warn(
                f"the {metric} constraint {constraint:g} removed every attention head (kept {kept}): the "
                f"pruned model cannot relate tokens to each other and will likely score at chance level; "
                f"raise the constraint"
            )
        )
    elif constraint < MIN_SANE_CONSTRAINT:
        found.append(
            warn(
                f"the {metric} constraint {constraint:g} is below {MIN_SANE_CONSTRAINT:g} (kept {kept}): "
                f"models pruned this far are rarely better than chance"
            )
        )
    return found


def sampling_warning(num_samples: int, available: int, replace: bool, unit: str = "training examples") -> str | None:
    """A warning when the sample asks for more examples than the data holds (``unit``: what it counts), saying what
    was done."""
    if num_samples <= available:
        return None
    if replace:
        return warn(
            f"num_samples {num_samples} is larger than the {available} {unit}: drew {num_samples} "
            f"with replacement, each example {num_samples / available:.1f}x on average (oversampled)"
        )
    return warn(
        f"num_samples {num_samples} is larger than the {available} {unit}: the sample was capped "
        f"at {available} (drawn without replacement)"
    )
