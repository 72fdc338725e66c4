"""The tasks fastprune knows: GLUE classification/regression, SQuAD extractive QA and causal language modelling,
as registered :class:`~.base.Task` objects; :func:`~.base.register_task` adds others."""

from __future__ import annotations

from typing import Any

from .base import LABEL_KEYS, LabelSource, Task, lookup_task, register_task
from .causal_lm import CausalLMTask
from .embedding import EmbeddingTask
from .glue import ClassificationTask, RegressionTask
from .squad import ExtractiveQATask

__all__ = ["LABEL_KEYS", "TASKS", "LabelSource", "Task", "TaskSpec", "get_task", "register_task", "task_for_model"]

TaskSpec = Task  # the name callers used before tasks became objects


_NLI = ("entailment", "not_entailment")

_BUILT_IN: tuple[Task, ...] = (
    ClassificationTask(
        name="cola",
        metric="matthews",
        num_labels=2,
        text_columns=(("sentence",),),
        label_columns=("label",),
        hub=("nyu-mll/glue", "cola"),
        headerless_tsv=("source", "label", "original_label", "sentence"),
    ),
    ClassificationTask(
        name="sst2",
        metric="accuracy",
        num_labels=2,
        chance=50.0,
        text_columns=(("sentence",),),
        label_columns=("label",),
        max_length=64,
        avg_seq_len=25.16,
        hub=("nyu-mll/glue", "sst2"),
    ),
    ClassificationTask(
        name="mrpc",
        metric="accuracy",
        num_labels=2,
        chance=50.0,
        text_columns=(("#1 String", "#2 String"), ("sentence1", "sentence2")),
        label_columns=("Quality", "label"),
        avg_seq_len=53.24,
        hub=("nyu-mll/glue", "mrpc"),
    ),
    RegressionTask(
        name="stsb",
        metric="spearman",
        text_columns=(("sentence1", "sentence2"),),
        label_columns=("score", "label"),
        avg_seq_len=31.47,
        hub=("nyu-mll/glue", "stsb"),
    ),
    ClassificationTask(
        name="qqp",
        metric="accuracy",
        num_labels=2,
        chance=50.0,
        text_columns=(("question1", "question2"),),
        label_columns=("is_duplicate", "label"),
        avg_seq_len=30.55,
        hub=("nyu-mll/glue", "qqp"),
    ),
    ClassificationTask(
        name="mnli",
        metric="accuracy",
        num_labels=3,
        chance=100 / 3,
        text_columns=(("sentence1", "sentence2"), ("premise", "hypothesis")),
        label_columns=("gold_label", "label"),
        label_names=("entailment", "neutral", "contradiction"),
        avg_seq_len=39.05,
        hub=("nyu-mll/glue", "mnli"),
    ),
    ClassificationTask(
        name="qnli",
        metric="accuracy",
        num_labels=2,
        chance=50.0,
        text_columns=(("question", "sentence"),),
        label_columns=("label",),
        label_names=_NLI,
        avg_seq_len=50.97,
        hub=("nyu-mll/glue", "qnli"),
    ),
    ClassificationTask(
        name="rte",
        metric="accuracy",
        num_labels=2,
        chance=50.0,
        text_columns=(("sentence1", "sentence2"),),
        label_columns=("label",),
        label_names=_NLI,
        avg_seq_len=64.59,
        hub=("nyu-mll/glue", "rte"),
    ),
    ExtractiveQATask(
        name="squad",
        avg_seq_len=170,
        hub=("rajpurkar/squad", None),
    ),
    ExtractiveQATask(
        name="squad_v2",
        version_2=True,
        avg_seq_len=170,
        hub=("rajpurkar/squad_v2", None),
    ),
    CausalLMTask(name="causal-lm"),
    EmbeddingTask(name="embedding", hub=("sentence-transformers/stsb", None)),
)

_TASK_ALIASES = {
    "squad_v2": ("squad2",),
    "causal-lm": ("clm",),
    "embedding": ("sentence-embedding", "sentence-transformers"),
}
for _task in _BUILT_IN:
    register_task(_task, aliases=_TASK_ALIASES.get(_task.name, ()))

TASKS: dict[str, Task] = {t.name: t for t in _BUILT_IN}
"""The built-in tasks; :func:`get_task` also finds those registered later."""


def get_task(name: str) -> Task:
    """The registered task of that name (case, ``-`` and ``_`` do not matter), or a clear error listing them."""
    return lookup_task(name)


def task_for_model(model: Any) -> Task:
    """The built-in task whose Fisher loss and tuning fit a model's head, for library callers that name no task:
    extractive QA, regression (one output) or classification."""
    if "QuestionAnswering" in type(model).__name__:
        return TASKS["squad"]
    return TASKS["stsb"] if getattr(model.config, "num_labels", 2) == 1 else TASKS["sst2"]
