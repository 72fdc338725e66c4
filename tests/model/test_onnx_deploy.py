"""Deployment as ONNX and the honest latency report: ``fastprune onnx`` (fp32 and int8 folders that onnxruntime
loads with dynamic axes, bad input refused before any work), the export step's ONNX folder evaluated, profiled
interleaved and registered with the model version (as artifacts of its run), the report's spread, noise flag,
embedded picture and deploy section, and registration under the MLflow run Kubeflow opened for the step."""

import json
import os
import subprocess
import sys

import mlflow
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from fastprune.common.folders import stage_info, verify_manifest
from fastprune.common.model.export import load_pruned
from fastprune.common.stages.run import run_stage
from fastprune.common.tasks.data import load_task_data
from fastprune.common.tasks.spec import get_task
from tiny import SST2
from transformers import AutoConfig, AutoTokenizer

from fastprune.cli import main

TEXTS = ["a gorgeous , witty , seductive movie .", "the movie is a disaster", "it 's not bad at all"]


@pytest.fixture(scope="module")
def chain(tiny_sst2_model, tmp_path_factory):
    """The stages up to profiling, the export writing an int8 ONNX folder."""
    w = tmp_path_factory.mktemp("onnx_chain")
    dev = w / "dev.tsv"
    dev.write_text("".join((SST2 / "dev.tsv").read_text().splitlines(keepends=True)[:201]))
    run_stage("prepare", w / "model", {"source": str(tiny_sst2_model), "task": "sst2"})
    run_stage("sample", w / "sample", {"train_file": str(SST2 / "train.tsv"), "task": "sst2", "num_samples": 64})
    run_stage("fisher", w / "grads", {"device": "cpu"}, model=w / "model", sample=w / "sample")
    run_stage("search", w / "searched", {"constraint": 0.5}, model=w / "model", grads=w / "grads")
    run_stage("rearrange", w / "rearranged", {}, grads=w / "grads", masks=w / "searched")
    run_stage(
        "tune",
        w / "tuned",
        {"device": "cpu"},
        model=w / "model",
        sample=w / "sample",
        grads=w / "grads",
        searched=w / "searched",
        masks=w / "rearranged",
    )
    run_stage("export", w / "pruned", {"onnx": "int8"}, model=w / "model", masks=w / "tuned")
    run_stage(
        "evaluate",
        w / "evaluation",
        {"dev_file": str(dev), "device": "cpu"},
        model=w / "model",
        pruned=w / "pruned",
        tuned=w / "tuned",
    )
    run_stage(
        "profile",
        w / "profile",
        {"device": "cpu", "profile_batch_size": 2, "profile_seq_len": 16, "repeats": 5, "warmup": 1},
        model=w / "model",
        pruned=w / "pruned",
    )
    return w


def _torch_logits(folder, inputs):
    model, _ = load_pruned(folder)
    with torch.no_grad():
        return model(**{k: torch.from_numpy(v) for k, v in inputs.items()}).logits.numpy()


def _encoded(folder, texts, session):
    enc = AutoTokenizer.from_pretrained(folder)(texts, padding=True, return_tensors="np")
    return {i.name: enc[i.name].astype(np.int64) for i in session.get_inputs()}


def test_onnx_command_writes_an_fp32_folder_onnxruntime_loads_with_dynamic_axes(chain, tmp_path):
    out = tmp_path / "onnx"
    assert main(["onnx", "--pruned", str(chain / "pruned"), "--output", str(out)]) == 0
    assert {"model.onnx", "config.json", "tokenizer.json", "tokenizer_config.json", "fastprune_onnx.json"} <= {
        p.name for p in out.iterdir()
    }
    verify_manifest(out)
    meta = json.loads((out / "fastprune_onnx.json").read_text())
    assert (meta["quantization"], meta["task"]) == ("none", "sst2") and meta["max_abs_diff_vs_torch"] < 1e-4
    config = AutoConfig.from_pretrained(out)  # a stock config: no custom code needed
    assert config.fastprune_onnx["quantization"] == "none" and not hasattr(config, "auto_map")
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.shape for i in session.get_inputs()][0] == ["batch", "sequence"]
    for texts in (TEXTS[:1], TEXTS):  # batch 1 and 3, two sequence lengths, padding in the second
        inputs = _encoded(out, texts, session)
        got = session.run(["logits"], inputs)[0]
        assert np.abs(got - _torch_logits(chain / "pruned", inputs)).max() < 1e-4


def test_onnx_command_int8_is_quantized_and_agrees_with_torch(chain, tmp_path):
    fp32, int8 = tmp_path / "fp32", tmp_path / "int8"
    assert main(["onnx", "--pruned", str(chain / "pruned"), "--output", str(fp32)]) == 0
    assert main(["onnx", "--pruned", str(chain / "pruned"), "--output", str(int8), "--quantize", "int8"]) == 0
    meta = json.loads((int8 / "fastprune_onnx.json").read_text())
    assert (meta["quantization"], meta["per_channel"], meta["weight_type"]) == ("int8-dynamic", True, "QInt8")
    ops = {node.op_type for node in onnx.load(str(int8 / "model.onnx")).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops or "DynamicQuantizeMatMul" in ops
    assert (int8 / "model.onnx").stat().st_size < 0.6 * (fp32 / "model.onnx").stat().st_size
    dev = load_task_data(SST2 / "dev.tsv", get_task("sst2"), "validation")
    texts = list(dev["text_a"])[:200]
    session = ort.InferenceSession(str(int8 / "model.onnx"), providers=["CPUExecutionProvider"])
    inputs = _encoded(int8, texts, session)
    agree = session.run(["logits"], inputs)[0].argmax(-1) == _torch_logits(chain / "pruned", inputs).argmax(-1)
    assert agree.mean() >= 0.95


def test_onnx_command_refuses_bad_input_before_any_work(chain, tmp_path, capsys):
    pruned = str(chain / "pruned")

    def refused(*argv: str) -> str:
        before = sorted(p.name for p in tmp_path.iterdir())
        assert main(["onnx", *argv]) == 2
        assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, nothing half-written
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err
        return err

    (tmp_path / "empty").mkdir()
    assert "not a model folder written by fastprune" in refused(
        "--pruned", str(tmp_path / "empty"), "--output", str(tmp_path / "o")
    )
    assert "give its model folder" in refused("--pruned", str(chain), "--output", str(tmp_path / "o"))  # no model/
    (tmp_path / "parent").mkdir()
    (tmp_path / "parent" / "model").mkdir()
    (tmp_path / "parent" / "model" / "config.json").write_text("{}")
    assert "give its model folder" in refused("--pruned", str(tmp_path / "parent"), "--output", str(tmp_path / "o"))
    err = refused("--pruned", pruned, "--output", str(tmp_path / "o"), "--quantize", "int4")
    assert "'int4'" in err and "none, int8" in err
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert "--overwrite" in refused("--pruned", pruned, "--output", str(mine))
    assert (mine / "notes.txt").read_text() == "keep me"
    assert main(["onnx", "--pruned", pruned, "--output", str(mine), "--overwrite"]) == 0
    assert (mine / "model.onnx").is_file() and not (mine / "notes.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left behind


def test_export_step_onnx_folder_is_evaluated_and_profiled_interleaved(chain):
    exported = stage_info(chain / "pruned")
    assert exported["onnx"]["quantization"] == "int8-dynamic"
    assert "onnx/model.onnx" in verify_manifest(chain / "pruned")["files"]  # part of the checked artifact
    evaluation = stage_info(chain / "evaluation")
    assert abs(evaluation["metric_after_onnx"] - evaluation["metric_after"]) <= 2.0
    profile = stage_info(chain / "profile")
    assert [e["model"] for e in profile["profile"]["entries"]] == ["original", "pruned", "pruned onnx int8"]
    assert profile["latency_after_onnx_ms"] > 0 and profile["onnx_model"] == "pruned onnx int8"
    assert profile["speedup_p10"] <= profile["speedup"] <= profile["speedup_p90"]
    assert isinstance(profile["noisy"], bool) and profile["repeats"] == 5
    for e in profile["profile"]["entries"]:
        assert e["p10_ms"] <= e["p50_ms"] <= e["p90_ms"] and e["repeats"] == 5


def _register(chain, out, params):
    inputs = {k: chain / k for k in ("pruned", "tuned", "evaluation", "profile")}
    return run_stage("register", out, params, **inputs)


def test_register_logs_the_onnx_folder_with_the_version_and_a_deploy_report(chain, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.MlflowClient(uri).create_experiment("fastprune", artifact_location=(tmp_path / "artifacts").as_uri())
    result = _register(chain, tmp_path / "r", {"tracking_uri": uri, "model_name": "tiny-onnx", "max_drop": 100})
    client = mlflow.MlflowClient(uri)
    version = client.get_model_version("tiny-onnx", result["version"])
    run_id = result["run_id"]
    assert version.tags["onnx"] == f"runs:/{run_id}/onnx" == result["onnx"]
    assert version.tags["onnx_quantization"] == "int8-dynamic" and result["mlflow_run"] == "new"
    mlflow.set_tracking_uri(uri)
    folder = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="onnx", dst_path=str(tmp_path / "d"))
    session = ort.InferenceSession(f"{folder}/model.onnx", providers=["CPUExecutionProvider"])
    inputs = _encoded(folder, TEXTS, session)
    assert (session.run(["logits"], inputs)[0].argmax(-1) == _torch_logits(chain / "pruned", inputs).argmax(-1)).all()
    model_dir = mlflow.artifacts.download_artifacts(
        f"models:/tiny-onnx/{result['version']}", dst_path=str(tmp_path / "m")
    )
    files = {p.relative_to(model_dir).as_posix() for p in __import__("pathlib").Path(model_dir).rglob("*")}
    assert "artifacts/model/model.safetensors" in files and not [f for f in files if "model.onnx" in f]
    loaded = mlflow.pyfunc.load_model(f"models:/tiny-onnx/{result['version']}")  # its manifest still checks
    assert len(loaded.predict(__import__("pandas").DataFrame({"text": TEXTS}))) == 3
    report = (tmp_path / "r" / "report.md").read_text()
    assert "![attention heads and FFN neurons kept per layer](data:image/png;base64," in report
    assert "(kept_units.png)" not in report
    assert "## How to deploy this version" in report and "trust_remote_code=True" in report
    assert f'download_artifacts(run_id="{run_id}", artifact_path="onnx")' in report
    assert f'mlflow.pyfunc.load_model("models:/tiny-onnx/{result["version"]}")' in report
    assert "p10-p90" in report and "pruned onnx int8" in report and "ONNX (onnxruntime)" in report


def test_register_logs_under_the_run_kubeflow_opened_for_the_step(chain, tmp_path):
    """Kubeflow's MLflow integration gives each step MLFLOW_TRACKING_URI and MLFLOW_RUN_ID (its nested run, in the
    pipeline's experiment): the register step, a fresh process as in a pod, logs there and opens no other run."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    kubeflow = client.create_experiment("kubeflow-runs", artifact_location=(tmp_path / "kf").as_uri())
    client.create_experiment("fastprune", artifact_location=(tmp_path / "fp").as_uri())
    step_run = client.create_run(kubeflow, run_name="register-model").info.run_id
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_RUN_ID": step_run}

    def register(out, *extra):
        argv = [
            sys.executable,
            "-m",
            "fastprune.cli",
            "step",
            "register",
            "--out",
            str(tmp_path / out),
            "--model-name",
            "kf",
            "--max-drop",
            "100",
            *extra,
        ]
        for name in ("pruned", "tuned", "evaluation", "profile"):
            argv += [f"--{name}", str(chain / name)]
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return stage_info(tmp_path / out)

    inside = register("r1")
    assert (inside["run_id"], inside["mlflow_run"]) == (step_run, "kubeflow")
    run = client.get_run(step_run)
    assert run.info.experiment_id == kubeflow and "metric_after" in run.data.metrics
    assert run.data.tags["fastprune.mlflow_run"] == "kubeflow"
    assert client.get_model_version("kf", inside["version"]).run_id == step_run
    assert client.search_runs([client.get_experiment_by_name("fastprune").experiment_id]) == []  # no unrelated run
    elsewhere = tmp_path / "other.db"  # the step pointed at another server: Kubeflow's run is not there
    other = register("r2", "--tracking-uri", f"sqlite:///{elsewhere}")
    assert other["mlflow_run"] == "new" and other["run_id"] != step_run
