"""fastprune's own stages on a decoder LLM, through its library (the Task API), for the LLM benchmark: the Fisher pass,
the FLOPs search (global, block or uniform allocation), rearrangement (within key/value groups), least-squares refit
tuning against the dense model,
and the budget re-split during tuning: the ablation's cumulative stages ``search``, ``rearrange``, ``tune`` and
``resplit``.

The search is asked for the largest budget whose masks cost at most the target under the exact cost model (a
key/value group charged while any of its heads is kept): the global search does not charge groups and would overspend;
the block allocation charges them itself (its first answer fits).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from fastprune.common.method.allocate import search_by
from fastprune.common.method.fisher import MaskGradients, collect_mask_gradients
from fastprune.common.method.iterative import iterative_fisher
from fastprune.common.method.rearrange import Shrink, head_block, rearrange_masks
from fastprune.common.method.resplit import BudgetResplit
from fastprune.common.method.tuning import tune_masks
from fastprune.common.model.arch import adapter_for
from fastprune.common.model.cost import flops_ratio
from fastprune.common.model.masks import Masks
from fastprune.common.tasks.base import Task
from torch import nn

STAGES = ("search", "rearrange", "tune", "resplit")


def fisher(
    model: nn.Module, batches: list[dict], task: Task, labels: str = "data", seed: int = 0, per_token: bool = False
) -> MaskGradients:
    """Per-window mask gradients of the next-token loss: the empirical Fisher rows (``labels="data"``) or the true
    Fisher's, against next tokens drawn from the model (``"model"``, seeded); ``per_token``: one row per window and
    position (each position's share of its window's gradient)."""
    return collect_mask_gradients(
        model, batches, device="cpu", progress=False, task=task, labels=labels, seed=seed, per_token=per_token
    )


def iterative(
    model: nn.Module,
    batches: list[dict],
    task: Task,
    labels: str,
    seed: int,
    seq_len: float,
    constraint: float,
    steps: int,
    allocation: str,
) -> MaskGradients:
    """The rows of the iterative Fisher (``--fisher-steps``): re-measured on the model pruned by the search at
    ``constraint ** (k / steps)``, k = 1 .. steps - 1; the search at ``constraint`` on them is the last step."""

    def search(grads: MaskGradients, asked: float) -> Masks:
        return searched(model, grads, seq_len, asked, allocation)

    return iterative_fisher(
        model,
        batches,
        constraint,
        steps,
        search,
        "cpu",
        progress=False,
        labels=labels,
        seed=seed,
        task=task,
    )


def searched(
    model: nn.Module, grads: MaskGradients, seq_len: float, constraint: float, allocation: str = "global"
) -> Masks:
    """The search's masks at the largest asked budget whose exact cost is at most ``constraint`` (bisection)."""
    dims = adapter_for(model).dims(model.config)

    def search(asked: float) -> Masks:
        return search_by(allocation, grads, dims, seq_len, asked)

    masks = search(constraint)
    if flops_ratio(masks, dims, seq_len) <= constraint:
        return masks
    low, high = constraint * 0.5, constraint
    for _ in range(30):
        mid = (low + high) / 2
        if flops_ratio(search(mid), dims, seq_len) <= constraint:
            low = mid
        else:
            high = mid
    return search(low)


def stages(
    model: nn.Module,
    grads: MaskGradients,
    batches: list[dict],
    task: Task,
    seq_len: float,
    constraint: float,
    allocation: str,
    upto: str,
    ridges: Sequence[float | str | None] = (None,),
    mode: str = "refit",
    shrink: Shrink = 0.0,
    input_ridges: Sequence[float | None] = (None,),
) -> Iterator[tuple[str, Masks]]:
    """The masks after each stage up to ``upto`` (one of :data:`STAGES`), as each is done: ``search``,
    ``rearrange`` (of the search's), ``tune`` (refit of the rearranged against the dense model), ``resplit`` (the
    refit with the budget re-split, from the rearranged masks). ``ridges`` and ``mode`` are the tuning's (``None``:
    its default ridge; several: one ``tune@<ridge>`` stage each; ``"reselect"`` re-chooses each block's units before
    the refit; ``input_ridges``: the input projections are refit too, with that ridge, one ``tune@in<ridge>``
    stage each where several; ``None``: not refit); ``shrink``: the
    rearrangement's shrinkage toward the diagonal Fisher (``rearrange_units``)."""
    if upto not in STAGES:
        raise ValueError(f"unknown stage {upto!r}; valid: {', '.join(STAGES)}")
    masks = searched(model, grads, seq_len, constraint, allocation)
    yield "search", masks
    if upto == "search":
        return
    dims = adapter_for(model).dims(model.config)
    block = head_block(dims)
    masks = rearrange_masks(masks, grads, block, shrink)  # within key/value groups: their cost stays as searched
    yield "rearrange", masks
    tunings = STAGES[2 : STAGES.index(upto) + 1]
    runs = [(stage, ridge, inputs) for stage in tunings for ridge in ridges for inputs in input_ridges]
    for stage, ridge, inputs in runs:
        resplit = BudgetResplit(
            model,
            masks,
            seq_len,
            "cpu",
            allocation=allocation,
            task=task,
            rearrange=task.resplit_rearranges,
            head_block=block,
            shrink=shrink,  # as the library's tune stage: the rearrangement's
        )
        tuned, _ = tune_masks(
            model,
            masks,
            None,
            batches,
            "cpu",
            progress=False,
            mode=mode,  # type: ignore[arg-type]
            ridge=ridge,  # type: ignore[arg-type]
            resplit=resplit if stage == "resplit" else None,
            task=task,
            input_ridge=inputs,
        )
        in_name = f"@in{inputs}" if len(input_ridges) > 1 and inputs is not None else ""  # None: not refit
        yield stage + (f"@{ridge}" if len(ridges) > 1 else "") + in_name, tuned
