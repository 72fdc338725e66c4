"""Sequence classification and regression over text tables (GLUE): two kinds of :class:`~.base.Task`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import DataError, ModelTaskMismatchError
from .base import Task, draw_classes

if TYPE_CHECKING:
    import pandas as pd
    from datasets import Dataset


@dataclass(frozen=True, kw_only=True)
class ClassificationTask(Task):
    """A sequence classifier over one or two text columns with integer (or named) labels; metric in percent."""

    num_labels: int = 2
    kind: str = "classification"
    reads_first_token: bool = True
    # Candidate column sets, tried in order: GLUE tsv headers first, then the hub's `glue` names.
    text_columns: tuple[tuple[str, ...], ...] = ()
    label_columns: tuple[str, ...] = ()
    label_names: tuple[str, ...] | None = None  # string labels in files, in id order
    headerless_tsv: tuple[str, ...] | None = None  # column names of a GLUE tsv without header (CoLA)
    serving_inputs: tuple[tuple[str, bool], ...] = (("text", True), ("text_pair", False))

    # reading and batching
    def load_data(
        self,
        source: str | Path,
        split: str = "train",
        text_columns: Sequence[str] | None = None,
        label_column: str | None = None,
    ) -> Dataset:
        from .data import load_table

        return load_table(source, self, split, text_columns, label_column)

    def parse_label(self, value: Any, where: str, row: int) -> float | int:
        if isinstance(value, str) and self.label_names and value in self.label_names:
            return self.label_names.index(value)
        try:
            label = int(value)
        except (TypeError, ValueError):
            valid = list(self.label_names or range(self.num_labels))
            raise DataError(f"{where}: row {row}: label {value!r} is not one of {valid} (task {self.name})") from None
        if not 0 <= label < self.num_labels:
            raise DataError(f"{where}: row {row}: label {label} outside 0..{self.num_labels - 1} (task {self.name})")
        return label

    def encode(self, ds: Dataset, tokenizer: Any, max_length: int | None = None) -> list[dict]:
        from .data import encode_texts

        return encode_texts(ds, tokenizer, max_length or self.max_length)

    # the model
    def auto_model_class(self) -> Any:
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification

    def check_model(self, config: Any, where: str) -> None:
        super().check_model(config, where)
        if config.num_labels != self.num_labels:
            raise ModelTaskMismatchError(
                f"{where} has {config.num_labels} labels but task {self.name} needs {self.num_labels}"
            )

    def pretrained_model(self, source: str | Path, reinit_mismatched: bool = False) -> nn.Module:
        return self.auto_model_class().from_pretrained(
            source, num_labels=self.num_labels, ignore_mismatched_sizes=reinit_mismatched
        )

    # the Fisher loss
    def sampled_loss(self, outputs: Any, generator: torch.Generator) -> torch.Tensor:
        """Cross-entropy against a class drawn from the model's softmax."""
        logits = outputs.logits
        return nn.functional.cross_entropy(logits, draw_classes(logits, generator))

    # evaluation
    def scores(self, logits: Any, labels: Any) -> dict[str, float]:
        from .evaluate import classification_metrics

        return classification_metrics(logits.argmax(-1), labels)

    def evaluate(
        self,
        model: nn.Module,
        tokenizer: Any,
        dev: Dataset,
        device: torch.device | str = "cpu",
        batch_size: int = 64,
        progress: bool = False,
    ) -> dict[str, float]:
        import numpy as np

        from .evaluate import dev_logits

        logits = dev_logits(model, tokenizer, self, dev, device, batch_size, progress)
        return self.scores(logits, np.asarray(list(dev["label"])))

    # serving
    def logits(self, model: nn.Module, tokenizer: Any, frame: pd.DataFrame, batch_size: int) -> torch.Tensor:
        if "text" not in frame.columns:
            raise ValueError(f"the input needs a 'text' column (and optionally 'text_pair'); got {list(frame.columns)}")
        texts = frame["text"].astype(str).tolist()
        pairs = frame["text_pair"].fillna("").astype(str).tolist() if "text_pair" in frame.columns else None
        pairs = pairs if pairs and any(pairs) else None
        chunks = []
        with torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                encoded = tokenizer(
                    texts[i : i + batch_size],
                    pairs[i : i + batch_size] if pairs else None,
                    truncation=True,
                    max_length=self.max_length,
                    padding=True,
                    return_tensors="pt",
                )
                chunks.append(model(**encoded).logits.float())
        return torch.cat(chunks) if chunks else torch.zeros(0, self.num_labels)

    def predict(self, model: nn.Module, tokenizer: Any, frame: pd.DataFrame, batch_size: int = 64) -> pd.DataFrame:
        """``label``, ``score`` (its probability) and ``probabilities`` from ``text`` (and ``text_pair``)."""
        import pandas as pd

        probabilities = self.logits(model, tokenizer, frame, batch_size).softmax(-1)
        return pd.DataFrame(
            {
                "label": probabilities.argmax(-1).numpy(),
                "score": probabilities.max(-1).values.numpy(),
                "probabilities": probabilities.numpy().tolist(),
            }
        )


@dataclass(frozen=True, kw_only=True)
class RegressionTask(ClassificationTask):
    """A sequence regressor (one output, float labels; STS-B); metric in percent."""

    num_labels: int = 1
    kind: str = "regression"

    def parse_label(self, value: Any, where: str, row: int) -> float | int:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise DataError(f"{where}: row {row}: label {value!r} is not a number (task {self.name})") from None

    def sampled_loss(self, outputs: Any, generator: torch.Generator) -> torch.Tensor:
        """Squared error against a draw from N(prediction, 1)."""
        logits = outputs.logits
        noise = torch.randn(logits.shape, generator=generator).to(logits.device, logits.dtype)
        return nn.functional.mse_loss(logits, logits.detach() + noise)

    def scores(self, logits: Any, labels: Any) -> dict[str, float]:
        from .evaluate import regression_metrics

        return regression_metrics(logits[:, 0], labels)

    def predict(self, model: nn.Module, tokenizer: Any, frame: pd.DataFrame, batch_size: int = 64) -> pd.DataFrame:
        """``score`` from ``text`` (and ``text_pair``)."""
        import pandas as pd

        return pd.DataFrame({"score": self.logits(model, tokenizer, frame, batch_size)[:, 0].numpy()})
