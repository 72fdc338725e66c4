"""Sentence embeddings (sentence-transformers models): a :class:`~.base.Task` that needs no labels to prune.

The model is a sentence-transformers folder (see :mod:`.st_folder`); fastprune loads its encoder (``AutoModel``) and
carries its pooling: ``embedding = pool(last hidden state)`` [+ L2 normalisation].

- Calibration data: sentences (one text column, or a ``.txt`` file of one sentence a line) or sentence pairs (two
  columns, e.g. STS-B's ``sentence1``/``sentence2``); scores, when present, are not used.
- The Fisher loss is label-free and measures the geometry of the embeddings: the in-batch contrastive softmax over
  cosine similarities (scaled by 20, as MultipleNegativesRankingLoss) with each target drawn from the model's own
  distribution (the true Fisher): for pairs, each first sentence over the batch's second sentences and back; for
  single sentences, each sentence over the others of its batch (its stochastic neighbours). The Fisher pass's
  ``labels`` setting does not change it: there are no labels to read.
- Evaluation: the Spearman correlation (in percent) of the cosine similarity of each pair with its gold score, the
  sentence-transformers convention (``spearman_cosine``); the dev file needs a score column.
- Serving: ``embedding`` (a list of floats) per ``text``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import torch
from torch import nn

from ..errors import DataError, ModelTaskMismatchError
from .base import Task, draw_classes
from .st_folder import POOLING_KEY, Pooling, model_pooling, pool, read_st_folder

if TYPE_CHECKING:
    import pandas as pd
    from datasets import Dataset

log = logging.getLogger(__name__)
_TABLES = (".tsv", ".csv", ".json", ".jsonl", ".parquet")
EmbeddingObjective = Literal["contrastive", "gaussian"]


@dataclass(frozen=True, kw_only=True)
class EmbeddingTask(Task):
    """Sentence embeddings of a sentence-transformers model; ``spearman_cosine`` on a scored pairs file."""

    metric: str = "spearman_cosine"
    kind: str = "embedding"
    chance: float = 0.0
    label_keys: frozenset[str] = frozenset()
    # Candidate column sets, tried in order (pairs first); the gold score's column for evaluation.
    text_columns: tuple[tuple[str, ...], ...] = (
        ("sentence1", "sentence2"),
        ("sentence_a", "sentence_b"),
        ("anchor", "positive"),
        ("text", "text_pair"),
        ("sentence",),
        ("text",),
    )
    label_columns: tuple[str, ...] = ("score", "label", "similarity")
    headerless_tsv: tuple[str, ...] | None = None
    serving_inputs: tuple[tuple[str, bool], ...] = (("text", True),)
    scale: float = 20.0  # the contrastive softmax's inverse temperature (MultipleNegativesRankingLoss's scale)
    objective: EmbeddingObjective = "contrastive"  # or "gaussian": y ~ N(embedding, I), the regression analogue
    # The refit's ridge, chosen per block by cross-validation: 0.01 (the encoders' default) fits the calibration
    # pairs too closely at high budgets, a fixed strong one loses at low budgets (all-MiniLM-L6-v2 on STS-B, seed 0:
    # FLOPs 0.8 0.01 -> 86.54, 1 -> 86.88, 10 -> 87.08, auto -> 86.80; FLOPs 0.3 0.01 -> 83.39, 1 -> 82.26,
    # auto -> 83.42; benchmarks/results/embedding_notes.md).
    refit_ridge: float | Literal["auto"] | None = "auto"
    # The re-split's search re-chooses a layer's units by diagonal Fisher; rearranging them after it (as the masks
    # were) won on all-mpnet-base-v2 (FLOPs 0.5, global split: 85.77 -> 86.44) but lost on SST-2 classification
    # (-0.35 on average over 2 seeds x FLOPs 0.3-0.6), where the rearrangement itself helps less.
    resplit_rearranges: bool = True

    # ----- the model: a sentence-transformers folder -------------------------------------------------------------
    def model_folder(self, source: str | Path) -> str | Path:
        root = self.st_root(source)
        return root / read_st_folder(root).transformer_path

    def attach(self, model: nn.Module, source: str | Path) -> nn.Module:
        setattr(model.config, POOLING_KEY, read_st_folder(self.st_root(source)).model_dump())
        return model

    def check_source(self, source: str | Path) -> None:
        if Path(source).expanduser().is_dir():
            read_st_folder(Path(source).expanduser())

    @staticmethod
    def st_root(source: str | Path) -> Path:
        """The local folder of ``source`` (a hub id is downloaded when the hub is reachable)."""
        path = Path(source).expanduser()
        if path.is_dir():
            return path
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(str(source)))
        except Exception as e:  # the hub raises many kinds of errors
            raise ModelTaskMismatchError(
                f"{source} is not a local sentence-transformers folder and cannot be fetched from the hub: {e}"
            ) from None

    def auto_model_class(self) -> Any:
        from transformers import AutoModel

        return AutoModel

    def check_model(self, config: Any, where: str) -> None:
        """Any encoder of a supported family: the pooling is the sentence-transformers folder's."""

    # ----- reading and batching ----------------------------------------------------------------------------------
    def load_data(
        self,
        source: str | Path,
        split: str = "train",
        text_columns: Sequence[str] | None = None,
        label_column: str | None = None,
    ) -> Dataset:
        """``text_a``, ``text_b`` (empty for single sentences) and, when the file has one, a float ``label`` (the
        gold score); a ``validation`` split must be scored pairs."""
        from datasets import Dataset

        from .data import pick_columns

        records, where = self._records(source, split)
        texts, score = pick_columns(records, cast(Any, self), where, text_columns, label_column)
        if split == "validation" and (len(texts) < 2 or score is None):
            scores = [label_column] if label_column else list(self.label_columns)
            raise DataError(
                f"{where}: evaluating task {self.name} needs sentence pairs with a gold score (columns e.g. "
                f"sentence1, sentence2, {' or '.join(scores)}); found columns {list(records[0])}"
            )
        columns: dict[str, list] = {
            "text_a": [str(r[texts[0]]) for r in records],
            "text_b": [str(r[texts[1]]) if len(texts) > 1 else "" for r in records],
        }
        if score is not None:
            columns["label"] = [self._score(r[score], where, i) for i, r in enumerate(records)]
        log.info("loaded %d examples from %s (text %s, score %s)", len(records), where, "+".join(texts), score)
        return Dataset.from_dict(columns)

    def _records(self, source: str | Path, split: str) -> tuple[list[dict], str]:
        from .data import load_hub, read_records
        from .data_files import read_guarded

        path = Path(source)
        if path.is_dir():
            raise DataError(f"{path}: expected a file ending in one of {sorted((*_TABLES, '.txt'))}")
        if path.is_file() and path.suffix.lower() == ".txt":
            lines = read_guarded(path, lambda: path.read_text(encoding="utf-8").splitlines())
            records = [{"sentence": line.strip()} for line in lines if line.strip()]
        elif path.is_file():
            records = read_guarded(path, lambda: read_records(path, cast(Any, self)))  # its columns as GLUE's
        elif path.suffix.lower() in (*_TABLES, ".txt") or "/" in str(source) and path.parent.exists():
            raise DataError(f"data file {source} does not exist")
        else:
            return load_hub(str(source), self, split), f"hub dataset {source}"
        if not records:
            raise DataError(f"{path} has no examples")
        return records, str(path)

    def _score(self, value: Any, where: str, row: int) -> float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise DataError(f"{where}: row {row}: score {value!r} is not a number (task {self.name})") from None

    def parse_label(self, value: Any, where: str, row: int) -> float:
        return self._score(value, where, row)

    def encode(self, ds: Dataset, tokenizer: Any, max_length: int | None = None) -> list[dict]:
        """The sentences' features: every ``text_a``, then every non-empty ``text_b``."""
        texts = [*ds["text_a"], *(t for t in ds["text_b"] if t)]
        enc = tokenizer(texts, truncation=True, max_length=max_length or self.max_length)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
        return [{k: enc[k][i] for k in keys} for i in range(len(texts))]

    def batches(
        self,
        ds: Dataset,
        tokenizer: Any,
        batch_size: int | None = None,
        max_length: int | None = None,
        group_by_length: bool = True,
    ) -> list[dict[str, torch.Tensor]]:
        """Batches of ``batch_size`` sentences, or of ``batch_size`` pairs whose rows are the first sentences then
        the second ones (``pairs``: how many), so that the contrastive loss pairs them."""
        features = self.encode(ds, tokenizer, max_length)
        n = len(ds)
        paired = len(features) == 2 * n and n > 0
        length = [len(features[i]["input_ids"]) for i in range(len(features))]
        longest = [max(length[i], length[i + n] if paired else 0) for i in range(n)]
        order = sorted(range(n), key=longest.__getitem__) if group_by_length else list(range(n))
        size = batch_size or self.batch_size
        out = []
        for first in range(0, n, size):
            chunk = order[first : first + size]
            rows = [features[i] for i in chunk] + ([features[i + n] for i in chunk] if paired else [])
            batch = dict(tokenizer.pad(rows, return_tensors="pt"))
            if paired:
                batch["pairs"] = torch.tensor(len(chunk))
            out.append(batch)
        return out

    # ----- embeddings and the Fisher loss ------------------------------------------------------------------------
    def embed(self, model: nn.Module, batch: dict) -> torch.Tensor:
        """The batch's sentence embeddings [rows, hidden], pooled as the model's folder says."""
        inputs = self.model_inputs(batch)
        hidden = model(**inputs).last_hidden_state
        return pool(hidden, inputs["attention_mask"], model_pooling(model))

    def fisher_loss(
        self, model: nn.Module, batch: dict, labels: Any = "data", generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The label-free loss of :attr:`objective` with targets drawn from the model (whatever ``labels`` says)."""
        generator = generator or torch.Generator().manual_seed(0)
        embeddings = self.embed(model, batch)
        pairs = int(batch.get("pairs", 0))
        if self.objective == "gaussian" or len(embeddings) < 2:
            noise = torch.randn(embeddings.shape, generator=generator).to(embeddings.device, embeddings.dtype)
            return nn.functional.mse_loss(embeddings, embeddings.detach() + noise, reduction="sum") / len(embeddings)
        logits = self.similarity_logits(embeddings, pairs)
        if pairs:
            return (self._sampled_ce(logits, generator) + self._sampled_ce(logits.T, generator)) / 2
        return self._sampled_ce(logits, generator)

    def similarity_logits(self, embeddings: torch.Tensor, pairs: int) -> torch.Tensor:
        """The in-batch contrastive logits: ``scale`` x cosine of each first sentence with each second one
        (``pairs``), else of every sentence with every other (-inf on the diagonal)."""
        unit = nn.functional.normalize(embeddings.float(), dim=-1)
        if pairs:
            return self.scale * unit[:pairs] @ unit[pairs:].T
        eye = torch.eye(len(unit), dtype=torch.bool, device=unit.device)
        return (self.scale * unit @ unit.T).masked_fill(eye, -torch.inf)

    @staticmethod
    def _sampled_ce(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return nn.functional.cross_entropy(logits, draw_classes(logits, generator))

    def _similarity_rows(self, model: nn.Module, batch: dict) -> torch.Tensor:
        """Log-probabilities of the in-batch similarity distributions, one row per sentence (both directions for
        pairs)."""
        pairs = int(batch.get("pairs", 0))
        logits = self.similarity_logits(self.embed(model, batch), pairs)
        return torch.cat([logits, logits.T]).log_softmax(-1) if pairs else logits.log_softmax(-1)

    def validation_reference(self, model: nn.Module, batch: dict) -> torch.Tensor:
        return self._similarity_rows(model, batch)

    def validation_loss(self, model: nn.Module, batch: dict, reference: torch.Tensor) -> torch.Tensor:
        """KL divergence of the masked model's in-batch similarity distributions from the dense model's (mean over
        rows): unlabeled sentences have no loss of their own, and targets drawn from the masked model itself would
        reward any sharper distribution, however far its geometry moved."""
        student = self._similarity_rows(model, batch)
        # sentences with no in-batch partner (-inf; NaN for a batch of one) carry no distribution
        terms = torch.where(reference.isfinite(), reference.exp() * (reference - student), 0.0)
        return terms.sum(-1).mean()

    # ----- evaluation and serving ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def embed_texts(
        self, model: nn.Module, tokenizer: Any, texts: Sequence[str], device: torch.device | str, batch_size: int = 64
    ) -> torch.Tensor:
        """Embeddings [len(texts), hidden] (float, CPU), in the texts' order (batched by similar length)."""
        pooling: Pooling = model_pooling(model)
        max_length = pooling.max_seq_length or self.max_length
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        chunks = []
        model.eval()
        for first in range(0, len(texts), batch_size):
            chunk = [texts[i] for i in order[first : first + batch_size]]
            enc = tokenizer(chunk, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
            chunks.append(self.embed(model, {k: v.to(device) for k, v in enc.items()}).float().cpu())
        hidden = getattr(model.config, "hidden_size", 0)
        sorted_out = torch.cat(chunks) if chunks else torch.zeros(0, hidden)
        out = torch.empty_like(sorted_out)
        out[order] = sorted_out
        return out

    def evaluate(
        self,
        model: nn.Module,
        tokenizer: Any,
        dev: Dataset,
        device: torch.device | str = "cpu",
        batch_size: int = 64,
        progress: bool = False,
    ) -> dict[str, float]:
        """``spearman_cosine`` and ``pearson_cosine`` (percent) of the pairs' cosine similarity with the gold score."""
        import numpy as np

        from .evaluate import regression_metrics

        if "label" not in dev.column_names or not any(dev["text_b"]):
            raise DataError(f"evaluating task {self.name} needs sentence pairs with a gold score")
        a = self.embed_texts(model, tokenizer, list(dev["text_a"]), device, batch_size)
        b = self.embed_texts(model, tokenizer, list(dev["text_b"]), device, batch_size)
        cosine = nn.functional.cosine_similarity(a, b, dim=-1).double().numpy()
        found = regression_metrics(cosine, np.asarray(dev["label"], dtype=float))
        return {"spearman_cosine": found["spearman"], "pearson_cosine": found["pearson"]}

    def predict(self, model: nn.Module, tokenizer: Any, frame: pd.DataFrame, batch_size: int = 64) -> pd.DataFrame:
        """``embedding`` (a list of floats) per ``text``."""
        import pandas as pd

        if "text" not in frame.columns:
            raise ValueError(f"the input needs a 'text' column; got {list(frame.columns)}")
        device = next(model.parameters()).device
        embeddings = self.embed_texts(model, tokenizer, frame["text"].astype(str).tolist(), device, batch_size)
        return pd.DataFrame({"embedding": embeddings.double().numpy().tolist()})
