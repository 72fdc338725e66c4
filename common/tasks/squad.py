"""Extractive question answering (SQuAD v1.1 and v2.0) as a :class:`~.base.Task`; the work is in :mod:`.qa`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .base import Task, draw_classes

if TYPE_CHECKING:
    import pandas as pd
    from datasets import Dataset


@dataclass(frozen=True, kw_only=True)
class ExtractiveQATask(Task):
    """Answer spans in a context: start and end logits over the tokens; metric SQuAD F1 (or exact match)."""

    version_2: bool = False  # unanswerable questions allowed (SQuAD v2.0)
    kind: str = "qa"
    metric: str = "f1"
    chance: float = 5.0  # a SQuAD F1 (points) at or below which a model is taken to be at chance level
    max_length: int = 384
    batch_size: int = 12
    label_keys: frozenset[str] = frozenset({"start_positions", "end_positions"})
    serving_inputs: tuple[tuple[str, bool], ...] = (("question", True), ("context", True))
    serving_example: tuple[tuple[str, str], ...] = (
        ("question", "Who wrote it?"),
        ("context", "It was written by Ann Lee in 1990."),
    )

    def load_data(
        self,
        source: str | Path,
        split: str = "train",
        text_columns: Sequence[str] | None = None,
        label_column: str | None = None,
    ) -> Dataset:
        from .data import load_hub
        from .data_files import read_guarded
        from .qa import load_squad

        path = Path(source)
        if not path.exists():
            return load_squad(load_hub(str(source), self, split), version_2=self.version_2)
        return read_guarded(path, lambda: load_squad(path, version_2=self.version_2))

    def encode(self, ds: Dataset, tokenizer: Any, max_length: int | None = None) -> list[dict]:
        from .qa import prepare_train_features

        max_length = max_length or self.max_length
        return prepare_train_features(ds, tokenizer, max_length=max_length, doc_stride=min(128, max_length // 3))

    def auto_model_class(self) -> Any:
        from transformers import AutoModelForQuestionAnswering

        return AutoModelForQuestionAnswering

    def sampled_loss(self, outputs: Any, generator: torch.Generator) -> torch.Tensor:
        """Cross-entropy of the start and of the end logits against positions drawn from their softmax."""
        ce = nn.functional.cross_entropy
        start, end = outputs.start_logits, outputs.end_logits
        return (ce(start, draw_classes(start, generator)) + ce(end, draw_classes(end, generator))) / 2

    def evaluate(
        self,
        model: nn.Module,
        tokenizer: Any,
        dev: Dataset,
        device: torch.device | str = "cpu",
        batch_size: int = 64,
        progress: bool = False,
    ) -> dict[str, float]:
        from .qa import evaluate_qa

        return evaluate_qa(
            model,
            tokenizer,
            dev,
            batch_size=batch_size,
            max_length=self.max_length,
            device=device,
            version_2=self.version_2,
            progress=progress,
        )

    def predict(self, model: nn.Module, tokenizer: Any, frame: pd.DataFrame, batch_size: int = 64) -> pd.DataFrame:
        """``answer``, its character ``start`` and ``end`` in the context and its ``score`` from ``question`` and
        ``context`` (an empty answer, -1 and NaN where the model finds none)."""
        import pandas as pd

        from .qa import answer_questions

        missing = [c for c in ("question", "context") if c not in frame.columns]
        if missing:
            raise ValueError(
                f"a question-answering model needs 'question' and 'context' columns; missing {missing}, "
                f"got {list(frame.columns)}"
            )
        if frame.empty:
            return pd.DataFrame({"answer": [], "start": [], "end": [], "score": []})
        spans = answer_questions(
            model,
            tokenizer,
            frame["question"].astype(str).tolist(),
            frame["context"].astype(str).tolist(),
            max_length=self.max_length,
            version_2=self.version_2,
        )
        none = {"answer": "", "start": -1, "end": -1, "score": float("nan")}
        return pd.DataFrame([span or none for span in spans], columns=["answer", "start", "end", "score"])
