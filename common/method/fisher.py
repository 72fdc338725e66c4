"""The sample pass: per-example gradients of the task loss w.r.t. every head and neuron mask.

The loss is the task's (:meth:`~fastprune.common.tasks.base.Task.fisher_loss`): against the sample's labels (the
empirical Fisher, as the paper) or, with ``labels="model"``, against labels drawn from the model's own predictive
distribution, y ~ p(y|x) (the true Fisher; unlabeled data works): a class for classification, start and end
positions for extractive QA, and y ~ N(prediction, 1) for regression."""

from __future__ import annotations

import contextlib
import logging
import os
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

__all__ = ["GradientRows", "LabelSource", "MaskGradients", "auto_max_rows", "collect_mask_gradients", "to_device"]

ROWS_MEMORY_FRACTION = 8
"""Automatic bound (``max_rows=0``): the kept gradient rows use at most 1/8 of the machine's memory."""


@dataclass
class MaskGradients:
    """Gradients of the loss w.r.t. the mask values, one row per example (or per mini-batch):
    head [R, L, H], neuron [R, L, F]. Their squares summed over the examples are the diagonal Fisher importance.

    When the examples were more than the rows kept (:class:`GradientRows`), the rows are a count-sketch of the
    examples' rows and ``head_sq`` / ``neuron_sq`` [L, H] / [L, F] hold the exact sums of the squared per-example
    gradients: the importance reads them, not the rows, so the diagonal Fisher stays exact. Without them (every
    example has its row) the importance is the rows' squared sum.

    ``available`` (binary masks) marks the units still there when the gradients were measured (iterative
    Fisher); the others are already pruned: their importance is -inf, so no search brings them back."""

    head: torch.Tensor
    neuron: torch.Tensor
    available: Masks | None = None
    head_sq: torch.Tensor | None = None
    neuron_sq: torch.Tensor | None = None

    @property
    def folded(self) -> bool:
        """Whether the rows are a sketch (more examples than rows): then only ``*_sq`` give the exact diagonal."""
        return self.head_sq is not None

    def head_importance(self) -> torch.Tensor:
        return self._importance(self.head, self.head_sq, None if self.available is None else self.available.head)

    def neuron_importance(self) -> torch.Tensor:
        available = None if self.available is None else self.available.neuron
        return self._importance(self.neuron, self.neuron_sq, available)

    @staticmethod
    def _importance(rows: torch.Tensor, sq: torch.Tensor | None, available: torch.Tensor | None) -> torch.Tensor:
        if sq is None:  # in chunks: a row per token makes the rows gigabytes, their float64 squares twice that
            importance = sum(
                (c.double().pow(2).sum(0) for c in rows.split(1024)),
                rows.new_zeros(rows.shape[1:], dtype=torch.float64),
            )
        else:
            importance = sq.double().clone()
        return importance if available is None else importance.masked_fill(available == 0, -torch.inf)

    def save(self, path: str | Path) -> None:
        tensors = {"head": self.head, "neuron": self.neuron}
        if self.available is not None:
            tensors |= {"available_head": self.available.head, "available_neuron": self.available.neuron}
        if self.head_sq is not None and self.neuron_sq is not None:
            tensors |= {"head_sq": self.head_sq, "neuron_sq": self.neuron_sq}
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))

    @classmethod
    def load(cls, path: str | Path) -> MaskGradients:
        """Files written before the rows were bounded hold rows only: they load as unfolded gradients."""
        t = load_file(str(path))
        available = Masks(t["available_head"], t["available_neuron"]) if "available_head" in t else None
        return cls(t["head"], t["neuron"], available, t.get("head_sq"), t.get("neuron_sq"))


def machine_memory() -> int:
    """Bytes of memory this process may use: the machine's, or its container's limit (cgroup v2) when lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        return total
    return min(total, int(limit)) if limit.isdigit() else total


def auto_max_rows(row_values: int, memory: int | None = None) -> int:
    """The rows (``row_values`` float32 each) that fit in 1/:data:`ROWS_MEMORY_FRACTION` of ``memory`` (default:
    the machine's), at least one."""
    memory = machine_memory() if memory is None else memory
    return max(1, memory // ROWS_MEMORY_FRACTION // (4 * row_values))


class GradientRows:
    """The gradient rows of a Fisher pass, at most ``max_rows`` of them (0: :func:`auto_max_rows`).

    The first ``max_rows`` examples keep their rows exactly; every later example's row is added, with a random sign,
    to one of the kept rows chosen at random (a count-sketch of the rows, seeded). Each example's head and neuron
    rows go to the same kept row with the same sign. What reads the rows needs their Gram matrix (the block-diagonal
    Fisher of rearrangement and of the block allocation: ``sum_i g_i g_i^T`` over a block's units), and the kept
    rows' Gram is an unbiased estimate of it: ``sum_r s_r s_r^T = sum_i g_i g_i^T + sum_{i != j, same row}
    sigma_i sigma_j g_i g_j^T``, and every cross term has mean 0 because at least one of its two signs is an
    independent random sign (two exactly kept rows never share a row). Its error shrinks as ``1/sqrt(max_rows)``.
    The diagonal (the importance every search ranks by) is kept exactly, summed as the rows stream in, so the search
    is the same as with every row. Memory: ``max_rows`` rows, whatever the number of examples.

    With no more examples than ``max_rows`` the result is exactly the all-rows one (no sums kept)."""

    def __init__(self, row_values: int, max_rows: int = 0, seed: int = 0) -> None:
        if max_rows < 0:
            raise ValueError(f"max_rows must be 0 (automatic) or a positive number of rows, got {max_rows}")
        self.row_values = row_values
        self.max_rows = max_rows or auto_max_rows(row_values)
        self.count = 0
        self._chunks: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._kept: tuple[torch.Tensor, torch.Tensor] | None = None
        self._sq: tuple[torch.Tensor, torch.Tensor] | None = None
        self._generator = torch.Generator().manual_seed(seed)

    def add(self, head: torch.Tensor, neuron: torch.Tensor) -> None:
        """Add rows [B, L, H] and [B, L, F] (float32 on the CPU)."""
        sq = (head.double().pow(2).sum(0), neuron.double().pow(2).sum(0))
        self._sq = sq if self._sq is None else (self._sq[0] + sq[0], self._sq[1] + sq[1])
        room = self.max_rows - self.count
        self.count += len(head)
        if room > 0:
            self._chunks.append((head[:room], neuron[:room]))
            head, neuron = head[room:], neuron[room:]
        if len(head) == 0:
            return
        if self._kept is None:
            self._kept, self._chunks = self._joined(), []
            log.info(
                "Fisher: %d gradient rows kept (%.1f MB); each further example is folded into one of them "
                "(saving %.2f MB a row; fisher_max_rows)",
                self.max_rows,
                self.max_rows * self.row_values * 4 / 1e6,
                self.row_values * 4 / 1e6,
            )
        target = torch.randint(self.max_rows, (len(head),), generator=self._generator)
        sign = torch.randint(2, (len(head),), generator=self._generator).float() * 2 - 1
        self._kept[0].index_add_(0, target, head * sign.view(-1, 1, 1))
        self._kept[1].index_add_(0, target, neuron * sign.view(-1, 1, 1))

    def result(self, available: Masks | None = None) -> MaskGradients:
        if self.count == 0:
            raise ValueError("no batches: the sample is empty")
        if self._kept is None:
            return MaskGradients(*self._joined(), available)
        assert self._sq is not None
        log.info(
            "Fisher: %d examples folded into %d rows: %.1f MB of rows saved",
            self.count,
            self.max_rows,
            (self.count - self.max_rows) * self.row_values * 4 / 1e6,
        )
        return MaskGradients(*self._kept, available, *self._sq)

    def _joined(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat([c[0] for c in self._chunks]), torch.cat([c[1] for c in self._chunks])


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
    max_rows: int = 0,
    per_token: bool = False,
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

    ``task`` computes the loss (by default the built-in task that fits the model's head). ``max_rows`` bounds the
    rows kept (0: automatic, from the machine's memory); beyond it the rows are folded, the importance stays exact
    (:class:`GradientRows`).

    ``per_token`` (token-sequence tasks, with ``per_example``): one row per example and position, each position
    with its own copy of the masks, so a row is that position's share of its example's gradient (the example's row
    is their sum). The importance then sums the positions' squares instead of the square of their sum, and the Gram
    matrix the rearrangement and the block allocation read has up to the sequence length times as many rows."""
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
    rows = GradientRows(dims.num_layers * (dims.num_heads + dims.intermediate_size), max_rows, seed)
    generator = torch.Generator().manual_seed(seed)
    entry = (
        _entered_at(adapter.layer_modules(model), *start, adapter.layer_returns_tuple)
        if start is not None
        else contextlib.nullcontext()
    )
    try:
        with entry:
            for batch in tqdm(batches, desc="fisher", disable=not progress, leave=False):
                batch = to_device(batch, device)
                size = task.examples(batch)
                shape = (size, batch["input_ids"].shape[1]) if per_token else (size,) if per_example else ()
                head = base.head.expand(*shape, *base.head.shape).clone().requires_grad_(True)
                neuron = base.neuron.expand(*shape, *base.neuron.shape).clone().requires_grad_(True)
                with masks_applied(model, head, neuron, adapter):
                    loss = task.fisher_loss(model, batch, labels, generator)
                grad_h, grad_n = torch.autograd.grad(loss, (head, neuron))
                scale = size if per_example else 1  # the loss is a batch mean: undo it per example
                rows.add(
                    (grad_h * scale).reshape(-1, *base.head.shape).detach().float().cpu(),
                    (grad_n * scale).reshape(-1, *base.neuron.shape).detach().float().cpu(),
                )
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)
    return rows.result(masks.binary().to("cpu") if masks is not None else None)  # available: where they are


@contextlib.contextmanager
def _entered_at(
    layers: list[nn.Module], k: int, hidden: Sequence[torch.Tensor], returns_tuple: bool = False
) -> Iterator[None]:
    """Forward passes skip ``layers[:k]`` (each returns its input, as a 1-tuple where the family's layers return
    tuples) and ``layers[k]`` receives the next of ``hidden``
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
        layer.forward = _passthrough_tuple if returns_tuple else _passthrough
    handle = layers[k].register_forward_pre_hook(enter, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
        for layer in layers[:k]:
            del layer.forward


def _passthrough(hidden: torch.Tensor, *_args, **_kwargs) -> torch.Tensor:
    return hidden


def _passthrough_tuple(hidden: torch.Tensor, *_args, **_kwargs) -> tuple[torch.Tensor]:
    return (hidden,)
