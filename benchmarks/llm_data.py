"""Text windows, held-out perplexity and the costs of a pruned decoder, for the LLM benchmark (``llm_bench.py``).

Windows are consecutive, non-overlapping runs of ``length`` tokens of a text file (tokenized whole, no special
tokens); perplexity is ``exp`` of the mean next-token loss over every predicted token of every window (``length - 1``
per window), the model as masks (and FLAP's biases) prune it or a sliced model.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from fastprune.common.model.arch import ModelDims, adapter_for
from fastprune.common.model.masks import Masks, pruning_applied
from fastprune.common.tasks.base import Task
from fastprune.common.tasks.causal_lm import generated_batches
from torch import nn


def text_windows(tokenizer: Any, paths: Sequence[Path], length: int) -> torch.Tensor:
    """[N, length] token ids: every whole window of each file in turn (a file's tail shorter than a window is
    dropped)."""
    if length < 2:
        raise ValueError(f"window length must be at least 2 tokens, got {length}")
    rows = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"text file {path} not found")
        ids = tokenizer(path.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
        whole = len(ids) // length
        rows.append(torch.tensor(ids[: whole * length], dtype=torch.long).view(whole, length))
    windows = torch.cat(rows)
    if not len(windows):
        raise ValueError(f"no whole window of {length} tokens in {[str(p) for p in paths]}")
    return windows


def sample_windows(windows: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """``count`` windows drawn without replacement (seeded); all of them when fewer."""
    if count >= len(windows):
        return windows
    order = torch.randperm(len(windows), generator=torch.Generator().manual_seed(seed))
    return windows[order[:count].sort().values]


@torch.no_grad()
def generated_windows(model: nn.Module, windows: torch.Tensor, prompt: int, seed: int) -> torch.Tensor:
    """Self-generated calibration windows (the library's ``--calib-generate``: each window's first ``prompt`` tokens
    kept, the rest sampled from the dense ``model``, seeded), for the harness's [windows, tokens] tensor."""
    if not 0 < prompt < windows.shape[1]:
        raise ValueError(f"prompt must be between 1 and {windows.shape[1] - 1} tokens, got {prompt}")
    model.eval()
    batch = {"input_ids": windows, "attention_mask": torch.ones_like(windows)}
    return generated_batches(model, [batch], prompt, seed)[0]["input_ids"]


@torch.no_grad()
def perplexity(
    model: nn.Module,
    windows: torch.Tensor,
    masks: Masks | None = None,
    extra: Callable[[], contextlib.AbstractContextManager] | None = None,
    batch_size: int = 1,
) -> float:
    """Held-out perplexity of ``model`` (with ``masks`` applied, and the context ``extra()`` entered, e.g. FLAP's
    biases)."""
    model.eval()
    total, count = 0.0, 0
    with pruning_applied(model, masks, "cpu"), extra() if extra else contextlib.nullcontext():
        for start in range(0, len(windows), batch_size):
            ids = windows[start : start + batch_size]
            logits = model(input_ids=ids).logits[:, :-1].float()
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="sum")
            total += float(loss)
            count += ids[:, 1:].numel()
    return math.exp(total / count)


# ----- the costs of what is kept ----------------------------------------------------------------------------------
def kept_counts(masks: Masks, dims: ModelDims) -> dict[str, int]:
    """Heads, key/value groups and neurons a mask keeps (all layers)."""
    return {
        "heads": int((masks.head != 0).sum()),
        "groups": int(dims.kept_groups(masks.head).sum()),
        "neurons": int((masks.neuron != 0).sum()),
    }


def decoder_params(counts: dict[str, int], dims: ModelDims) -> int:
    """Weights of the decoder layers' projections kept: a query head's q rows and o columns, a group's k and v rows,
    a neuron's gate, up and down weights (norms and embeddings are not pruned and not counted)."""
    d, dh = dims.hidden_size, dims.head_size
    groups = counts["groups"] if dims.grouped else counts["heads"]
    return 2 * d * dh * (counts["heads"] + groups) + (dims.mlp_inputs + 1) * d * counts["neurons"]


def kv_bytes_per_token(counts: dict[str, int], dims: ModelDims, bytes_per_value: int = 2) -> int:
    """KV-cache bytes per token (keys and values of every kept group, 16-bit values by default)."""
    groups = counts["groups"] if dims.grouped else counts["heads"]
    return 2 * groups * dims.head_size * bytes_per_value


def dense_counts(dims: ModelDims) -> dict[str, int]:
    return kept_counts(Masks.ones(dims), dims)


def sliced_counts(model: nn.Module) -> dict[str, int]:
    """:func:`kept_counts` of a sliced model (Torch-Pruning's), from its linears' shapes."""
    adapter = adapter_for(model)
    structure = adapter.structure(model)
    groups = structure.get("num_key_value_heads", structure["num_heads"])
    return {"heads": sum(structure["num_heads"]), "groups": sum(groups), "neurons": sum(structure["intermediate_size"])}


# ----- a causal-LM task for fastprune's Fisher pass and tuning, until fastprune ships its own ---------------------
def causal_lm_task() -> Task:
    """fastprune's ``causal-lm`` task when registered (the decoder issue), else :class:`WindowTask`."""
    from fastprune.common.errors import ConfigError
    from fastprune.common.tasks.base import lookup_task

    try:
        return lookup_task("causal-lm")
    except ConfigError:
        return WindowTask(name="bench-causal-lm", metric="perplexity", higher_is_better=False, max_length=512)


class WindowTask(Task):
    """The bare minimum of a causal-LM task over ready-made token windows (batches ``{"input_ids", "attention_mask",
    "labels"}``, the loss the model computes: next-token cross-entropy, one Fisher row per window). Only what the
    Fisher pass and tuning call is implemented."""

    def load_data(self, source, split="train", text_columns=None, label_column=None):
        raise NotImplementedError("the benchmark builds its windows itself (text_windows)")

    def encode(self, ds, tokenizer, max_length=None):
        raise NotImplementedError("the benchmark builds its windows itself (text_windows)")

    def auto_model_class(self) -> Any:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM

    def evaluate(self, model, tokenizer, dev, device="cpu", batch_size=64, progress=False):
        raise NotImplementedError("the benchmark evaluates with perplexity()")

    def predict(self, model, tokenizer, frame, batch_size=64):
        raise NotImplementedError


def window_batches(windows: torch.Tensor, batch_size: int) -> list[dict[str, torch.Tensor]]:
    """Labelled batches of windows for the Fisher pass and tuning."""
    return [
        {"input_ids": w, "attention_mask": torch.ones_like(w), "labels": w.clone()} for w in windows.split(batch_size)
    ]
