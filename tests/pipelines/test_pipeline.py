"""The compiled pipeline (``fastprune compile``): DAG, GPU requests, retries, caching, S3 credentials from a
Kubernetes secret, images; and ``fastprune run --host`` submitting it."""

import pytest
import yaml
from fastprune.pipelines.steps import S3_SECRET_KEYS

from fastprune.cli import main
from fastprune.defaults import SST2_DEV as DEFAULT_DEV

IMAGE = "registry.example.com/fastprune:test"
DAG = {
    "fetch-model": set(),
    "sample-data": {"fetch-model"},
    "compute-fisher": {"fetch-model", "sample-data"},
    "search-masks": {"fetch-model", "sample-data", "compute-fisher"},
    "rearrange-masks": {"compute-fisher", "search-masks"},
    "tune-masks": {"fetch-model", "sample-data", "compute-fisher", "search-masks", "rearrange-masks"},
    "export-model": {"fetch-model", "tune-masks"},
    "evaluate-models": {"fetch-model", "search-masks", "rearrange-masks", "tune-masks", "export-model"},
    "profile-latency": {"fetch-model", "export-model"},
    "register-model": {
        "fetch-model",
        "sample-data",
        "compute-fisher",
        "search-masks",
        "rearrange-masks",
        "tune-masks",
        "export-model",
        "evaluate-models",
        "profile-latency",
    },
}
EXTERNAL_IO = {"fetch-model", "sample-data", "evaluate-models", "register-model"}
GPU = {"compute-fisher", "search-masks", "tune-masks", "evaluate-models", "profile-latency"}
CACHED = {"compute-fisher", "search-masks", "rearrange-masks", "tune-masks", "export-model"}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    path = tmp_path_factory.mktemp("compiled") / "pipeline.yaml"
    assert main(["compile", "--output", str(path), "--image", IMAGE]) == 0
    documents = list(yaml.safe_load_all(path.read_text()))
    assert len(documents) == 2, "the pipeline spec and the kubernetes platform spec"
    spec, platform = documents
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def _tasks(spec):
    return spec["root"]["dag"]["tasks"]


def _container(spec, task):
    executor = _tasks(spec)[task]["componentRef"]["name"].replace("comp-", "exec-")
    return spec["deploymentSpec"]["executors"][executor]["container"]


def test_dag_and_dependencies(compiled):
    spec, _ = compiled
    assert {name: set(t.get("dependentTasks", [])) for name, t in _tasks(spec).items()} == DAG
    register = _tasks(spec)["register-model"]["inputs"]
    assert register["parameters"]["pipeline_run"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
    assert set(register["artifacts"]) == {
        "model",
        "sample",
        "grads",
        "searched",
        "rearranged",
        "tuned",
        "pruned",
        "evaluation",
        "profile",
    }
    assert set(spec["root"]["outputDefinitions"]["artifacts"]) == {"Output"}


def test_parameters_and_defaults(compiled):
    spec, _ = compiled
    params = spec["root"]["inputDefinitions"]["parameters"]
    for name in (
        "model",
        "task",
        "train_data",
        "dev_data",
        "constraint",
        "num_samples",
        "seed",
        "registered_model_name",
        "max_metric_drop",
        "alias",
        "mlflow_uri",
        "device",
        "gpu_limit",
    ):
        assert params[name]["isOptional"], f"{name} has a default"
    assert params["alias"]["defaultValue"] == "pruned-candidate"
    assert params["gpu_limit"]["parameterType"] == "NUMBER_INTEGER"
    assert params["serving_dtype"]["defaultValue"] == "float32"
    for task, name, value in (
        ("search-masks", "serving_dtype", "serving_dtype"),  # measure the serving dtype
        ("profile-latency", "serving_dtype", "serving_dtype"),
        ("search-masks", "allocation", "allocation"),
        ("sample-data", "holdout", "holdout"),  # the held-out part the stages and allocation auto are validated on
    ):
        assert _tasks(spec)[task]["inputs"]["parameters"][name] == {"componentInputParameter": value}


def test_gpu_requests_follow_pipeline_parameters(compiled):
    spec, _ = compiled
    for task in DAG:
        accelerator = _container(spec, task).get("resources", {}).get("accelerator")
        if task in GPU:
            assert accelerator == {
                "resourceCount": "{{$.inputs.parameters['pipelinechannel--gpu_limit']}}",
                "resourceType": "{{$.inputs.parameters['pipelinechannel--accelerator_type']}}",
            }
        else:
            assert accelerator is None, task


def test_retries_and_caching(compiled):
    spec, _ = compiled
    for name, task in _tasks(spec).items():
        assert ("retryPolicy" in task) == (name in EXTERNAL_IO), name
        assert task.get("cachingOptions", {}).get("enableCache", False) == (name in CACHED), name
    assert _tasks(spec)["fetch-model"]["retryPolicy"]["maxRetryCount"] == 3


def test_s3_credentials_come_from_a_kubernetes_secret(compiled):
    spec, executors = compiled
    with_secret = {
        task for task in DAG if _tasks(spec)[task]["componentRef"]["name"].replace("comp-", "exec-") in executors
    }
    assert with_secret == EXTERNAL_IO
    (secret,) = executors["exec-fetch-model"]["secretAsEnv"]
    assert secret["secretNameParameter"] == {"componentInputParameter": "s3_secret"}
    assert {e["secretKey"]: e["envVar"] for e in secret["keyToEnv"]} == {k: k for k in S3_SECRET_KEYS}
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(S3_SECRET_KEYS)


def test_every_step_runs_the_project_image_without_installing(compiled):
    spec, _ = compiled
    for task in DAG:
        container = _container(spec, task)
        assert container["image"] == IMAGE
        assert "pip install" not in " ".join(container["command"]), task


def test_run_on_a_cluster_submits_the_pipeline(monkeypatch, capsys):
    from fake_kfp import install

    kfp = install(monkeypatch)  # the Kubeflow API server, in memory (tests/fake_kfp.py; more in test_submit.py)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert (
        main(
            [
                "run",
                "--host",
                "http://kfp.example",
                "--model",
                "s3://models/bert",
                "--constraint",
                "0.5",
                "--gpu-limit",
                "0",
            ]
        )
        == 0
    )
    assert kfp.clients == [{"host": "http://kfp.example"}] and list(kfp.pipelines) == ["fastprune"]
    ((run_id, run),) = kfp.runs.items()
    assert run["params"] == {"model": "s3://models/bert", "constraint": 0.5, "gpu_limit": 0}
    assert run["experiment_id"] == kfp.experiments["fastprune"]
    assert f"http://kfp.example/#/runs/details/{run_id}" in capsys.readouterr().out


def test_local_run_names_the_failed_step(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    (tmp_path / "no-model").mkdir()  # exists (a missing one is refused before the run), holds no model
    code = main(
        [
            "run",
            "--local",
            "--model",
            str(tmp_path / "no-model"),
            "--mlflow-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}",
            "--dev-data",
            str(DEFAULT_DEV),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "step fetch-model (prepare) failed" in err and "cannot read a model config from" in err
    assert "no-model" in err
    assert not list((tmp_path / "runs" / "pipeline").glob("*/sample-data"))
