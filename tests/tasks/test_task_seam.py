"""The task seam: a task defined here (not in fastprune) drives the Fisher pass, the search and the stages, and the
gate and the sweep follow a task's metric direction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from datasets import Dataset
from fastprune.common.errors import ConfigError, DataError
from fastprune.common.method.fisher import collect_mask_gradients
from fastprune.common.method.search import search_flops
from fastprune.common.model.arch import adapter_for
from fastprune.common.model.cost import flops_ratio
from fastprune.common.model.export import load_pruned
from fastprune.common.model.masks import Masks, masks_applied
from fastprune.common.ops.registry import accuracy_gate, evaluation_gate, predict_text
from fastprune.common.stages.sweep import Candidate, choose
from fastprune.common.tasks.base import LabelSource, Task
from fastprune.common.tasks.spec import get_task, register_task, task_for_model
from tiny import tiny_config, tiny_model, tiny_tokenizer
from torch import nn
from transformers import AutoModel

SENTENCES = [
    "a fine movie",
    "the plot is thin but the actors are wonderful",
    "dull",
    "one of the best films of the year , funny and moving",
    "it never finds its rhythm",
    "a charming and often affecting journey",
    "the characters are wooden and the dialogue is worse",
    "an ambitious , sprawling and ultimately rewarding film",
]


def _pooled(model: nn.Module, batch: dict) -> torch.Tensor:
    """Mean of the last hidden states over the real tokens: one vector per sentence."""
    hidden = model(**{k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1)


@dataclass(frozen=True, kw_only=True)
class OutputNormTask(Task):
    """A label-free task on a bare encoder (no head): sentences from a text file, one per line; the Fisher loss is
    the mean squared norm of the mean-pooled output; the metric is the mean norm, lower is better."""

    name: str = "toy-output-norm"
    metric: str = "mean_norm"
    kind: str = "toy"
    higher_is_better: bool = False
    chance: float = 1e9
    label_keys: frozenset[str] = frozenset()
    serving_inputs: tuple[tuple[str, bool], ...] = (("text", True),)

    def load_data(
        self,
        source: str | Path,
        split: str = "train",
        text_columns: Sequence[str] | None = None,
        label_column: str | None = None,
    ) -> Dataset:
        lines = [line for line in Path(source).read_text().splitlines() if line.strip()]
        if not lines:
            raise DataError(f"{source} has no sentences")
        return Dataset.from_dict({"text": lines})

    def encode(self, ds: Dataset, tokenizer: Any, max_length: int | None = None) -> list[dict]:
        enc = tokenizer(list(ds["text"]), truncation=True, max_length=max_length or self.max_length)
        return [{k: enc[k][i] for k in ("input_ids", "attention_mask")} for i in range(len(ds))]

    def auto_model_class(self) -> Any:
        return AutoModel

    def check_model(self, config: Any, where: str) -> None:
        pass  # any encoder will do

    def fisher_loss(
        self, model: nn.Module, batch: dict, labels: LabelSource = "data", generator: torch.Generator | None = None
    ) -> torch.Tensor:
        return _pooled(model, batch).pow(2).sum(-1).mean()

    def evaluate(
        self,
        model: nn.Module,
        tokenizer: Any,
        dev: Dataset,
        device: torch.device | str = "cpu",
        batch_size: int = 64,
        progress: bool = False,
    ) -> dict[str, float]:
        with torch.inference_mode():
            norms = [
                _pooled(model, {k: v.to(device) for k, v in b.items()}).norm(dim=-1)
                for b in self.batches(dev, tokenizer, batch_size)
            ]
        return {"mean_norm": float(torch.cat(norms).mean())}

    def predict(self, model: nn.Module, tokenizer: Any, frame: pd.DataFrame, batch_size: int = 64) -> pd.DataFrame:
        batch = tokenizer(frame["text"].astype(str).tolist(), padding=True, return_tensors="pt")
        with torch.inference_mode():
            return pd.DataFrame({"norm": _pooled(model, batch).norm(dim=-1).numpy()})


TOY = register_task(OutputNormTask(), aliases=("toy_norm",), replace=True)


@pytest.fixture
def encoder() -> nn.Module:
    torch.manual_seed(0)
    return AutoModel.from_config(tiny_config("bert", vocab_size=len(tiny_tokenizer()))).eval()


@pytest.fixture
def sentences(tmp_path: Path) -> Path:
    path = tmp_path / "sentences.txt"
    path.write_text("\n".join(SENTENCES * 2))
    return path


def test_registered_task_is_found_by_name_and_alias():
    assert get_task("toy-output-norm") is TOY
    assert get_task("TOY-NORM") is TOY
    with pytest.raises(ConfigError, match="already registered"):
        register_task(OutputNormTask(name="sst2"))
    with pytest.raises(ConfigError, match="valid tasks: .*toy-output-norm"):
        get_task("no-such-task")


def test_fisher_pass_and_search_with_a_task_defined_outside_fastprune(encoder, sentences):
    tokenizer = tiny_tokenizer()
    batches = TOY.batches(TOY.load_data(sentences), tokenizer, batch_size=4)
    grads = collect_mask_gradients(encoder, batches, progress=False, task=TOY)
    dims = adapter_for(encoder).dims(encoder.config)
    assert grads.head.shape == (2 * len(SENTENCES), dims.num_layers, dims.num_heads)  # one row per sentence
    assert torch.isfinite(grads.head).all() and grads.head.abs().sum() > 0 and grads.neuron.abs().sum() > 0

    # the gradient is the task's loss's: a finite difference of that loss on one batch agrees
    one = collect_mask_gradients(encoder, batches[:1], progress=False, per_example=False, task=TOY)

    def loss_at(layer: int, head: int, eps: float) -> float:
        masks = Masks.ones(dims)
        masks.head[layer, head] += eps
        with torch.no_grad(), masks_applied(encoder, masks.head, masks.neuron):
            return float(TOY.fisher_loss(encoder, batches[0]).double())

    for layer, head in [(0, 1), (2, 3)]:
        numeric = (loss_at(layer, head, 1e-2) - loss_at(layer, head, -1e-2)) / 2e-2  # float32: a wide step
        assert numeric == pytest.approx(float(one.head[0, layer, head]), rel=0.05, abs=1e-5)

    masks = search_flops(grads.head_importance(), grads.neuron_importance(), dims, 10.0, 0.5)
    assert flops_ratio(masks, dims, 10.0) <= 0.5 + 1e-6
    assert 0 < masks.head.sum() < dims.num_layers * dims.num_heads
    assert masks.neuron.sum() < masks.neuron.numel()


def test_stages_run_a_registered_task(encoder, sentences, tmp_path):
    from fastprune.common.model.export import save_pruned
    from fastprune.common.stages.run import run_stage

    source = tmp_path / "encoder"
    save_pruned(encoder, source, tiny_tokenizer())
    model = tmp_path / "model"
    prepared = run_stage("prepare", model, {"model": str(source), "task": "toy-norm", "dev_data": str(sentences)})
    assert prepared["task"] == "toy-output-norm" and prepared["architecture"] == "BertModel"
    sample = tmp_path / "sample"
    run_stage("sample", sample, {"train_data": str(sentences), "task": "toy-output-norm", "num_samples": 12})
    grads = tmp_path / "grads"
    run_stage("fisher", grads, {"device": "cpu"}, model=model, sample=sample)
    searched = run_stage("search", tmp_path / "searched", {"constraint": 0.5}, model=model, grads=grads)
    assert searched["flops_ratio"] <= 0.5 + 1e-6
    assert sum(searched["heads_per_layer"]) < 3 * 4
    pruned = tmp_path / "pruned"
    run_stage("export", pruned, {}, model=model, masks=tmp_path / "searched")
    ev = run_stage(
        "evaluate",
        tmp_path / "evaluation",
        {"dev_data": str(sentences), "device": "cpu"},
        model=model,
        pruned=pruned,
        searched=tmp_path / "searched",
    )
    assert ev["metric"] == "mean_norm" and ev["higher_is_better"] is False and "warning" not in ev
    assert ev["metric_drop"] == pytest.approx(ev["metric_after"] - ev["metric_before"])  # a rise is the loss
    assert ev["metric_search"] == pytest.approx(ev["metric_after"], rel=1e-4)  # masked == sliced, via the task

    net, tokenizer = load_pruned(pruned)
    got = predict_text(net, tokenizer, TOY, pd.DataFrame({"text": SENTENCES[:3]}))
    assert list(got.columns) == ["norm"] and len(got) == 3


def test_built_in_tasks_state_direction_chance_and_head():
    sst2, stsb, squad = get_task("sst2"), get_task("stsb"), get_task("squad_v2")
    assert sst2.higher_is_better and sst2.chance == 50.0 and not sst2.better_than_chance(50.0)
    assert get_task("mnli").better_than_chance(34.0) and not get_task("mnli").better_than_chance(33.0)
    assert not TOY.better_than_chance(2e9) and TOY.metric_drop(3.0, 4.0) == 1.0
    assert (sst2.reads_first_token, stsb.reads_first_token, squad.reads_first_token) == (True, True, False)
    assert squad.version_2 and get_task("squad2") is squad
    assert [name for name, _ in squad.serving_inputs] == ["question", "context"]
    assert task_for_model(tiny_model(task="qa")).name == "squad"
    assert task_for_model(tiny_model(num_labels=1)).name == "stsb"


def test_the_gate_and_the_sweep_follow_the_metric_direction():
    # perplexity-like: lower is better, a rise is the loss
    assert accuracy_gate(10.0, 10.5, 1.0, "perplexity", higher_is_better=False)[0]
    passed, reason = accuracy_gate(10.0, 11.5, 1.0, "perplexity", higher_is_better=False)
    assert not passed and "rise of 1.50" in reason
    assert accuracy_gate(10.0, 5.0, 1.0, "perplexity", higher_is_better=False)[0]  # better is always fine
    assert not accuracy_gate(90.0, 88.0, 1.0, "accuracy")[0]
    # the evaluation stage's result names its task: the direction comes from the task
    ev = {"task": "toy-output-norm", "metric": "mean_norm", "metric_before": 3.0, "metric_after": 3.5}
    assert evaluation_gate(ev, 1.0)[0] and not evaluation_gate({**ev, "metric_after": 4.5}, 1.0)[0]
    assert not evaluation_gate(ev, 0.1)[0]  # a rise of 0.5 where lower is better
    assert evaluation_gate({**ev, "task": "sst2"}, 0.1)[0]  # read as accuracy, the same figures got better

    def candidate(i: int, after: float, higher: bool) -> Candidate:
        return Candidate(
            i, 0.5, "flops", "m", 10.0, after, 0.5, 100, 50, None, None, None, True, "ok", higher_is_better=higher
        )

    # equal size: ties go to the better metric, whichever way "better" points
    assert choose([candidate(0, 9.0, False), candidate(1, 8.0, False)], "smallest").index == 1
    assert choose([candidate(0, 9.0, True), candidate(1, 8.0, True)], "smallest").index == 0
