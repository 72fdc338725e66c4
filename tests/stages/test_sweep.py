"""The budget sweep: its compiled DAG (Fisher once, ParallelFor over the constraints, Collected into the selection,
registration only under the condition), and one real local run with kfp.local on a tiny model registered in a real
MLflow server, started the way CI starts it (``fastprune trigger --local --pipeline sweep``): the smallest candidate
that passes the gate is registered, the reports are attached, the source version is marked and not pruned again."""

import base64
import contextlib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
import yaml
from fastprune.common.folders import stage_info, verify_manifest
from fastprune.common.ops.trigger import PRUNED_MODEL, PRUNED_RUN, STATUS
from fastprune.common.stages.sweep import select_stage
from fastprune.pipelines.sweep_pipeline import compile_sweep_pipeline
from mlflow import MlflowClient
from servers import mlflow_server
from tiny import SST2

from fastprune.cli import main
from fastprune.ops_cli import format_sweep

SOURCE, TARGET = "tiny-src", "tiny-src-pruned"
CONSTRAINTS = [0.3, 0.7]
LOOP_STEPS = {"search-masks", "rearrange-masks", "tune-masks", "export-model", "evaluate-models", "profile-latency"}


# ----- the compiled sweep ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    path = compile_sweep_pipeline(str(tmp_path_factory.mktemp("c") / "sweep.yaml"), "reg.example/fp:1", parallelism=3)
    spec, platform = yaml.safe_load_all(Path(path).read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_fisher_once_then_a_parallel_for_over_the_constraints(compiled):
    spec, _ = compiled
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {
        "fetch-model",
        "sample-data",
        "compute-fisher",
        "for-loop-1",
        "select-candidate",
        "condition-2",
    }
    loop = tasks["for-loop-1"]
    assert loop["parameterIterator"]["items"] == {"inputParameter": "pipelinechannel--constraints"}
    assert loop["iteratorPolicy"] == {"parallelismLimit": 3}
    assert set(loop["dependentTasks"]) == {"fetch-model", "sample-data", "compute-fisher"}
    body = spec["components"]["comp-for-loop-1"]["dag"]["tasks"]
    assert set(body) == LOOP_STEPS
    assert body["search-masks"]["inputs"]["parameters"]["constraint"] == {
        "componentInputParameter": "pipelinechannel--constraints-loop-item"
    }
    assert spec["root"]["inputDefinitions"]["parameters"]["constraints"]["parameterType"] == "LIST"


def test_the_candidates_are_collected_and_only_a_passing_one_registered(compiled):
    spec, executors = compiled
    tasks = spec["root"]["dag"]["tasks"]
    collected = tasks["select-candidate"]["inputs"]["artifacts"]
    assert set(collected) == {"searched", "rearranged", "tuned", "pruned", "evaluation", "profile"}
    assert {a["taskOutputArtifact"]["producerTask"] for a in collected.values()} == {"for-loop-1"}
    inputs = spec["components"]["comp-select-candidate"]["inputDefinitions"]["artifacts"]
    assert all(inputs[name]["isArtifactList"] for name in collected)
    assert tasks["condition-2"]["triggerPolicy"]["condition"] == (
        "inputs.parameter_values['pipelinechannel--select-candidate-Output'] == true"
    )
    assert set(spec["components"]["comp-condition-2"]["dag"]["tasks"]) == {"register-model"}
    outputs = spec["components"]["comp-select-candidate"]["outputDefinitions"]["artifacts"]
    assert outputs["report"]["artifactType"]["schemaTitle"] == "system.HTML", "the Pareto plot, rendered by the UI"
    # the steps keep the pruning pipeline's settings: image, GPU requests, caching, retries and the S3 secret
    for name, executor in spec["deploymentSpec"]["executors"].items():
        assert executor["container"]["image"] == "reg.example/fp:1", name
    gpu = {"compute-fisher", "search-masks", "tune-masks", "evaluate-models", "profile-latency"}
    for step in LOOP_STEPS | {"compute-fisher"}:
        resources = spec["deploymentSpec"]["executors"][f"exec-{step}"]["container"].get("resources", {})
        assert ("accelerator" in resources) == (step in gpu), step
    body = spec["components"]["comp-for-loop-1"]["dag"]["tasks"]
    assert body["tune-masks"]["cachingOptions"] == {"enableCache": True}
    assert body["evaluate-models"]["retryPolicy"]["maxRetryCount"] == 3
    assert set(executors) == {"exec-fetch-model", "exec-sample-data", "exec-evaluate-models", "exec-register-model"}


# ----- one real sweep, started by the CI trigger ------------------------------------------------------------------
@dataclass(frozen=True)
class Swept:
    tracking_uri: str
    folder: Path  # the kfp.local run's folder
    code: int
    output: str
    argv: list


@pytest.fixture(scope="module")
def swept(tiny_sst2_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    env = pytest.MonkeyPatch()
    env.delenv("MLFLOW_TRACKING_URI", raising=False)
    env.setenv("OMP_NUM_THREADS", "1")
    env.setenv("FASTPRUNE_CACHE", str(tmp / "cache"))
    dev = tmp / "dev.tsv"
    dev.write_text("".join((SST2 / "dev.tsv").read_text().splitlines(keepends=True)[:201]))
    params = tmp / "sweep.yaml"
    params.write_text(
        yaml.safe_dump(
            {
                "task": "sst2",
                "train_data": str(SST2 / "train.tsv"),
                "dev_data": str(dev),
                "constraints": CONSTRAINTS,
                "objective": "smallest",
                "num_samples": 64,
                "max_metric_drop": 100.0,
                "gpu_limit": 0,
                "profile_batch_size": 2,
                "profile_seq_len": 16,
            }
        )
    )
    try:
        with mlflow_server(tmp) as uri:
            mlflow.set_tracking_uri(uri)
            mlflow.set_experiment("fine-tuning")
            with mlflow.start_run() as run:
                mlflow.log_artifacts(str(tiny_sst2_model), "model")
            client = MlflowClient(uri)
            client.create_registered_model(SOURCE)
            client.create_model_version(SOURCE, f"{run.info.artifact_uri}/model", run.info.run_id)
            argv = [
                "trigger",
                "--registered-model",
                SOURCE,
                "--tracking-uri",
                uri,
                "--local",
                "--pipeline",
                "sweep",
                "--pipeline-root",
                str(tmp / "root"),
                "--params",
                str(params),
            ]
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                code = main(argv)
            (folder,) = (tmp / "root").glob("fastprune-sweep-*")
            yield Swept(uri, folder, code, out.getvalue(), argv)
    finally:
        env.undo()


@pytest.mark.server
def test_the_smallest_passing_candidate_is_registered(swept):
    assert swept.code == 0, swept.output
    sweep = stage_info(swept.folder / "select-candidate" / "sweep")
    assert [c["constraint"] for c in sweep["candidates"]] == CONSTRAINTS
    assert sweep["num_passed"] == 2 and sweep["chosen"] == 0, "both pass the loose gate: the smallest is C=0.3"
    assert sweep["candidates"][0]["params_after"] < sweep["candidates"][1]["params_after"]

    client = MlflowClient(swept.tracking_uri)
    (version,) = client.search_model_versions(f"name='{TARGET}'")
    assert version.tags["gate"] == "passed" and version.tags["source_model"] == f"models:/{SOURCE}/1"
    assert client.get_model_version_by_alias(TARGET, "pruned-candidate").version == version.version
    metrics = client.get_run(version.run_id).data.metrics
    assert metrics["flops_ratio"] <= 0.3 + 1e-9
    assert metrics["params_after"] == sweep["candidates"][0]["params_after"]
    chosen, candidate = (
        swept.folder / "select-candidate" / "chosen_pruned",
        swept.folder / "for-loop-1-iteration-0" / "export-model" / "pruned",
    )
    assert verify_manifest(chosen) == verify_manifest(candidate), "the registered model is that candidate's"
    (line,) = [line for line in format_sweep(sweep).splitlines() if line.endswith("<- registered")]
    assert "C=0.3" in line


@pytest.mark.server
def test_reports_are_attached_to_the_run_and_to_the_model_version(swept):
    pareto = (swept.folder / "select-candidate" / "report").read_text()
    assert "C=0.3" in pareto and "C=0.7" in pareto and "Registered <b>C=0.3</b>" in pareto
    image = re.search(r'src="data:image/png;base64,([^"]+)"', pareto).group(1)
    assert base64.b64decode(image)[:4] == b"\x89PNG"
    page = (swept.folder / "register-model" / "report_page").read_text()
    assert '<span class="passed">passed</span>' in page and "data:image/png;base64," in page
    assert "speedup" in page and "Time per stage" in page
    markdown = (swept.folder / "register-model" / "report").read_text()
    assert "heads kept per layer" in markdown and "| fisher |" in markdown

    client = MlflowClient(swept.tracking_uri)
    (version,) = client.search_model_versions(f"name='{TARGET}'")
    artifacts = {a.path for a in client.list_artifacts(version.run_id)}
    assert {"report.md", "report.html", "kept_units.png", "masks.safetensors"} <= artifacts
    assert version.tags["report"] == f"runs:/{version.run_id}/report.html"
    assert version.description.startswith("**Gate passed**") and "FLOPs kept" in version.description


@pytest.mark.server
def test_the_source_version_is_marked_and_never_pruned_twice(swept, capsys):
    tags = MlflowClient(swept.tracking_uri).get_model_version(SOURCE, "1").tags
    registration = stage_info(swept.folder / "register-model" / "registration")
    assert tags[PRUNED_RUN] == registration["params"]["pipeline_run"] and tags[STATUS] == "succeeded"
    assert tags[PRUNED_MODEL] == f"models:/{TARGET}/1"
    assert "1 pruned" in swept.output

    assert main(swept.argv) == 0
    assert "already pruned into models:/tiny-src-pruned/1" in capsys.readouterr().out
    assert len(list(swept.folder.parent.glob("fastprune-sweep-*"))) == 1, "no second run"


@pytest.mark.server
def test_the_gate_decides_among_the_real_candidates(swept, tmp_path):
    parts = {
        "searched": ("search-masks", "masks"),
        "rearranged": ("rearrange-masks", "rearranged"),
        "tuned": ("tune-masks", "tuned"),
        "pruned": ("export-model", "pruned"),
        "evaluation": ("evaluate-models", "evaluation"),
        "profile": ("profile-latency", "profile"),
    }
    candidates = [
        {part: swept.folder / f"for-loop-1-iteration-{i}" / step / name for part, (step, name) in parts.items()}
        for i in range(len(CONSTRAINTS))
    ]
    drops = [stage_info(c["evaluation"])["metric_drop"] for c in candidates]
    for max_drop in (min(drops) - 0.5, *sorted(drops)):
        info = select_stage(tmp_path / f"s{max_drop}", {"max_drop": max_drop}, candidates)
        passing = [i for i, d in enumerate(drops) if d <= max_drop]
        expected = min(passing, key=lambda i: stage_info(candidates[i]["pruned"])["params_after"]) if passing else None
        assert info["chosen"] == expected, (drops, max_drop)
    assert (
        json.loads((swept.folder / "select-candidate" / "executor_output.json").read_text())["parameterValues"][
            "Output"
        ]
        is True
    )
