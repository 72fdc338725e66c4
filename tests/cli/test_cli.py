"""The ``fastprune prune`` command end to end on a tiny trained model, and its early errors."""

import json
import subprocess
import sys

import pytest
import torch
from fastprune.common.model.export import load_pruned
from fastprune.common.model.masks import Masks
from tiny import SST2, tiny_model, tiny_tokenizer

from fastprune.cli import main

TRAIN, DEV = str(SST2 / "train.tsv"), str(SST2 / "dev.tsv")


def _prune(model, out, *extra, constraint="0.5", samples="256"):
    return main(
        [
            "prune",
            "--model",
            str(model),
            "--task",
            "sst2",
            "--train-data",
            TRAIN,
            "--dev-data",
            DEV,
            "--constraint",
            constraint,
            "--num-samples",
            samples,
            "--seed",
            "0",
            "--output",
            str(out),
            *extra,
        ]
    )


def test_prune_end_to_end(tiny_sst2_model, tmp_path, capsys):
    assert _prune(tiny_sst2_model, tmp_path / "out") == 0
    printed = capsys.readouterr().out
    assert "FLOPs kept" in printed and "accuracy: before" in printed
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    for key in (
        "metric",
        "metric_before",
        "metric_search",
        "metric_rearranged",
        "metric_after",
        "flops_ratio",
        "params_before",
        "params_after",
        "seconds",
        "prune_seconds",
    ):
        assert key in summary, key
    assert summary["metric"] == "accuracy"
    assert summary["metric_before"] > 60, "the tiny model should have learned something"
    assert summary["flops_ratio"] <= 0.5 + 1e-9
    assert summary["params_after"] < summary["params_before"]
    assert summary["metric_after"] == pytest.approx(summary["metric_tuned_masked"], abs=0.2)
    assert set(summary["seconds"]) >= {"fisher", "search", "rearrange", "tune", "export", "evaluate"}
    assert [entry["layer"] for entry in summary["resplit"]] == [1]  # the budget re-split is on by default
    model, tokenizer = load_pruned(tmp_path / "out" / "model")
    assert sum(p.numel() for p in model.parameters()) == summary["params_after"]
    with torch.no_grad():
        logits = model(**tokenizer(["a fine movie"], return_tensors="pt")).logits
    assert logits.shape == (1, 2)


def test_prune_with_the_accuracy_options_end_to_end(tiny_sst2_model, tmp_path, capsys):
    """Iterative label-free Fisher, refit tuning with a cross-validated ridge and the budget re-split travel
    through every stage into the exported model."""
    extra = (
        "--fisher-steps",
        "2",
        "--fisher-labels",
        "model",
        "--tuning-mode",
        "refit",
        "--tuning-teacher",
        "dense",
        "--tuning-ridge",
        "auto",
        "--tuning-resplit",
    )
    assert _prune(tiny_sst2_model, tmp_path / "out", *extra, samples="96") == 0
    printed = capsys.readouterr().out
    assert "reconstruction error fell: L0 attn -" in printed
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["flops_ratio"] <= 0.5 + 1e-9
    assert summary["layers_tuned"] == sum(1 for r in summary["tuning"] if r["note"] != "no units kept")
    assert all(r["note"].startswith("ridge ") for r in summary["tuning"] if r["tuned"])  # cross-validated
    assert [entry["layer"] for entry in summary["resplit"]] == [1]  # the tiny model's second (last) layer
    assert summary["metric_after"] == pytest.approx(summary["metric_tuned_masked"], abs=0.2)  # refit exported
    masks = Masks.load(tmp_path / "out" / "masks.safetensors")
    assert masks.weights and masks.equal(masks.binary())


def test_the_budget_resplit_can_be_turned_off(tiny_sst2_model, tmp_path):
    # --seed 3: another seed than the default is taken (this run stands in for a separate one)
    assert _prune(tiny_sst2_model, tmp_path / "out", "--no-tuning-resplit", "--seed", "3", samples="64") == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert "resplit" not in summary and summary["layers_tuned"] > 0


def test_a_cross_validated_ridge_needs_a_refit(tiny_sst2_model, tmp_path, capsys):
    assert _prune(tiny_sst2_model, tmp_path / "out", "--tuning-mode", "scales", "--tuning-ridge", "auto") == 2
    assert "needs mode refit or reselect" in capsys.readouterr().err and not (tmp_path / "out").exists()


def _prune_untuned(model, out):
    return _prune(model, out, "--no-tune", constraint="0.4", samples="64")


@pytest.fixture(scope="module")
def untuned(tiny_sst2_model, tmp_path_factory):
    """A prune without mask tuning (shared by the seed and the profile tests): the output folder."""
    out = tmp_path_factory.mktemp("untuned") / "out"
    assert _prune_untuned(tiny_sst2_model, out) == 0
    return out


def test_same_seed_same_masks(tiny_sst2_model, untuned, tmp_path):
    assert _prune_untuned(tiny_sst2_model, tmp_path / "again") == 0
    assert Masks.load(untuned / "masks.safetensors").equal(Masks.load(tmp_path / "again" / "masks.safetensors"))


@pytest.mark.parametrize("bad", ["0", "1", "1.5", "-0.1"])
def test_constraint_outside_unit_interval(tiny_sst2_model, tmp_path, capsys, bad):
    assert _prune(tiny_sst2_model, tmp_path / "out", constraint=bad) == 2
    err = capsys.readouterr().err
    assert "between 0 and 1" in err and bad in err
    assert not (tmp_path / "out").exists()


def test_model_not_finetuned_for_the_task(tmp_path, capsys):
    from transformers import BertModel

    base = BertModel(tiny_model("bert").config)
    base.save_pretrained(tmp_path / "base")
    tiny_tokenizer().save_pretrained(tmp_path / "base")
    assert _prune(tmp_path / "base", tmp_path / "out") == 2
    assert "not fine-tuned for task sst2" in capsys.readouterr().err

    three = tiny_model("bert", num_labels=3)
    three.save_pretrained(tmp_path / "three")
    tiny_tokenizer().save_pretrained(tmp_path / "three")
    assert _prune(tmp_path / "three", tmp_path / "out") == 2
    assert "has 3 labels but task sst2 needs 2" in capsys.readouterr().err


def test_tokenizer_model_mismatch(tmp_path, capsys):
    model = tiny_model("bert", vocab_size=50)
    model.save_pretrained(tmp_path / "m")
    tiny_tokenizer().save_pretrained(tmp_path / "m")
    assert _prune(tmp_path / "m", tmp_path / "out") == 2
    assert "does not match the model's vocabulary" in capsys.readouterr().err


def test_empty_dataset(tiny_sst2_model, tmp_path, capsys):
    empty = tmp_path / "empty.tsv"
    empty.write_text("sentence\tlabel\n")
    code = main(
        [
            "prune",
            "--model",
            str(tiny_sst2_model),
            "--task",
            "sst2",
            "--train-data",
            str(empty),
            "--constraint",
            "0.5",
            "--output",
            str(tmp_path / "out"),
        ]
    )
    assert code == 2 and "has no examples" in capsys.readouterr().err


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "fastprune.cli", "prune", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--constraint" in out.stdout


@pytest.mark.parametrize("mode", ["scales", "refit"])
def test_holdout_validation_reports_each_stage(tiny_sst2_model, tmp_path, mode):
    flags = ("--holdout", "0.25", "--tuning-mode", mode, "--allocation", "auto")
    assert _prune(tiny_sst2_model, tmp_path / "out", *flags, samples="128") == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    losses = summary["allocation_losses"]  # allocation auto: the split of lowest held-out loss, then the stages
    assert set(losses) == {"global", "uniform"} and summary["allocation"] == min(losses, key=losses.get)
    assert set(summary["validation"]) == {"rearrange", "tune"}
    for check in summary["validation"].values():
        assert check["accepted"] == (check["loss_after"] <= check["loss_before"])
    # the exported model carries whichever masks the checks chose
    chosen = Masks.load(tmp_path / "out" / "masks.safetensors")
    assert summary["metric_after"] == pytest.approx(summary["metric_tuned_masked"], abs=0.2)
    assert chosen.heads_per_layer() == summary["heads_per_layer"]
    if mode == "refit":  # the refit weights are held-out checked with their masks, and kept only with them
        assert bool(chosen.weights) == summary["validation"]["tune"]["accepted"]


def test_profile_compares_original_and_pruned(tiny_sst2_model, untuned, tmp_path, capsys):
    code = main(
        [
            "profile",
            "--model",
            str(tiny_sst2_model),
            "--pruned",
            str(untuned / "model"),
            "--batch-size",
            "4",
            "--seq-len",
            "16",
            "--repeats",
            "3",
            "--warmup",
            "1",
            "--device",
            "cpu",
            "--output",
            str(tmp_path / "lat.json"),
        ]
    )
    assert code == 0
    figures = json.loads((tmp_path / "lat.json").read_text())
    assert list(figures["speedup"]) == ["float32/b4/s16"] and figures["speedup"]["float32/b4/s16"] > 0
    assert "| pruned |" in capsys.readouterr().out


def test_prune_question_answering_end_to_end(tmp_path):
    from tiny import DATA

    model = tiny_model("bert", task="qa")
    model.save_pretrained(tmp_path / "qa")
    tiny_tokenizer().save_pretrained(tmp_path / "qa")
    squad = str(DATA / "squad_small.json")
    code = main(
        [
            "prune",
            "--model",
            str(tmp_path / "qa"),
            "--task",
            "squad",
            "--train-data",
            squad,
            "--dev-data",
            squad,
            "--constraint",
            "0.5",
            "--num-samples",
            "24",
            "--max-length",
            "128",
            "--output",
            str(tmp_path / "out"),
        ]
    )
    assert code == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["metric"] == "f1" and summary["flops_ratio"] <= 0.5 + 1e-9
    assert summary["metric_after"] == pytest.approx(summary["metric_tuned_masked"], abs=1e-6)
    assert summary["params_after"] < summary["params_before"]
