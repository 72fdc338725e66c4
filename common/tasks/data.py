"""Task data: load (local files or the `datasets` hub), check, sample, tokenize, batch.

Classification and regression data become a ``datasets.Dataset`` with ``text_a``, ``text_b``
(empty for single-sentence tasks) and ``label`` columns; extractive QA data keeps the SQuAD
columns (see :mod:`qa`). Batches are dicts of tensors, padded per batch (dynamic padding).
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from datasets import Dataset

from ..errors import DataError
from .base import LABEL_KEYS, Task
from .data_files import read_guarded

if TYPE_CHECKING:
    from .glue import ClassificationTask

log = logging.getLogger(__name__)

_TABLE_SUFFIXES = {".tsv", ".csv", ".json", ".jsonl", ".parquet"}


# ----- loading ----------------------------------------------------------------------------------
def _read_delimited(path: Path, delimiter: str, task: ClassificationTask) -> list[dict]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        quoting: Literal[0, 1, 2, 3] = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
        rows = list(csv.reader(f, delimiter=delimiter, quoting=quoting))
    if not rows:
        raise DataError(f"{path} is empty")
    if task.headerless_tsv and len(rows[0]) == len(task.headerless_tsv) and not _has_header(rows[0], task):
        header, body = list(task.headerless_tsv), rows
    else:
        header, body = rows[0], rows[1:]
    records = []
    for i, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise DataError(f"{path}: line {i} has {len(row)} fields but the header has {len(header)}")
        records.append(dict(zip(header, row, strict=True)))
    return records


def _has_header(row: list[str], task: ClassificationTask) -> bool:
    names = {c for cols in task.text_columns for c in cols} | set(task.label_columns)
    return bool(names & set(row))


def _read_records(path: Path, task: ClassificationTask) -> list[dict]:
    suffix = path.suffix.lower()
    if suffix == ".tsv":
        return _read_delimited(path, "\t", task)
    if suffix == ".csv":
        return _read_delimited(path, ",", task)
    if suffix == ".parquet":
        return Dataset.from_parquet(str(path)).to_list()
    try:
        if suffix == ".jsonl":
            return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON: {e}") from e
    if isinstance(data, dict) and "data" in data and isinstance(data["data"], list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of records (or {{'data': [...]}}), got {type(data).__name__}")
    return data


read_records = _read_records  # for other tasks' tables (duck-typed: text_columns, label_columns, headerless_tsv)


def load_hub(name: str, task: Task, split: str) -> list[dict]:
    from datasets import load_dataset

    path, config = task.hub if task.hub and name in (task.name, "hub") else (name, None)
    try:
        return load_dataset(path, config, split=split).to_list()
    except Exception as e:  # the hub raises many kinds of errors
        raise DataError(
            f"could not load {name!r} (split {split!r}) from the datasets hub: {e}. Give a local file "
            f"({', '.join(sorted(_TABLE_SUFFIXES))}) or a reachable hub dataset id"
        ) from e


def _pick_columns(
    records: list[dict],
    task: ClassificationTask,
    where: str,
    text_columns: Sequence[str] | None,
    label_column: str | None,
) -> tuple[tuple[str, ...], str]:
    texts, label = pick_columns(records, task, where, text_columns, label_column)
    if label is None:
        labels = [label_column] if label_column else list(task.label_columns)
        found = list(records[0].keys())
        raise DataError(f"{where}: no label column ({' or '.join(labels)}) for task {task.name}; found columns {found}")
    return texts, label


def pick_columns(
    records: list[dict],
    task: ClassificationTask,
    where: str,
    text_columns: Sequence[str] | None,
    label_column: str | None,
) -> tuple[tuple[str, ...], str | None]:
    """The text columns (named, or the task's first candidate set the records have) and the label column (named, or
    the first of the task's candidates they have; None when none)."""
    found = list(records[0].keys())
    candidates = [tuple(text_columns)] if text_columns else list(task.text_columns)
    texts = next((c for c in candidates if all(name in found for name in c)), None)
    if texts is None:
        want = " or ".join("+".join(c) for c in candidates)
        raise DataError(f"{where}: no text column(s) {want} for task {task.name}; found columns {found}")
    labels = [label_column] if label_column else list(task.label_columns)
    return texts, next((c for c in labels if c in found), None)


def load_task_data(
    source: str | Path,
    task: Task,
    split: str = "train",
    text_columns: Sequence[str] | None = None,
    label_column: str | None = None,
) -> Dataset:
    """Load a task's examples from a local file (GLUE tsv, csv, json/jsonl, parquet, SQuAD json) or,
    when ``source`` is not a path, from the `datasets` hub. Columns are named or inferred per task."""
    return task.load_data(source, split, text_columns, label_column)


def load_table(
    source: str | Path,
    task: ClassificationTask,
    split: str = "train",
    text_columns: Sequence[str] | None = None,
    label_column: str | None = None,
) -> Dataset:
    """A text table (GLUE tsv, csv, json/jsonl, parquet, or a hub dataset) as ``text_a``, ``text_b`` and ``label``
    columns; the text and label columns named or inferred from the task's candidates."""
    path = Path(source)
    if path.exists():
        if path.is_dir() or path.suffix.lower() not in _TABLE_SUFFIXES:
            raise DataError(f"{path}: expected a file ending in one of {sorted(_TABLE_SUFFIXES)}")
        records, where = read_guarded(path, lambda: _read_records(path, task)), str(path)
    elif path.suffix.lower() in _TABLE_SUFFIXES or "/" in str(source) and path.parent.exists():
        raise DataError(f"data file {source} does not exist")
    else:
        records, where = load_hub(str(source), task, split), f"hub dataset {source}"
    if not records:
        raise DataError(f"{where} has no examples")
    texts, label = _pick_columns(records, task, where, text_columns, label_column)
    columns: dict[str, list] = {"text_a": [], "text_b": [], "label": []}
    for i, rec in enumerate(records):
        columns["text_a"].append(str(rec[texts[0]]))
        columns["text_b"].append(str(rec[texts[1]]) if len(texts) > 1 else "")
        columns["label"].append(task.parse_label(rec[label], where, i))
    log.info("loaded %d examples from %s (text %s, label %s)", len(records), where, "+".join(texts), label)
    return Dataset.from_dict(columns)


# ----- sampling ---------------------------------------------------------------------------------
def sample_dataset(ds: Dataset, num_samples: int, seed: int, replace: bool = True) -> Dataset:
    """``num_samples`` examples drawn by ``seed`` (numpy), with replacement as the reference code
    does, or without (capped at the dataset size)."""
    if num_samples <= 0:
        raise DataError(f"num_samples must be positive, got {num_samples}")
    rng = np.random.default_rng(seed)
    if replace:
        idx = rng.integers(0, len(ds), size=num_samples)
    else:
        idx = rng.permutation(len(ds))[: min(num_samples, len(ds))]
    return ds.select(idx.tolist())


def split_holdout(ds: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Split a sample into (main, held-out) parts; the held-out part is never the dev set."""
    n_hold = int(round(len(ds) * fraction))
    order = np.random.default_rng(seed + 1).permutation(len(ds)).tolist()
    return ds.select(order[n_hold:]), ds.select(order[:n_hold])


# ----- tokenize and batch -----------------------------------------------------------------------
def encode(ds: Dataset, tokenizer, task: Task, max_length: int | None = None) -> list[dict]:
    """Tokenize into per-example feature dicts (python lists, unpadded) with the task's labels."""
    return task.encode(ds, tokenizer, max_length)


def encode_texts(ds: Dataset, tokenizer, max_length: int) -> list[dict]:
    """``text_a`` (and ``text_b`` where any is not empty) tokenized, with ``labels`` from ``label``."""
    text_a, text_b, labels = list(ds["text_a"]), list(ds["text_b"]), list(ds["label"])
    enc = tokenizer(text_a, text_b if any(text_b) else None, truncation=True, max_length=max_length)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    return [{**{k: enc[k][i] for k in keys}, "labels": labels[i]} for i in range(len(ds))]


def collate(features: list[dict], tokenizer, label_keys: frozenset[str] = LABEL_KEYS) -> dict[str, torch.Tensor]:
    """Pad one batch to its longest member (the ``label_keys`` become tensors as they are)."""
    inputs = [{k: v for k, v in f.items() if k not in label_keys} for f in features]
    batch = dict(tokenizer.pad(inputs, return_tensors="pt"))
    for key in label_keys & set(features[0]):
        values = [f[key] for f in features]
        batch[key] = torch.tensor(values, dtype=torch.float32 if isinstance(values[0], float) else torch.long)
    return batch


def make_batches(
    features: list[dict],
    tokenizer,
    batch_size: int,
    group_by_length: bool = False,
    label_keys: frozenset[str] = LABEL_KEYS,
) -> list[dict[str, torch.Tensor]]:
    """Padded batches of ``batch_size`` features. ``group_by_length`` first orders the features by
    length, so each batch holds sequences of similar length and little compute goes into padding
    (on SST-2 this cuts the padded tokens about threefold)."""
    if group_by_length:
        features = sorted(features, key=lambda f: len(f["input_ids"]))
    return [collate(features[i : i + batch_size], tokenizer, label_keys) for i in range(0, len(features), batch_size)]


def task_batches(
    ds: Dataset,
    tokenizer,
    task: Task,
    batch_size: int | None = None,
    max_length: int | None = None,
    group_by_length: bool = True,
) -> list[dict[str, torch.Tensor]]:
    """Tokenized, dynamically padded batches of a task (labels included), grouped by length unless asked not to."""
    return task.batches(ds, tokenizer, batch_size, max_length, group_by_length)


def average_length(batches: list[dict[str, torch.Tensor]]) -> float:
    """The average number of real (non-padding) tokens per sequence."""
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    sequences = sum(int(b["attention_mask"].shape[0]) for b in batches)
    return tokens / max(sequences, 1)


def first_examples(batches: list[dict[str, torch.Tensor]], count: int) -> list[dict[str, torch.Tensor]]:
    """The batches holding the first ``count`` examples (the last one cut where needed); all when ``count`` is 0."""
    out, left = [], count or sum(len(b["input_ids"]) for b in batches)
    for batch in batches:
        if left <= 0:
            break
        out.append(batch if len(batch["input_ids"]) <= left else {k: v[:left] for k, v in batch.items()})
        left -= len(batch["input_ids"])
    return out
