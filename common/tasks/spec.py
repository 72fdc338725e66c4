"""The tasks fastprune knows: GLUE classification/regression and SQuAD extractive QA."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import ConfigError

TaskKind = Literal["classification", "regression", "qa"]
LABEL_KEYS = frozenset({"labels", "start_positions", "end_positions"})  # the batch keys that carry labels


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: TaskKind
    metric: str  # the primary dev metric
    num_labels: int  # 1 for regression, 2 (start/end logits) for QA
    # Candidate column sets, tried in order: GLUE tsv headers first, then the hub's `glue` names.
    text_columns: tuple[tuple[str, ...], ...] = ()
    label_columns: tuple[str, ...] = ()
    label_names: tuple[str, ...] | None = None  # string labels in files, in id order
    max_length: int = 128
    batch_size: int = 32
    avg_seq_len: float | None = None  # the reference code's MAC-model sequence length
    hub: tuple[str, str | None] | None = None  # (path, config) for `datasets.load_dataset`
    headerless_tsv: tuple[str, ...] | None = None  # column names of a GLUE tsv without header (CoLA)

    @property
    def is_qa(self) -> bool:
        return self.kind == "qa"


_NLI = ("entailment", "not_entailment")

TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        TaskSpec(
            "cola",
            "classification",
            "matthews",
            2,
            text_columns=(("sentence",),),
            label_columns=("label",),
            hub=("nyu-mll/glue", "cola"),
            headerless_tsv=("source", "label", "original_label", "sentence"),
        ),
        TaskSpec(
            "sst2",
            "classification",
            "accuracy",
            2,
            text_columns=(("sentence",),),
            label_columns=("label",),
            max_length=64,
            avg_seq_len=25.16,
            hub=("nyu-mll/glue", "sst2"),
        ),
        TaskSpec(
            "mrpc",
            "classification",
            "accuracy",
            2,
            text_columns=(("#1 String", "#2 String"), ("sentence1", "sentence2")),
            label_columns=("Quality", "label"),
            avg_seq_len=53.24,
            hub=("nyu-mll/glue", "mrpc"),
        ),
        TaskSpec(
            "stsb",
            "regression",
            "spearman",
            1,
            text_columns=(("sentence1", "sentence2"),),
            label_columns=("score", "label"),
            avg_seq_len=31.47,
            hub=("nyu-mll/glue", "stsb"),
        ),
        TaskSpec(
            "qqp",
            "classification",
            "accuracy",
            2,
            text_columns=(("question1", "question2"),),
            label_columns=("is_duplicate", "label"),
            avg_seq_len=30.55,
            hub=("nyu-mll/glue", "qqp"),
        ),
        TaskSpec(
            "mnli",
            "classification",
            "accuracy",
            3,
            text_columns=(("sentence1", "sentence2"), ("premise", "hypothesis")),
            label_columns=("gold_label", "label"),
            label_names=("entailment", "neutral", "contradiction"),
            avg_seq_len=39.05,
            hub=("nyu-mll/glue", "mnli"),
        ),
        TaskSpec(
            "qnli",
            "classification",
            "accuracy",
            2,
            text_columns=(("question", "sentence"),),
            label_columns=("label",),
            label_names=_NLI,
            avg_seq_len=50.97,
            hub=("nyu-mll/glue", "qnli"),
        ),
        TaskSpec(
            "rte",
            "classification",
            "accuracy",
            2,
            text_columns=(("sentence1", "sentence2"),),
            label_columns=("label",),
            label_names=_NLI,
            avg_seq_len=64.59,
            hub=("nyu-mll/glue", "rte"),
        ),
        TaskSpec(
            "squad",
            "qa",
            "f1",
            2,
            max_length=384,
            batch_size=12,
            avg_seq_len=170,
            hub=("rajpurkar/squad", None),
        ),
        TaskSpec(
            "squad_v2",
            "qa",
            "f1",
            2,
            max_length=384,
            batch_size=12,
            avg_seq_len=170,
            hub=("rajpurkar/squad_v2", None),
        ),
    )
}


def get_task(name: str) -> TaskSpec:
    key = name.lower().replace("-", "")
    key = {"squadv2": "squad_v2", "squad2": "squad_v2"}.get(key, key)
    if key not in TASKS:
        raise ConfigError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    return TASKS[key]
