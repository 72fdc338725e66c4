"""A small fine-tuning loop: turns a pretrained encoder into a task model for the demo, the
benchmarks and the tests (fastprune itself never trains)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import cast

import torch
from datasets import Dataset
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from .data import sample_dataset, task_batches
from .spec import TaskSpec

log = logging.getLogger(__name__)


def finetune(
    model: nn.Module,
    tokenizer,
    task: TaskSpec,
    train: Dataset,
    steps: int,
    lr: float = 5e-5,
    batch_size: int = 32,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> nn.Module:
    """Train every parameter for ``steps`` mini-batches (AdamW, linear warm-up and decay)."""
    torch.manual_seed(seed)
    data = sample_dataset(train, steps * batch_size, seed, replace=len(train) < steps * batch_size)
    batches = task_batches(data, tokenizer, task, batch_size, group_by_length=False)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup)))
    )
    bar = tqdm(batches, desc="finetune", disable=not progress)
    for batch in bar:
        loss = task.fisher_loss(model, {k: v.to(device) for k, v in batch.items()})  # the task loss, data labels
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return model.eval()


def save_finetuned(model: nn.Module, tokenizer, path: str | Path) -> Path:
    path = Path(path)
    cast(PreTrainedModel, model).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
