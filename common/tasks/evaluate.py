"""Dev-set metrics of each task: accuracy, F1, Matthews, Pearson/Spearman, SQuAD EM/F1."""

from __future__ import annotations

import numpy as np
import torch
from datasets import Dataset
from scipy import stats
from torch import nn
from tqdm.auto import tqdm

from .base import Task
from .data import make_batches


def classification_metrics(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy, binary F1 (positive class 1; when there are 2 classes) and Matthews correlation, in percent."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    out = {"accuracy": 100.0 * float((predictions == labels).mean())}
    tp = float(((predictions == 1) & (labels == 1)).sum())
    fp = float(((predictions == 1) & (labels != 1)).sum())
    fn = float(((predictions != 1) & (labels == 1)).sum())
    tn = float(((predictions != 1) & (labels != 1)).sum())
    if set(np.unique(labels)) <= {0, 1}:
        out["f1"] = 100.0 * (2 * tp / (2 * tp + fp + fn) if tp else 0.0)
        denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
        out["matthews"] = 100.0 * float((tp * tn - fp * fn) / denom) if denom else 0.0
    return out


def regression_metrics(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Pearson and Spearman correlations, in percent (0 for a constant prediction)."""
    predictions, labels = np.asarray(predictions, dtype=float), np.asarray(labels, dtype=float)
    if np.std(predictions) == 0 or np.std(labels) == 0:
        return {"pearson": 0.0, "spearman": 0.0}
    return {
        "pearson": 100.0 * float(stats.pearsonr(predictions, labels)[0]),
        "spearman": 100.0 * float(stats.spearmanr(predictions, labels)[0]),
    }


@torch.inference_mode()
def predict(model: nn.Module, batches: list[dict], device: torch.device | str, progress: bool = False) -> np.ndarray:
    """Logits of a sequence classifier over batches (labels are ignored)."""
    model.eval()
    outs = []
    for batch in tqdm(batches, desc="eval", disable=not progress, leave=False):
        inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
        outs.append(model(**inputs).logits.float().cpu())
    return torch.cat(outs).numpy()


def dev_logits(
    model: nn.Module,
    tokenizer,
    task: Task,
    dev: Dataset,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    progress: bool = False,
) -> np.ndarray:
    """A sequence model's logits on every dev example, in the dev set's order (batched by similar length)."""
    features = task.encode(dev, tokenizer)
    order = np.argsort([len(f["input_ids"]) for f in features], kind="stable")  # batch similar lengths
    sorted_logits = predict(model, make_batches([features[i] for i in order], tokenizer, batch_size), device, progress)
    logits = np.empty_like(sorted_logits)
    logits[order] = sorted_logits
    return logits


def evaluate(
    model: nn.Module,
    tokenizer,
    task: Task,
    dev: Dataset,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    progress: bool = False,
) -> dict[str, float]:
    """All metrics of the task on its dev set; the task's primary metric is under ``task.metric``.
    Masks are applied by the caller (``masks_applied``) when measuring a masked model."""
    return task.evaluate(model, tokenizer, dev, device, batch_size, progress)
