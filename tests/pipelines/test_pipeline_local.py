"""The whole pipeline run with kfp.local on a tiny trained model, against a real S3 server (SeaweedFS) holding the
source model and data, and a real MLflow tracking server whose artifact store is that S3 server; the run whose gate
fails prunes a tiny Llama with task causal-lm (windows of the pipeline's ``max_length``, perplexity)."""

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from fastprune.common.folders import stage_info
from fastprune.common.model.export import load_pruned
from fastprune.common.ops.storage import upload_dir, upload_file
from fastprune.pipelines.local import PipelineFailed, run_local
from mlflow import MlflowClient
from servers import S3Server, closed_port, mlflow_server, seaweedfs
from tiny import SST2, TEXT, tiny_llama, tiny_tokenizer

pytestmark = pytest.mark.server
NAME = "tiny-sst2"
LLM_NAME = "tiny-llama"
BUCKET = "fastprune"
TEXTS = ["a gorgeous , witty , seductive movie .", "the movie is a disaster", "it 's not bad at all"]


@dataclass(frozen=True)
class World:
    s3: S3Server
    mlflow: str
    model: str  # s3:// URI of the source model
    corrupted: str  # s3:// URI of a model one of whose files no longer matches its manifest
    train: str
    dev: str
    llama: str  # s3:// URIs of a tiny Llama and its training and dev texts
    text: str
    dev_text: str


@pytest.fixture(scope="module")
def world(tiny_sst2_model, tmp_path_factory):
    """A SeaweedFS S3 server with the model and data uploaded, an MLflow server using it, the environment set."""
    tmp = tmp_path_factory.mktemp("world")
    env = pytest.MonkeyPatch()
    with seaweedfs(tmp) as s3:
        for name in ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION", "MLFLOW_TRACKING_URI"):
            env.delenv(name, raising=False)
        for name, value in {**s3.env(), "OMP_NUM_THREADS": "1", "FASTPRUNE_CACHE": str(tmp / "cache")}.items():
            env.setenv(name, value)  # the steps are subprocesses: they inherit this environment
        s3.create_bucket(BUCKET)
        model = shutil.copytree(tiny_sst2_model, tmp / "model")
        upload_dir(model, f"s3://{BUCKET}/models/tiny")
        upload_dir(model, f"s3://{BUCKET}/models/corrupted")
        config = bytearray((model / "config.json").read_bytes())
        config[config.index(b"bert")] = ord("B")  # same size, different content
        s3.client().put_object(Bucket=BUCKET, Key="models/corrupted/config.json", Body=bytes(config))
        dev = tmp / "dev.tsv"
        dev.write_text("".join((SST2 / "dev.tsv").read_text().splitlines(keepends=True)[:201]))
        upload_file(SST2 / "train.tsv", f"s3://{BUCKET}/data/train.tsv")
        upload_file(dev, f"s3://{BUCKET}/data/dev.tsv")
        llama = tiny_llama(layers=2, heads=4, groups=2, intermediate=48)
        llama.config.architectures = ["LlamaForCausalLM"]
        llama.save_pretrained(tmp / "llama")
        tiny_tokenizer().save_pretrained(tmp / "llama")
        upload_dir(tmp / "llama", f"s3://{BUCKET}/models/llama")
        upload_file(TEXT / "macbeth_gut.txt", f"s3://{BUCKET}/data/train.txt")
        (tmp / "dev.txt").write_text((TEXT / "britannica-11th-head.txt").read_text(encoding="utf-8")[:2000])
        upload_file(tmp / "dev.txt", f"s3://{BUCKET}/data/dev.txt")
        with mlflow_server(tmp, f"s3://{BUCKET}/mlflow", s3.env()) as tracking_uri:
            yield World(
                s3,
                tracking_uri,
                f"s3://{BUCKET}/models/tiny",
                f"s3://{BUCKET}/models/corrupted",
                f"s3://{BUCKET}/data/train.tsv",
                f"s3://{BUCKET}/data/dev.tsv",
                f"s3://{BUCKET}/models/llama",
                f"s3://{BUCKET}/data/train.txt",
                f"s3://{BUCKET}/data/dev.txt",
            )
    env.undo()


def _arguments(world: World, **changes) -> dict:
    return {
        "model": world.model,
        "train_data": world.train,
        "dev_data": world.dev,
        "num_samples": 64,
        "mlflow_uri": world.mlflow,
        "registered_model_name": NAME,
        "max_metric_drop": 100.0,
        "profile_batch_size": 2,
        "profile_seq_len": 16,
        **changes,
    }


def _versions(world: World) -> int:
    return len(MlflowClient(world.mlflow).search_model_versions(f"name='{NAME}'"))


def _causal_lm(world: World, **changes) -> dict:
    """A tiny Llama pruned on windows of 32 tokens (the sample's ``max_length``) in batches of 2."""
    text = {"train_data": world.text, "dev_data": world.dev_text, "max_length": 32, "batch_size": 2}
    return _arguments(world, model=world.llama, task="causal-lm", **text, num_samples=8, **changes)


def test_pipeline_registers_the_pruned_model_behind_the_gate(world, tmp_path):
    """Passed: a classifier. Failed (no perplexity rise allowed, not even a negative one): a causal LM, whose gate
    knows that lower is better."""
    passed = run_local(_arguments(world), tmp_path / "root")
    failed = run_local(_causal_lm(world, max_metric_drop=-1e6, registered_model_name=LLM_NAME), tmp_path / "root")

    client = MlflowClient(world.mlflow)
    assert (passed.registration["gate"], failed.registration["gate"]) == ("passed", "failed")
    assert client.get_model_version_by_alias(NAME, "pruned-candidate").version == passed.registration["version"]
    first = client.get_model_version(NAME, passed.registration["version"])
    second = client.get_model_version(LLM_NAME, failed.registration["version"])
    assert second.aliases == [] and "more than the allowed -1e+06" in second.tags["gate_reason"]
    assert second.tags["gate_reason"].startswith("perplexity ") and "a rise of" in second.tags["gate_reason"]
    for version, run, model, data in (
        (first, passed, world.model, SST2 / "train.tsv"),
        (second, failed, world.llama, TEXT / "macbeth_gut.txt"),
    ):
        assert version.tags["source_model"] == model
        assert version.tags["data_sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
        assert version.tags["pipeline_run"] == run.registration["params"]["pipeline_run"] != ""
    assert first.tags["gate"] == "passed" and second.tags["gate"] == "failed"

    metrics = client.get_run(first.run_id).data.metrics
    for key in (
        "metric_before",
        "metric_after",
        "flops_ratio",
        "params_before",
        "params_after",
        "latency_before_ms",
        "latency_after_ms",
        "speedup",
        "seconds_fisher",
        "seconds_tune",
    ):
        assert key in metrics, key
    assert metrics["flops_ratio"] <= 0.6 + 1e-9 and metrics["params_after"] < metrics["params_before"]
    artifacts = {a.path for a in client.list_artifacts(first.run_id)}
    assert {"masks.safetensors", "report.md", "report.html", "kept_units.png", "stages.json"} <= artifacts
    page = passed.artifact("register-model", "report_page").read_text()  # the HTML output the Kubeflow UI shows
    assert "data:image/png;base64," in page and "Accuracy gate" in page
    stored = world.s3.client().list_objects_v2(Bucket=BUCKET, Prefix="mlflow/")["Contents"]
    assert any(o["Key"].endswith("model.safetensors") for o in stored), "MLflow's artifact store is the S3 server"

    outputs = json.loads((passed.folder / "export-model" / "executor_output.json").read_text())
    (pruned,) = outputs["artifacts"]["pruned"]["artifacts"]
    assert pruned["metadata"]["manifest_sha256"] and pruned["metadata"]["inputs"]["masks"]

    mlflow.set_tracking_uri(world.mlflow)
    got = mlflow.pyfunc.load_model(f"models:/{NAME}@pruned-candidate").predict(pd.DataFrame({"text": TEXTS}))
    model, tokenizer = load_pruned(passed.artifact("export-model", "pruned"))
    with torch.no_grad():
        logits = model(**tokenizer(TEXTS, padding=True, return_tensors="pt")).logits
    assert got["label"].tolist() == [model.config.id2label[int(i)] for i in logits.argmax(-1)]  # label names
    assert torch.allclose(torch.tensor(got["probabilities"].tolist()), logits.softmax(-1), atol=1e-5)

    sample = stage_info(failed.artifact("sample-data", "sample"))["params"]
    assert (sample["max_length"], sample["batch_size"]) == (32, 2)  # the pipeline's window length reached the sample
    evaluation = stage_info(failed.artifact("evaluate-models", "evaluation"))
    assert evaluation["metric"] == "perplexity" and evaluation["metric_after"] > 0
    llm_metrics = client.get_run(second.run_id).data.metrics
    assert llm_metrics["params_after"] < llm_metrics["params_before"] and llm_metrics["flops_ratio"] <= 0.6 + 1e-9
    pruned_llm, _ = load_pruned(failed.artifact("export-model", "pruned"))
    dense_size = sum(p.numel() for p in tiny_llama(layers=2, heads=4, groups=2, intermediate=48).parameters())
    assert sum(p.numel() for p in pruned_llm.parameters()) == llm_metrics["params_after"] < dense_size
    generated = mlflow.pyfunc.load_model(f"models:/{LLM_NAME}/{second.version}").predict(
        pd.DataFrame({"prompt": ["the king"]})
    )
    assert isinstance(generated["text"][0], str)  # the registered causal LM generates


BAD_INPUTS = {
    "missing bucket": (
        {"model": "s3://no-such-bucket-4711/models/tiny"},
        {},
        "bucket 'no-such-bucket-4711' does not exist",
    ),
    "wrong credentials": ({}, {"AWS_SECRET_ACCESS_KEY": "not-the-secret"}, "refused the credentials"),
    "nonexistent model path": (
        {"model": "/nonexistent/fastprune/model"},
        {},
        "local path '/nonexistent/fastprune/model' does not exist",
    ),
    "corrupted artifact": ("corrupted", {}, "'config.json' does not match its sha256"),
    "unreachable MLflow": ("unreachable", {}, "cannot reach the MLflow tracking server"),
    "missing dev data": ({"dev_data": f"s3://{BUCKET}/data/no-dev.tsv"}, {}, "no-dev.tsv"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_inputs_fail_clearly_and_register_nothing(world, tmp_path, monkeypatch, case):
    changes, env, message = BAD_INPUTS[case]
    if changes == "corrupted":
        changes = {"model": world.corrupted}
    elif changes == "unreachable":
        changes = {"mlflow_uri": f"http://127.0.0.1:{closed_port()}"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    before = _versions(world)

    with pytest.raises(PipelineFailed, match="step fetch-model") as failure:
        run_local(_arguments(world, **changes), tmp_path / "root")
    assert message in str(failure.value)
    monkeypatch.undo()
    assert _versions(world) == before
    assert not list(Path(tmp_path / "root").glob("*/sample-data")), "nothing ran after the failed step"
