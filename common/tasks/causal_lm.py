"""Causal language modelling (decoder LLMs) as a :class:`~.base.Task`: calibration windows cut from plain text,
the next-token loss for the Fisher pass and perplexity on a dev text.

Data: a ``.txt`` file (one document), a folder of ``.txt`` files, a ``.jsonl``/``.json`` file of records with a text
field (``text`` unless ``--text-columns`` names another) or, where a hub is reachable, a `datasets` id. The documents
are joined into one stream.

Calibration (:meth:`CausalLMTask.draw_sample`): the sample stage has no tokenizer (it runs before the model is
fetched), so it cuts the stream into slots of ``max_length * chars_per_token`` characters (room for a window of
``max_length`` tokens in any common tokenizer: English BPE takes 3 to 4.5 characters a token) and draws slots by
seed; each drawn slot is tokenized once when batched and its first ``max_length`` tokens are one window, one Fisher
row. Evaluation (:meth:`CausalLMTask.evaluate`) tokenizes the dev stream once and cuts it into consecutive,
non-overlapping windows of :attr:`eval_length` tokens: perplexity is ``exp`` of the mean next-token negative log
likelihood over every predicted token (lower is better; a model that guesses uniformly scores the vocabulary size).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from ..errors import DataError, ModelTaskMismatchError
from .base import LabelSource, Task, draw_classes

if TYPE_CHECKING:
    import pandas as pd
    from datasets import Dataset

TEXT_SUFFIXES = (".txt", ".jsonl", ".json")
IGNORE = -100  # the label of a padding position


@dataclass(frozen=True, kw_only=True)
class CausalLMTask(Task):
    """Next-token prediction over plain text; metric perplexity (lower is better)."""

    kind: str = "causal-lm"
    metric: str = "perplexity"
    higher_is_better: bool = False
    chance: float = math.inf  # replaced by the model's vocabulary size (the evaluation reports it)
    max_length: int = 512
    batch_size: int = 4
    eval_length: int = 512  # the dev windows' length in tokens
    chars_per_token: float = 6.0  # a calibration slot's characters per window token (an upper bound)
    max_new_tokens: int = 32  # the pyfunc's continuation length
    checks_data: bool = True
    rearrange_shrink: float | Literal["auto"] = "auto"  # few windows: their gradient rows' correlations are noisy
    fisher_rows: Literal["example", "token"] = "token"  # 64 windows of 128 tokens: 8,192 rows instead of 64
    input_ridge: float | None = 1.0  # q/k/v and the MLP's inputs refit too (SmolLM2: lower perplexity at 0.6 and 0.8)
    generates: bool = True
    sample_unit: str = "window slots of the training text"
    serving_inputs: tuple[tuple[str, bool], ...] = (("prompt", True),)
    serving_example: tuple[tuple[str, str], ...] = (("prompt", "The history of the city begins"),)

    # ----- reading ---------------------------------------------------------------------------------------------
    def load_data(
        self,
        source: str | Path,
        split: str = "train",
        text_columns: Sequence[str] | None = None,
        label_column: str | None = None,
    ) -> Dataset:
        """The documents of ``source`` as a ``text`` column (label columns do not apply: the text is its label)."""
        from datasets import Dataset

        field = text_columns[0] if text_columns else "text"
        path = Path(source)
        if path.is_dir():
            files = sorted(path.glob("*.txt"))
            if not files:
                raise DataError(f"{path} holds no .txt files: give a text file, a jsonl file or a folder of .txt")
            docs, where = [_read_text(f) for f in files], str(path)
        elif path.exists():
            if path.suffix.lower() not in TEXT_SUFFIXES:
                raise DataError(f"{path}: task {self.name} reads text from one of {list(TEXT_SUFFIXES)} or a folder")
            docs, where = _read_documents(path, field), str(path)
        elif path.suffix.lower() in TEXT_SUFFIXES or "/" in str(source) and path.parent.exists():
            raise DataError(f"text file {source} does not exist")
        else:
            from .data import load_hub

            records, where = load_hub(str(source), self, split), f"hub dataset {source}"
            docs = _texts(records, field, where)
        docs = [d for d in docs if d.strip()]
        if not docs:
            raise DataError(f"{where} has no text")
        return Dataset.from_dict({"text": docs})

    def draw_sample(
        self, ds: Dataset, num_samples: int, seed: int, replace: bool = True, max_length: int | None = None
    ) -> tuple[Dataset, int]:
        """``num_samples`` calibration slots of the joined documents drawn by ``seed`` (see the module doc), and
        how many slots the text holds."""
        import numpy as np
        from datasets import Dataset

        if num_samples <= 0:
            raise DataError(f"num_samples must be positive, got {num_samples}")
        stream = "\n\n".join(ds["text"])
        span = int((max_length or self.max_length) * self.chars_per_token)
        slots = max(1, len(stream) // span)
        rng = np.random.default_rng(seed)
        drawn = rng.integers(0, slots, num_samples) if replace else rng.permutation(slots)[:num_samples]
        return Dataset.from_dict({"text": [_slot(stream, int(k), span, slots) for k in drawn]}), slots

    def check_data(self, ds: Dataset, tokenizer: Any, max_length: int | None, what: str) -> None:
        """The text must hold one window of ``max_length`` tokens (of this tokenizer) at least."""
        length = max_length or self.max_length
        stream = "\n\n".join(ds["text"])
        head = stream[: int(length * 4 * self.chars_per_token)]  # enough for a window, unless the text is short
        tokens = len(tokenizer(head, add_special_tokens=False)["input_ids"])
        if tokens < length and len(head) < len(stream):
            tokens = len(tokenizer(stream, add_special_tokens=False)["input_ids"])
        if tokens < length:
            raise DataError(
                f"{what} has {tokens} tokens, shorter than one window of {length} (task {self.name}): give more "
                f"text or a smaller --max-length"
            )

    # ----- batching --------------------------------------------------------------------------------------------
    def encode(self, ds: Dataset, tokenizer: Any, max_length: int | None = None) -> list[dict]:
        """One window per row: the first ``max_length`` tokens of its text (no special tokens), its own labels."""
        length = max_length or self.max_length
        ids = tokenizer(list(ds["text"]), add_special_tokens=False)["input_ids"]
        return [{"input_ids": row[:length], "labels": row[:length]} for row in ids if len(row) > 1]

    def batches(
        self,
        ds: Dataset,
        tokenizer: Any,
        batch_size: int | None = None,
        max_length: int | None = None,
        group_by_length: bool = True,
    ) -> list[dict[str, torch.Tensor]]:
        """Windows padded to the longest in their batch (``labels`` -100 on padding), in the sample's order."""
        features = self.encode(ds, tokenizer, max_length)
        if not features:
            raise DataError(f"task {self.name}: the sample holds no window of two tokens or more")
        size = batch_size or self.batch_size
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        return [
            pad_windows([f["input_ids"] for f in features[i : i + size]], pad) for i in range(0, len(features), size)
        ]

    def model_inputs(self, batch: dict) -> dict:
        """The ids and attention mask, without a key/value cache (layers are re-run by the tuning)."""
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}

    def unlabeled(self, batch: dict) -> dict:
        return self.model_inputs(batch)

    # ----- the model -------------------------------------------------------------------------------------------
    def auto_model_class(self) -> Any:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM

    def check_model(self, config: Any, where: str) -> None:
        architectures = getattr(config, "architectures", None) or []
        if not any(a.endswith("ForCausalLM") for a in architectures):
            raise ModelTaskMismatchError(
                f"task {self.name} needs a decoder language model (a *ForCausalLM of a Llama-like family: llama, "
                f"mistral, qwen2, qwen3), but {where} is {architectures or 'unset'} (model_type "
                f"{getattr(config, 'model_type', None)!r}): give a causal LM, or the task the model was fine-tuned for"
            )

    # ----- the Fisher loss ------------------------------------------------------------------------------------
    def fisher_loss(
        self, model: nn.Module, batch: dict, labels: LabelSource = "data", generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The batch mean of each window's mean next-token loss, against the text's next tokens or (``"model"``)
        against tokens drawn from the model's own predictions."""
        logits = model(**self.model_inputs(batch)).logits[:, :-1]
        real = batch["attention_mask"][:, 1:].bool()
        if labels == "model":
            drawn = draw_classes(logits.reshape(-1, logits.shape[-1]), generator or torch.Generator())
            targets = drawn.view(real.shape).masked_fill(~real, IGNORE)
        else:
            targets = batch["labels"][:, 1:]
        nll = nn.functional.cross_entropy(
            logits.transpose(1, 2).float(), targets, ignore_index=IGNORE, reduction="none"
        )
        counts = (targets != IGNORE).sum(1).clamp(min=1)
        return (nll.sum(1) / counts).mean()

    # ----- evaluation ------------------------------------------------------------------------------------------
    def evaluate(
        self,
        model: nn.Module,
        tokenizer: Any,
        dev: Dataset,
        device: torch.device | str = "cpu",
        batch_size: int = 64,
        progress: bool = False,
    ) -> dict[str, float]:
        """``perplexity`` over consecutive windows of the dev stream, with the mean ``loss`` (nats a token), the
        ``tokens`` predicted, the ``windows`` and ``chance`` (the vocabulary size: a uniform guess's perplexity)."""
        from tqdm.auto import tqdm

        ids = tokenizer("\n\n".join(dev["text"]), add_special_tokens=False)["input_ids"]
        windows = [ids[i : i + self.eval_length] for i in range(0, len(ids), self.eval_length)]
        windows = [w for w in windows if len(w) > 1]
        if not windows:
            raise DataError(f"the dev text has {len(ids)} token(s): perplexity needs at least two")
        size = max(1, min(batch_size, self.batch_size))  # the logits of a batch are [size, length, vocabulary]
        total, count = 0.0, 0
        model.eval()
        with torch.inference_mode():
            for i in tqdm(range(0, len(windows), size), desc="eval", disable=not progress, leave=False):
                batch = {k: v.to(device) for k, v in pad_windows(windows[i : i + size], 0).items()}
                logits = model(**self.model_inputs(batch)).logits[:, :-1].float()
                targets = batch["labels"][:, 1:]
                nll = nn.functional.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE, reduction="sum")
                total, count = total + float(nll), count + int((targets != IGNORE).sum())
        loss = total / count
        vocabulary = getattr(getattr(model, "config", None), "vocab_size", None) or len(tokenizer)
        return {
            "perplexity": math.exp(loss),
            "loss": loss,
            "tokens": float(count),
            "windows": float(len(windows)),
            "chance": float(vocabulary),
        }

    # ----- serving ---------------------------------------------------------------------------------------------
    def predict(self, model: nn.Module, tokenizer: Any, frame: pd.DataFrame, batch_size: int = 64) -> pd.DataFrame:
        """``text``: the greedy continuation of each ``prompt`` (:attr:`max_new_tokens` tokens at most)."""
        import pandas as pd

        if "prompt" not in frame.columns:
            raise ValueError(f"the input needs a 'prompt' column; got {list(frame.columns)}")
        return pd.DataFrame(
            {"text": continue_prompts(model, tokenizer, frame["prompt"].astype(str), self.max_new_tokens)}
        )


def continue_prompts(model: Any, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
    """The greedy continuation of each prompt, one at a time (no padding to get wrong)."""
    out = []
    with torch.inference_mode():
        for prompt in prompts:
            encoded = tokenizer(prompt, return_tensors="pt").to(next(model.parameters()).device)
            ids = {k: encoded[k] for k in ("input_ids", "attention_mask")}  # no token_type_ids
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            generated = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
            out.append(tokenizer.decode(generated[0, ids["input_ids"].shape[1] :], skip_special_tokens=True))
    return out


GENERATE_BATCH = 16
"""Windows sampled together by :func:`generated_batches` (rows of equal width, across the task's batches)."""


def generated_batches(
    model: Any, batches: Sequence[dict[str, torch.Tensor]], prompt: int, seed: int, progress: bool = False
) -> list[dict[str, torch.Tensor]]:
    """Self-generated calibration (Ji et al., "Beware of Calibration Data for Pruning Large Language Models",
    2024): each window keeps its first ``prompt`` tokens and the rest, up to its own length, is sampled from the
    dense ``model`` (nucleus 0.95), so the calibration follows the model's distribution rather than only the
    calibration text's. Windows of ``prompt`` tokens or fewer stay as they are; shapes and masks are unchanged.
    The windows are sampled :data:`GENERATE_BATCH` at a time, in order, whatever the batches' sizes.
    Deterministic for a ``seed`` (the global random state is restored afterwards)."""
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    ids = [b["input_ids"].clone() for b in batches]
    todo: dict[int, list[tuple[int, int]]] = {}  # width -> the (batch, row) of each window to continue
    for i, b in enumerate(batches):
        for r in (b["attention_mask"].sum(1) > prompt).nonzero().flatten().tolist():
            todo.setdefault(b["input_ids"].shape[1], []).append((i, r))
    groups = [
        (w, places[k : k + GENERATE_BATCH]) for w, places in todo.items() for k in range(0, len(places), GENERATE_BATCH)
    ]
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
        torch.manual_seed(seed)
        for width, places in tqdm(groups, desc="generate", disable=not progress):
            head = torch.stack([ids[i][r, :prompt] for i, r in places]).to(device)
            made = model.generate(
                input_ids=head,
                attention_mask=torch.ones_like(head),
                do_sample=True,
                top_k=0,
                top_p=0.95,
                max_new_tokens=width - prompt,
                min_new_tokens=width - prompt,
                pad_token_id=model.config.eos_token_id,
            ).cpu()
            for (i, r), row in zip(places, made, strict=True):
                keep = batches[i]["attention_mask"][r].bool()  # the window's own length: padding stays padding
                ids[i][r] = torch.where(keep, row, ids[i][r])
    return [window_batch(x, b["attention_mask"]) for x, b in zip(ids, batches, strict=True)]


def save_batches(batches: Sequence[dict[str, torch.Tensor]], path: Path) -> None:
    """Windows as safetensors: each batch's ``input_ids`` and ``attention_mask`` (labels follow from them)."""
    from safetensors.torch import save_file

    tensors = {
        f"{key}.{i}": b[key].contiguous() for i, b in enumerate(batches) for key in ("input_ids", "attention_mask")
    }
    save_file(tensors, str(path))


def load_batches(path: Path) -> list[dict[str, torch.Tensor]]:
    """The windows :func:`save_batches` wrote, in their order, with their labels (-100 on padding)."""
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    out = []
    for i in range(len(tensors) // 2):
        ids, mask = tensors[f"input_ids.{i}"], tensors[f"attention_mask.{i}"]
        out.append(window_batch(ids, mask))
    return out


def window_batch(ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """A batch of windows: ``input_ids``, ``attention_mask`` and ``labels`` (the ids, -100 on padding)."""
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, IGNORE)}


def pad_windows(windows: Sequence[Sequence[int]], pad: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (the ids, -100 on padding)."""
    length = max(len(w) for w in windows)
    ids = torch.full((len(windows), length), pad, dtype=torch.long)
    mask = torch.zeros((len(windows), length), dtype=torch.long)
    for row, w in enumerate(windows):
        ids[row, : len(w)] = torch.tensor(list(w), dtype=torch.long)
        mask[row, : len(w)] = 1
    return window_batch(ids, mask)


def _slot(stream: str, k: int, span: int, slots: int) -> str:
    """Slot ``k`` of the stream, from its first word boundary (the last slot runs to the end)."""
    start = k * span
    text = stream[start : None if k == slots - 1 else start + span]
    cut = next((i + 1 for i, c in enumerate(text[:64]) if c.isspace()), 0) if k else 0
    return text[cut:]


def _read_text(path: Path) -> str:
    from .data_files import read_guarded

    return read_guarded(path, lambda: path.read_text(encoding="utf-8-sig"))


def _read_documents(path: Path, field: str) -> list[str]:
    if path.suffix.lower() == ".txt":
        return [_read_text(path)]
    raw = _read_text(path)
    try:
        if path.suffix.lower() == ".jsonl":
            records = [json.loads(line) for line in raw.splitlines() if line.strip()]
        else:
            records = json.loads(raw)
            records = records.get("data", records) if isinstance(records, dict) else records
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(records, list):
        raise DataError(f"{path}: expected records with a {field!r} field, got {type(records).__name__}")
    return _texts(records, field, str(path))


def _texts(records: list, field: str, where: str) -> list[str]:
    for i, record in enumerate(records):
        if not isinstance(record, dict) or not isinstance(record.get(field), str):
            found = list(record) if isinstance(record, dict) else type(record).__name__
            raise DataError(
                f"{where}: record {i} has no text field {field!r} (found {found}); name it with --text-columns"
            )
    return [r[field] for r in records]
