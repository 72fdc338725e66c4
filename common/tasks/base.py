"""The task seam: what fastprune needs to know about a task, stated by one object per task, registered by name.

A :class:`Task` says how to read its data (files, columns, labels), how to batch it (tokenize, maximum length,
batch size), the Fisher loss of a batch (against the data's labels or labels sampled from the model), how to
evaluate a model on dev data (its metric's name and direction), its chance level, what the MLflow pyfunc reads and
how it predicts from raw input. The method (Fisher pass, search, tuning), the stages and the registry ask the task;
only the task kinds themselves (``glue``, ``squad`` and any registered with :func:`register_task`) know their data.

Heavy modules (datasets, scipy, pandas) are imported by the methods that use them: this module and the built-in
task declarations load in milliseconds, as every pipeline step is a fresh process.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from ..errors import ConfigError, ModelTaskMismatchError

if TYPE_CHECKING:
    import pandas as pd
    from datasets import Dataset

LabelSource = Literal["data", "model"]
"""Where the Fisher loss takes its labels: the data's (the empirical Fisher) or drawn from the model (the true one)."""
LABEL_KEYS = frozenset({"labels", "start_positions", "end_positions"})
"""The batch keys that carry labels in the built-in tasks."""
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
"""The batch keys an encoder reads."""


def draw_classes(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One class per row, drawn from the softmax of ``logits`` (no gradient through the draw): sampled labels."""
    probs = torch.softmax(logits.detach().float().cpu(), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1).to(logits.device)


@dataclass(frozen=True, kw_only=True)
class Task(ABC):
    """One task. Subclasses implement reading, encoding, evaluation and serving; the defaults below serve any task
    whose model returns its own loss from a labelled batch."""

    name: str
    metric: str  # the primary dev metric, a key of :meth:`evaluate`'s result
    kind: str = "custom"  # a label for records and reports; nothing branches on it
    higher_is_better: bool = True  # the metric's direction (False for perplexity)
    chance: float = 0.0  # the metric of a model that guesses: a dev metric no better than this gets a warning
    max_length: int = 128
    batch_size: int = 32
    avg_seq_len: float | None = None  # the reference code's MAC-model sequence length
    hub: tuple[str, str | None] | None = None  # (path, config) for `datasets.load_dataset`
    label_keys: frozenset[str] = frozenset({"labels"})  # the batch keys that carry labels
    reads_first_token: bool = False  # only the first token of the last layer feeds the head (mask tuning)
    serving_inputs: tuple[tuple[str, bool], ...] = (("text", True),)  # (column, required) of the pyfunc's input
    serving_example: tuple[tuple[str, str], ...] = (("text", "a fine movie"),)  # one input row (MLflow runs it)
    checks_data: bool = False  # :meth:`check_data` needs the tokenizer: run it before any compute
    sample_unit: str = "training examples"  # what :meth:`draw_sample` draws, for the warnings
    refit_ridge: float | Literal["auto"] | None = None  # the refit's default ridge for this task (None: tuning's)
    input_ridge: float | None = None  # the refit of the input projections: its default ridge (None: not refit)
    resplit_rearranges: bool = False  # the budget re-split rearranges each layer it re-splits (rearranged masks only)
    rearrange_shrink: float | Literal["auto"] = 0.0  # the rearrangement's default shrinkage (rearrange_units)
    fisher_rows: Literal["example", "token"] = "example"  # the Fisher pass's default gradient rows (fisher_rows)
    generates: bool = False  # the model continues text: the calibration can be self-generated (calib_generate)

    # ----- reading and batching --------------------------------------------------------------------------------
    @abstractmethod
    def load_data(
        self,
        source: str | Path,
        split: str = "train",
        text_columns: Sequence[str] | None = None,
        label_column: str | None = None,
    ) -> Dataset:
        """The task's examples from a local file or, when ``source`` is not a path, from the `datasets` hub."""

    @abstractmethod
    def encode(self, ds: Dataset, tokenizer: Any, max_length: int | None = None) -> list[dict]:
        """Per-example feature dicts (python lists, unpadded), labels included under :attr:`label_keys`."""

    def batches(
        self,
        ds: Dataset,
        tokenizer: Any,
        batch_size: int | None = None,
        max_length: int | None = None,
        group_by_length: bool = True,
    ) -> list[dict[str, torch.Tensor]]:
        """Tokenized, dynamically padded batches (labels included), grouped by length unless asked not to."""
        from .data import make_batches

        features = self.encode(ds, tokenizer, max_length)
        return make_batches(features, tokenizer, batch_size or self.batch_size, group_by_length, self.label_keys)

    def draw_sample(
        self, ds: Dataset, num_samples: int, seed: int, replace: bool = True, max_length: int | None = None
    ) -> tuple[Dataset, int]:
        """The pruning sample: ``num_samples`` examples drawn by ``seed`` (with replacement unless not ``replace``),
        and how many the data holds to draw from. ``max_length`` is the sample's (tasks that cut windows use it)."""
        from .data import sample_dataset

        return sample_dataset(ds, num_samples, seed, replace), len(ds)

    def check_data(self, ds: Dataset, tokenizer: Any, max_length: int | None, what: str) -> None:
        """Raise a :class:`~fastprune.common.errors.DataError` when the data cannot make one example with this
        tokenizer (tasks that set :attr:`checks_data`; any data will do by default)."""
        return None

    def examples(self, batch: dict) -> int:
        """How many examples a batch holds (one Fisher row each)."""
        return len(batch["input_ids"])

    def unlabeled(self, batch: dict) -> dict:
        """The batch without its labels."""
        return {k: v for k, v in batch.items() if k not in self.label_keys}

    def model_inputs(self, batch: dict) -> dict:
        """What the model reads of a batch."""
        return {k: v for k, v in batch.items() if k in MODEL_INPUTS}

    # ----- the model -------------------------------------------------------------------------------------------
    @abstractmethod
    def auto_model_class(self) -> Any:
        """The ``transformers`` auto class that loads a model fine-tuned for the task."""

    def check_model(self, config: Any, where: str) -> None:
        """Raise :class:`~fastprune.common.errors.ModelTaskMismatchError` unless the model has the task's head (an
        architecture named ``*`` + the auto class's head, e.g. ``BertForSequenceClassification``)."""
        head = self.auto_model_class().__name__.removeprefix("AutoModel")
        architectures = getattr(config, "architectures", None) or []
        if not any(a.endswith(head) for a in architectures):
            decoder = any(a.endswith("ForCausalLM") for a in architectures)
            hint = (
                "it is a causal language model: use --task causal-lm" if decoder else "fine-tune it on the task first"
            )
            raise ModelTaskMismatchError(
                f"{where} is not fine-tuned for task {self.name}: its architectures are {architectures or 'unset'}, "
                f"expected a *{head} model ({hint})"
            )

    def model_folder(self, source: str | Path) -> str | Path:
        """Where the model's config, weights and tokenizer are, given what the user named (the source itself)."""
        return source

    def attach(self, model: nn.Module, source: str | Path) -> nn.Module:
        """The model loaded from ``source``, with what the task reads beside its weights (nothing by default)."""
        return model

    def check_source(self, source: str | Path) -> None:  # noqa: B027 (a hook: most tasks check nothing here)
        """Refuse a local model folder the task cannot read, before anything loads (nothing to check by default)."""

    def pretrained_model(self, source: str | Path, reinit_mismatched: bool = False) -> nn.Module:
        """A pretrained (or other task's) model with a new head for this task, to fine-tune."""
        return self.auto_model_class().from_pretrained(source)

    # ----- the Fisher loss ------------------------------------------------------------------------------------
    def fisher_loss(
        self, model: nn.Module, batch: dict, labels: LabelSource = "data", generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The batch-mean loss whose gradient w.r.t. the masks is the Fisher pass's: against the batch's labels,
        or (``labels="model"``) against labels drawn by ``generator`` from the model's own predictions."""
        if labels == "model":
            return self.sampled_loss(model(**self.unlabeled(batch)), generator or torch.Generator())
        return self.data_loss(model(**batch), batch)

    def data_loss(self, outputs: Any, batch: dict) -> torch.Tensor:
        """The loss against the batch's labels: the one the model computes."""
        if getattr(outputs, "loss", None) is None:
            raise ValueError("the model returned no loss: the batches must carry labels for the task")
        return outputs.loss

    def sampled_loss(self, outputs: Any, generator: torch.Generator) -> torch.Tensor:
        """The loss against labels sampled from the model's predictions (no gradient through the draw)."""
        raise ConfigError(f"task {self.name} has no label-free Fisher loss: use labels from the data")

    # ----- held-out validation of a stage (``--holdout``) ------------------------------------------------------
    def validation_reference(self, model: nn.Module, batch: dict) -> Any:
        """What the dense model gives :meth:`validation_loss` for a held-out batch (None: the labels suffice)."""
        return None

    def validation_loss(self, model: nn.Module, batch: dict, reference: Any) -> torch.Tensor:
        """The held-out loss by which a stage's masks are kept or rejected: the task loss against the labels."""
        return self.fisher_loss(model, batch)

    # ----- evaluation ------------------------------------------------------------------------------------------
    @abstractmethod
    def evaluate(
        self,
        model: nn.Module,
        tokenizer: Any,
        dev: Dataset,
        device: torch.device | str = "cpu",
        batch_size: int = 64,
        progress: bool = False,
    ) -> dict[str, float]:
        """All metrics of the task on dev data; the primary one under :attr:`metric`."""

    def metric_drop(self, before: float, after: float) -> float:
        """How much worse ``after`` is than ``before`` (positive: worse), in the metric's units."""
        return before - after if self.higher_is_better else after - before

    def better_than_chance(self, value: float, chance: float | None = None) -> bool:
        """Whether ``value`` beats ``chance`` (default :attr:`chance`; a model-dependent level such as a causal LM's
        vocabulary size comes with its evaluation) in the metric's direction."""
        level = self.chance if chance is None else chance
        return value > level if self.higher_is_better else value < level

    # ----- serving (the MLflow pyfunc) -------------------------------------------------------------------------
    @abstractmethod
    def predict(self, model: nn.Module, tokenizer: Any, frame: pd.DataFrame, batch_size: int = 64) -> pd.DataFrame:
        """Predictions from raw input rows (the columns of :attr:`serving_inputs`)."""


_REGISTRY: dict[str, Task] = {}
_ALIASES: dict[str, str] = {}


def _key(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


def register_task(task: Task, aliases: Sequence[str] = (), replace: bool = False) -> Task:
    """Make ``task`` known by its name (and ``aliases``; case, ``-`` and ``_`` do not matter) to :func:`get_task`,
    hence to every stage, the CLI and the pipeline. A name already taken is refused unless ``replace``."""
    if not isinstance(task, Task):
        raise ConfigError(f"register_task needs a Task, got {type(task).__name__}")
    keys = [_key(task.name), *map(_key, aliases)]
    taken = [k for k in keys if k in _ALIASES and _REGISTRY[_ALIASES[k]] is not task]
    if taken and not replace:
        raise ConfigError(f"task name(s) {taken} already registered (pass replace=True to replace them)")
    _REGISTRY[task.name] = task
    _ALIASES.update(dict.fromkeys(keys, task.name))
    return task


def registered_tasks() -> dict[str, Task]:
    """Every registered task by name, in registration order."""
    return dict(_REGISTRY)


def lookup_task(name: str) -> Task:
    found = _ALIASES.get(_key(name))
    if found is None:
        raise ConfigError(f"unknown task {name!r}; valid tasks: {', '.join(_REGISTRY)}")
    return _REGISTRY[found]
