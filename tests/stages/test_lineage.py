"""Stage lineage and loud warnings (issue 15, items 5 and 8): inputs of another task, model or sample are refused
naming both values; a model at chance before pruning, a budget that removes every head and a sample larger than the
data are warned about, saying what was done."""

import json
import logging

import pytest
import torch
from fastprune.common.errors import ConfigError
from fastprune.common.folders import stage_info
from fastprune.common.stages.run import run_stage
from tiny import DATA, SST2, tiny_model, tiny_tokenizer

from fastprune.cli import main

TRAIN, DEV = SST2 / "train.tsv", SST2 / "dev.tsv"


def _one_error_line(err: str) -> bool:
    """The error is one line of its own (other lines may be log records of earlier in-process commands)."""
    lines = [line for line in err.splitlines() if line.startswith("fastprune: error:")]
    return len(lines) == 1


@pytest.fixture(scope="module")
def runs(tiny_sst2_model, tmp_path_factory):
    """One SST-2 run's folders (model, sample, grads, search, rearrange) and an MRPC preparation of the same model."""
    w = tmp_path_factory.mktemp("lineage")
    run_stage("prepare", w / "model", {"model": str(tiny_sst2_model), "task": "sst2"})
    run_stage("prepare", w / "mrpc_model", {"model": str(tiny_sst2_model), "task": "mrpc"})
    run_stage("sample", w / "sample", {"train_data": str(TRAIN), "task": "sst2", "num_samples": 32, "seed": 0})
    run_stage("fisher", w / "grads", {"device": "cpu"}, model=w / "model", sample=w / "sample")
    run_stage("search", w / "searched", {"constraint": 0.5}, model=w / "model", grads=w / "grads")
    run_stage("rearrange", w / "rearranged", {}, grads=w / "grads", masks=w / "searched")
    return w


def test_every_stage_records_its_lineage(runs):
    model, sample, grads = (stage_info(runs / n) for n in ("model", "sample", "grads"))
    assert len(model["model_fingerprint"]) == 64 and len(sample["sample_fingerprint"]) == 64
    for name in ("grads", "searched", "rearranged"):
        info = stage_info(runs / name)
        assert info["task"] == "sst2", name
        assert info["model_fingerprint"] == model["model_fingerprint"], name
        assert info["sample_fingerprint"] == sample["sample_fingerprint"], name
    mrpc = stage_info(runs / "mrpc_model")  # the same weights, prepared for another task
    assert mrpc["model_fingerprint"] == model["model_fingerprint"] and mrpc["task"] == "mrpc"
    assert grads["task"] == "sst2"


def test_grads_of_another_task_are_refused(runs, tmp_path, capsys):
    code = main(
        [
            "step",
            "search",
            "--model",
            str(runs / "mrpc_model"),
            "--grads",
            str(runs / "grads"),
            "--constraint",
            "0.5",
            "--out",
            str(tmp_path / "searched"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "'mrpc'" in err and "'sst2'" in err and "task" in err
    assert str(runs / "grads") in err and _one_error_line(err) and not (tmp_path / "searched").exists()


def test_grads_of_another_model_are_refused(runs, tmp_path):
    other = tiny_model("bert", layers=2, hidden=64, intermediate=128, seed=7)
    other.save_pretrained(tmp_path / "other")
    tiny_tokenizer().save_pretrained(tmp_path / "other")
    run_stage("prepare", tmp_path / "prepared", {"model": str(tmp_path / "other"), "task": "sst2"})
    first = stage_info(runs / "model")["model_fingerprint"][:12]
    second = stage_info(tmp_path / "prepared")["model_fingerprint"][:12]
    with pytest.raises(ConfigError, match=f"model \\(fingerprint\\) {second}.*model \\(fingerprint\\) {first}"):
        run_stage(
            "search", tmp_path / "searched", {"constraint": 0.5}, model=tmp_path / "prepared", grads=runs / "grads"
        )
    with pytest.raises(ConfigError, match="model \\(fingerprint\\)"):
        run_stage("export", tmp_path / "exported", {}, model=tmp_path / "prepared", masks=runs / "searched")


def test_grads_of_another_sample_are_refused(runs, tmp_path):
    run_stage("sample", tmp_path / "sample", {"train_data": str(TRAIN), "task": "sst2", "num_samples": 32, "seed": 5})
    with pytest.raises(ConfigError, match="sample \\(fingerprint\\)"):
        run_stage(
            "tune",
            tmp_path / "tuned",
            {"device": "cpu"},
            model=runs / "model",
            sample=tmp_path / "sample",
            grads=runs / "grads",
            searched=runs / "searched",
            masks=runs / "rearranged",
        )


def test_a_model_at_chance_before_pruning_is_warned_about(tmp_path, caplog, capsys):
    model = tiny_model("bert", layers=2)
    with torch.no_grad():  # always class 0: at or below the majority-class rate on any dev set
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([5.0, -5.0]))
    model.save_pretrained(tmp_path / "m")
    tiny_tokenizer().save_pretrained(tmp_path / "m")
    with caplog.at_level(logging.WARNING):
        assert (
            main(
                [
                    "prune",
                    "--model",
                    str(tmp_path / "m"),
                    "--task",
                    "sst2",
                    "--train-data",
                    str(TRAIN),
                    "--dev-data",
                    str(DEV),
                    "--constraint",
                    "0.5",
                    "--num-samples",
                    "32",
                    "--no-tune",
                    "--device",
                    "cpu",
                    "--output",
                    str(tmp_path / "out"),
                ]
            )
            == 0
        )
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [w for w in summary["warnings"] if "at or below chance" in w and "wrong model" in w]
    assert "at or below chance" in caplog.text and "WARNING: the unpruned model" in capsys.readouterr().out


def test_a_model_above_chance_gets_no_warning(runs, tmp_path):
    info = run_stage(
        "evaluate",
        tmp_path / "evaluation",
        {"dev_data": str(DEV), "device": "cpu"},
        model=runs / "model",
        pruned=runs / "model",
    )
    assert info["metric_before"] > 60 and "warnings" not in info


def test_stsb_and_qa_chance_levels():
    from fastprune.common.stages.sanity import chance_warning
    from fastprune.common.tasks.spec import get_task

    assert chance_warning(get_task("stsb"), [], {"spearman": -3.0, "pearson": -2.0})
    assert chance_warning(get_task("stsb"), [], {"spearman": 40.0, "pearson": 41.0}) is None
    assert chance_warning(get_task("squad"), [], {"f1": 0.4, "exact_match": 0.0})
    assert chance_warning(get_task("cola"), [], {"matthews": 0.0})  # no labels: the task's chance level
    assert chance_warning(get_task("mrpc"), [1, 1, 1, 0], {"accuracy": 75.0}) is not None  # = the majority rate
    assert chance_warning(get_task("mrpc"), [1, 1, 1, 0], {"accuracy": 80.0}) is None


def test_a_budget_that_removes_every_head_is_warned_about(runs, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        info = run_stage(
            "search", tmp_path / "searched", {"constraint": 0.01}, model=runs / "model", grads=runs / "grads"
        )
    assert sum(info["heads_per_layer"]) == 0
    assert [w for w in info["warnings"] if "constraint 0.01 removed every attention head" in w and "chance" in w]
    assert "removed every attention head" in caplog.text
    assert "warnings" not in stage_info(runs / "searched")  # 0.5 is a sane budget


def test_a_sample_larger_than_the_data_says_what_was_done(tmp_path, caplog):
    train = DATA / "mrpc_train.tsv"  # 160 examples
    with caplog.at_level(logging.WARNING):
        drawn = run_stage(
            "sample", tmp_path / "with", {"train_data": str(train), "task": "mrpc", "num_samples": 528, "replace": True}
        )
        capped = run_stage(
            "sample",
            tmp_path / "without",
            {"train_data": str(train), "task": "mrpc", "num_samples": 528, "replace": False},
        )
    assert drawn["num_examples"] == 528 and "oversampled" in drawn["warnings"][0] and "3.3x" in drawn["warnings"][0]
    assert capped["num_examples"] == 160 and "capped at 160" in capped["warnings"][0]
    assert "without replacement" in capped["warnings"][0] and "capped at 160" in caplog.text
    exact = run_stage("sample", tmp_path / "exact", {"train_data": str(train), "task": "mrpc", "num_samples": 160})
    assert "warnings" not in exact


def test_the_sweep_refuses_candidates_of_different_runs(runs, tmp_path):
    from fastprune.common.stages.sweep import select_stage

    with pytest.raises(ConfigError, match="'mrpc'.*'sst2'|'sst2'.*'mrpc'"):
        select_stage(tmp_path / "sweep", {}, [{"searched": runs / "searched"}, {"searched": runs / "mrpc_model"}])
    assert not (tmp_path / "sweep").exists()
