"""The pipeline's stages run one by one from the CLI (``fastprune step``) on a tiny trained model: their folders,
the integrity checks between them, and registration in a local MLflow (SQLite) behind the accuracy gate."""

import hashlib
import shutil

import mlflow
import pandas as pd
import pytest
import torch
from fastprune.common.errors import ConfigError, IntegrityError
from fastprune.common.folders import GRADS_FILE, MANIFEST_NAME, MASKS_FILE, stage_info, verify_manifest
from fastprune.common.method.fisher import MaskGradients
from fastprune.common.model.arch import adapter_for
from fastprune.common.model.cost import masked_macs
from fastprune.common.model.export import load_pruned
from fastprune.common.model.masks import Masks
from fastprune.common.ops.registry import predict_text
from fastprune.common.stages import runners
from fastprune.common.stages.config import PruneConfig, SampleConfig
from fastprune.common.stages.prune import prune
from fastprune.common.stages.run import run_stage
from fastprune.common.tasks.spec import get_task
from tiny import SST2
from transformers import AutoConfig

from fastprune.cli import main

TRAIN = SST2 / "train.tsv"
TEXTS = ["a gorgeous , witty , seductive movie .", "the movie is a disaster", "it 's not bad at all"]


@pytest.fixture(scope="module")
def steps(tiny_sst2_model, tmp_path_factory):
    """Every stage run once through ``fastprune step``; returns the folder holding their outputs."""
    w = tmp_path_factory.mktemp("steps")
    dev = w / "dev.tsv"
    dev.write_text("".join((SST2 / "dev.tsv").read_text().splitlines(keepends=True)[:201]))

    def step(name, *argv):
        assert main(["step", name, "--out", str(w / name), *[str(a) for a in argv]]) == 0, name

    step("prepare", "--source", tiny_sst2_model, "--task", "sst2")
    step("sample", "--train-data", TRAIN, "--task", "sst2", "--num-samples", 64, "--seed", 1)
    step("fisher", "--model", w / "prepare", "--sample", w / "sample", "--device", "cpu")
    step("search", "--model", w / "prepare", "--grads", w / "fisher", "--constraint", 0.5)
    step("rearrange", "--grads", w / "fisher", "--masks", w / "search")
    step(
        "tune",
        "--model",
        w / "prepare",
        "--sample",
        w / "sample",
        "--grads",
        w / "fisher",
        "--searched",
        w / "search",
        "--masks",
        w / "rearrange",
    )
    step("export", "--model", w / "prepare", "--masks", w / "tune")
    step("evaluate", "--model", w / "prepare", "--pruned", w / "export", "--tuned", w / "tune", "--dev-data", dev)
    step(
        "profile",
        "--model",
        w / "prepare",
        "--pruned",
        w / "export",
        "--batch-size",
        2,
        "--seq-len",
        16,
        "--repeats",
        2,
        "--warmup",
        0,
    )
    return w


def test_steps_write_checked_folders(steps):
    for name in ("prepare", "sample", "fisher", "search", "rearrange", "tune", "export", "evaluate", "profile"):
        verify_manifest(steps / name)
        assert stage_info(steps / name)["stage"] == name
    assert stage_info(steps / "sample")["train_sha256"] == hashlib.sha256(TRAIN.read_bytes()).hexdigest()
    assert stage_info(steps / "search")["flops_ratio"] <= 0.5 + 1e-9
    exported = stage_info(steps / "export")
    assert exported["params_after"] < exported["params_before"]
    assert all(n % 8 == 0 for n in exported["neurons_per_layer_exported"])  # padded for fp16 kernels
    assert exported["neurons_per_layer_exported"] != exported["neurons_per_layer"]
    assert exported["flops_ratio"] < exported["flops_ratio_exported"] < exported["flops_ratio"] + 0.05
    evaluation = stage_info(steps / "evaluate")
    assert evaluation["dev_examples"] == 200
    assert evaluation["metric_after"] == pytest.approx(evaluation["metric_tuned_masked"], abs=0.6)
    assert stage_info(steps / "profile")["speedup"] > 0


def test_steps_match_the_one_shot_prune(steps, tiny_sst2_model, tmp_path):
    cfg = PruneConfig(
        model=str(tiny_sst2_model),
        task="sst2",
        train_data=str(TRAIN),
        constraint=0.5,
        sample=SampleConfig(num_samples=64, seed=1),
        device="cpu",
        progress=False,
    )
    summary = prune(cfg, tmp_path / "out")
    assert Masks.load(tmp_path / "out" / "masks.safetensors").equal(Masks.load(steps / "tune" / MASKS_FILE))
    assert summary["params_after"] == stage_info(steps / "export")["params_after"]


def test_tuning_can_be_switched_off(steps, tmp_path):
    inputs = {"model": "prepare", "sample": "sample", "grads": "fisher", "searched": "search", "masks": "rearrange"}
    info = run_stage("tune", tmp_path / "tuned", {"tune": False}, **{k: steps / v for k, v in inputs.items()})
    assert info["layers_tuned"] == 0
    assert Masks.load(tmp_path / "tuned" / MASKS_FILE).equal(Masks.load(steps / "rearrange" / MASKS_FILE))


def test_rearrange_shrink_is_the_tasks_by_default_and_full_shrinkage_keeps_the_searched_units(steps, tmp_path):
    inputs = {"grads": steps / "fisher", "masks": steps / "search"}
    assert stage_info(steps / "rearrange")["shrink"] == 0.0  # by-task: sst2's (the paper's rearrangement)
    searched, rearranged = Masks.load(steps / "search" / MASKS_FILE), Masks.load(steps / "rearrange" / MASKS_FILE)
    assert not rearranged.equal(searched)
    info = run_stage("rearrange", tmp_path / "kept", {"rearrange_shrink": 1.0}, **inputs)
    assert info["shrink"] == 1.0 and info["units_moved"] == 0
    assert Masks.load(tmp_path / "kept" / MASKS_FILE).equal(searched)
    with pytest.raises(ValueError, match="rearrange shrink must be between 0 and 1"):  # pydantic's, at the flags too
        run_stage("rearrange", tmp_path / "bad", {"rearrange_shrink": 1.5}, **inputs)


def test_iterative_fisher_stage_keeps_pruned_units_out(steps, tmp_path):
    """With steps > 1 the Fisher stage prunes toward the budget; search, rearrangement and the tuned masks stay
    inside the units it left, and the result differs from the one-shot masks."""
    w = {k: steps / k for k in ("prepare", "sample")}
    params = {"fisher_steps": 3, "constraint": 0.3, "device": "cpu"}
    info = run_stage("fisher", tmp_path / "fisher", params, model=w["prepare"], sample=w["sample"])
    available = MaskGradients.load(tmp_path / "fisher" / GRADS_FILE).available
    assert available is not None and sum(info["available"]["heads_per_layer"]) == int(available.head.sum())
    run_stage("search", tmp_path / "search", {"constraint": 0.3}, model=w["prepare"], grads=tmp_path / "fisher")
    run_stage("rearrange", tmp_path / "rearrange", {}, grads=tmp_path / "fisher", masks=tmp_path / "search")
    run_stage(
        "tune",
        tmp_path / "tune",
        {"device": "cpu"},
        model=w["prepare"],
        sample=w["sample"],
        grads=tmp_path / "fisher",
        searched=tmp_path / "search",
        masks=tmp_path / "rearrange",
    )
    for stage in ("search", "rearrange", "tune"):
        m = Masks.load(tmp_path / stage / MASKS_FILE).binary()
        assert bool((m.head <= available.head).all() and (m.neuron <= available.neuron).all()), stage
    one_shot = run_stage(
        "search", tmp_path / "one-shot", {"constraint": 0.3}, model=w["prepare"], grads=steps / "fisher"
    )
    assert not Masks.load(tmp_path / "one-shot" / MASKS_FILE).equal(Masks.load(tmp_path / "search" / MASKS_FILE))
    assert one_shot["flops_ratio"] <= 0.3 + 1e-9
    with pytest.raises(Exception, match="needs the search's constraint"):
        run_stage("fisher", tmp_path / "bad", {"fisher_steps": 2}, model=w["prepare"], sample=w["sample"])
    with pytest.raises(Exception, match="FLOPs constraint only"):
        PruneConfig(
            model="m",
            task="sst2",
            train_data="t",
            constraint=0.5,
            constraint_metric="latency",
            fisher={"fisher_steps": 2},
        )


def test_a_decode_latency_search_of_an_encoder_is_refused_before_timing(steps, tmp_path):
    params = {"constraint": 0.5, "constraint_metric": "latency", "latency_mode": "decode", "device": "cpu"}
    with pytest.raises(Exception, match="latency mode 'decode'.*bert encoder"):
        run_stage("search", tmp_path / "search", params, model=steps / "prepare", grads=steps / "fisher")
    assert not (tmp_path / "search").exists()


@pytest.mark.parametrize("allocation", ["uniform", "block"])
def test_search_allocation_reaches_the_tuning_re_split(steps, tmp_path, allocation):
    """The search's allocation also decides the tuning's budget re-split: uniform masks stay uniform through it."""
    w = {k: steps / k for k in ("prepare", "sample", "fisher")}
    info = run_stage(
        "search",
        tmp_path / "search",
        {"constraint": 0.4, "allocation": allocation},
        model=w["prepare"],
        grads=w["fisher"],
    )
    assert info["flops_ratio"] <= 0.4 + 1e-9
    global_search = Masks.load(steps / "search" / MASKS_FILE)
    assert not Masks.load(tmp_path / "search" / MASKS_FILE).equal(global_search)
    run_stage(
        "tune",
        tmp_path / "tune",
        {"device": "cpu"},
        model=w["prepare"],
        sample=w["sample"],
        grads=w["fisher"],
        searched=tmp_path / "search",
        masks=tmp_path / "search",
    )
    tuned = stage_info(tmp_path / "tune")
    config = AutoConfig.from_pretrained(w["prepare"])
    macs = [
        masked_macs(Masks.load(tmp_path / s / MASKS_FILE), adapter_for(config).dims(config), info["seq_len"])
        for s in ("search", "tune")
    ]
    assert tuned["resplit"] and macs[1] <= macs[0] * (1 + 1e-9)
    if allocation == "uniform":
        assert len(set(tuned["heads_per_layer"])) == 1 and len(set(tuned["neurons_per_layer"])) == 1


def test_auto_allocation_keeps_the_split_of_lowest_held_out_loss(steps, tmp_path):
    """``allocation auto`` searches every split and keeps the one whose masks lose least on the sample's held-out
    part (losses recorded); without a held-out part it is refused before any search."""
    search = {"constraint": 0.4, "allocation": "auto", "device": "cpu"}
    with pytest.raises(ConfigError, match="held-out part of the sample.*--holdout"):
        run_stage("search", tmp_path / "refused", search, model=steps / "prepare", grads=steps / "fisher")
    with pytest.raises(ConfigError, match="held-out part"):  # the module's sample holds nothing out
        run_stage(
            "search",
            tmp_path / "refused",
            search,
            model=steps / "prepare",
            grads=steps / "fisher",
            sample=steps / "sample",
        )
    assert not (tmp_path / "refused").exists()
    sample, model = tmp_path / "sample", steps / "prepare"
    run_stage(
        "sample", sample, {"train_data": str(TRAIN), "task": "sst2", "num_samples": 64, "seed": 1, "holdout": 0.25}
    )
    run_stage("fisher", tmp_path / "fisher", {"device": "cpu"}, model=model, sample=sample)
    info = run_stage("search", tmp_path / "auto", search, model=model, grads=tmp_path / "fisher", sample=sample)
    losses = info["allocation_losses"]
    assert set(losses) == {"global", "uniform"} and len(set(losses.values())) > 1
    assert info["allocation"] == min(losses, key=losses.get)
    validator = runners._validator(sample, *runners._model(model, torch.device("cpu")), torch.device("cpu"))
    for allocation, loss in losses.items():
        params = {**search, "allocation": allocation}
        run_stage("search", tmp_path / allocation, params, model=model, grads=tmp_path / "fisher")
        masks = Masks.load(tmp_path / allocation / MASKS_FILE)
        assert validator.loss(masks) == pytest.approx(loss, rel=1e-5)  # the loss of that split's own masks
        assert masks.equal(Masks.load(tmp_path / "auto" / MASKS_FILE)) == (allocation == info["allocation"])


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_corrupted_input_is_refused_and_nothing_written(steps, tmp_path):
    grads = _copy(steps / "fisher", tmp_path / "grads")
    data = bytearray((grads / GRADS_FILE).read_bytes())
    data[-1] ^= 0xFF  # same size, one byte flipped
    (grads / GRADS_FILE).write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=GRADS_FILE):
        run_stage("search", tmp_path / "out", {"constraint": 0.5}, model=steps / "prepare", grads=grads)
    assert not (tmp_path / "out").exists()

    (grads / MANIFEST_NAME).unlink()
    with pytest.raises(IntegrityError, match="no MANIFEST.json"):
        run_stage("search", tmp_path / "out", {"constraint": 0.5}, model=steps / "prepare", grads=grads)


def test_failed_stage_leaves_no_partial_folder(steps, tmp_path):
    with pytest.raises(Exception, match="is the output of stage .fisher."):  # the grads folder is not a model
        run_stage("search", tmp_path / "out", {"constraint": 0.5}, model=steps / "fisher", grads=steps / "fisher")
    assert list(tmp_path.iterdir()) == []


def test_step_errors_are_clear(steps, tmp_path, capsys):
    argv = ["step", "search", "--out", str(tmp_path / "out"), "--model", str(steps / "prepare"), "--grads"]
    assert main([*argv, str(steps / "fisher"), "--constraint", "1.5"]) == 2
    assert "between 0 and 1" in capsys.readouterr().err
    assert main([*argv, str(tmp_path / "nowhere"), "--constraint", "0.5"]) == 2
    assert "nowhere" in capsys.readouterr().err and not (tmp_path / "out").exists()
    fp16 = ["--constraint", "0.5", "--constraint-metric", "latency", "--serving-dtype", "float16", "--device", "cpu"]
    assert main([*argv, str(steps / "fisher"), *fp16]) == 2
    assert "serving_dtype float16 is measured on CUDA devices only" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_retried_register_reuses_its_version_and_finishes_it(steps, tmp_path, monkeypatch):
    """A register step retried within one pipeline run (say, it died after registering the version) creates no
    second version: it finds the version by its candidate tag and redoes what follows (alias, report). The experiment
    it creates in a local database keeps its artifacts beside it, not in the folder the command ran in."""
    uri = f"sqlite:///{tmp_path / 'db' / 'mlflow.db'}"
    for folder in ("db", "cwd"):
        (tmp_path / folder).mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    inputs = {k: steps / v for k, v in {"pruned": "export", "tuned": "tune", "evaluation": "evaluate"}.items()}
    params = {"tracking_uri": uri, "model_name": "retried", "pipeline_run": "run-7", "max_drop": 100}
    first = run_stage("register", tmp_path / "r1", params, **inputs)
    client = mlflow.MlflowClient(uri)
    client.delete_registered_model_alias("retried", "pruned-candidate")  # as if the first attempt died here
    client.delete_model_version_tag("retried", first["version"], "report")
    again = run_stage("register", tmp_path / "r2", params, **inputs)
    assert (again["version"], again["run_id"]) == (first["version"], first["run_id"])
    assert [str(v.version) for v in client.search_model_versions("name = 'retried'")] == [first["version"]]
    assert str(client.get_model_version_by_alias("retried", "pruned-candidate").version) == first["version"]
    assert client.get_model_version("retried", first["version"]).tags["report"].startswith("runs:/")
    other_run = run_stage("register", tmp_path / "r3", {**params, "pipeline_run": "run-8"}, **inputs)
    assert other_run["version"] != first["version"]
    assert any((tmp_path / "db" / "artifacts").rglob("model.safetensors")) and not any((tmp_path / "cwd").iterdir())


def test_register_behind_the_gate_and_load_the_pyfunc(steps, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.MlflowClient(uri).create_experiment("fastprune", artifact_location=(tmp_path / "artifacts").as_uri())
    inputs = {
        k: steps / v
        for k, v in {
            "pruned": "export",
            "tuned": "tune",
            "evaluation": "evaluate",
            "sample": "sample",
            "profile": "profile",
        }.items()
    }
    params = {"tracking_uri": uri, "model_name": "tiny", "pipeline_run": "run-1", "max_drop": 100}
    first = run_stage("register", tmp_path / "r1", params, **inputs)
    second = run_stage("register", tmp_path / "r2", {**params, "max_drop": -1, "pipeline_run": "run-2"}, **inputs)

    client = mlflow.MlflowClient(uri)
    assert (first["gate"], first["alias"], second["gate"], second["alias"]) == (
        "passed",
        "pruned-candidate",
        "failed",
        None,
    )
    assert str(client.get_model_version_by_alias("tiny", "pruned-candidate").version) == first["version"]
    failed = client.get_model_version("tiny", second["version"])
    assert failed.tags["gate"] == "failed" and "more than the allowed -1" in failed.tags["gate_reason"]
    assert failed.tags["pipeline_run"] == "run-2"
    assert failed.tags["data_sha256"] == hashlib.sha256(TRAIN.read_bytes()).hexdigest()
    run = client.get_run(first["run_id"]).data
    for key in ("metric_before", "metric_after", "flops_ratio", "params_after", "speedup", "seconds_tune"):
        assert key in run.metrics, key
    assert run.params["sample.num_samples"] == "64"

    mlflow.set_tracking_uri(uri)
    loaded = mlflow.pyfunc.load_model("models:/tiny@pruned-candidate")
    got = loaded.predict(pd.DataFrame({"text": TEXTS}))
    model, tokenizer = load_pruned(steps / "export")
    with torch.no_grad():
        logits = model(**tokenizer(TEXTS, padding=True, return_tensors="pt")).logits
    assert got["label"].tolist() == [model.config.id2label[int(i)] for i in logits.argmax(-1)]  # label names
    assert torch.allclose(torch.tensor(got["probabilities"].tolist()), logits.softmax(-1), atol=1e-5)
    ours = predict_text(model, tokenizer, get_task("sst2"), pd.DataFrame({"text": TEXTS}))
    assert torch.allclose(torch.tensor(got["score"].tolist()), torch.tensor(ours["score"].tolist()), atol=1e-6)
