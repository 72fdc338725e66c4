"""``fastprune trigger`` against a real MLflow tracking server: every registered version is pruned once, a second
trigger prunes nothing, a new version is picked up, a failed run is retried up to a limit. Kubeflow's API server is
the in-memory fake (tests/fake_kfp.py); the local failure path runs kfp.local for real."""

from datetime import datetime, timedelta, timezone

import mlflow
import pytest
import yaml
from fake_kfp import install
from fastprune.common.errors import ConfigError
from fastprune.common.ops.trigger import ATTEMPTS, ERROR, PRUNED_RUN, RUN, STATUS, UPDATED, SourceVersion, decide
from mlflow import MlflowClient
from servers import mlflow_server

from fastprune.cli import main
from fastprune.defaults import SST2_DEV, SST2_TRAIN

pytestmark = pytest.mark.server
HOST = "https://kfp.example.com"


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory):
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as uri:
        yield uri


@pytest.fixture
def env(tracking_uri, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    monkeypatch.setenv("FASTPRUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    params = tmp_path / "fastprune.yaml"
    params.write_text(
        yaml.safe_dump(
            {
                "task": "sst2",
                "train_data": "s3://data/train.tsv",
                "dev_data": "s3://data/dev.tsv",
                "constraint": 0.5,
                "gpu_limit": 0,
            }
        )
    )
    return params


def _register(tracking_uri: str, name: str, content: str = "weights") -> str:
    """A new version of ``name`` whose artifacts are one small file (the cluster never downloads them here)."""
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("sources")
    with mlflow.start_run() as run:
        mlflow.log_text(content, "model/README.txt")
    client = MlflowClient(tracking_uri)
    if not client.search_registered_models(f"name='{name}'"):
        client.create_registered_model(name)
    return str(client.create_model_version(name, f"{run.info.artifact_uri}/model", run.info.run_id).version)


def _tags(tracking_uri: str, name: str) -> dict[str, dict[str, str]]:
    return {v.version: v.tags for v in MlflowClient(tracking_uri).search_model_versions(f"name='{name}'")}


def _trigger(name: str, params, *extra: str) -> int:
    return main(["trigger", "--registered-model", name, "--host", HOST, "--params", str(params), *extra])


def test_each_version_is_pruned_once_and_new_ones_are_picked_up(env, tracking_uri, monkeypatch, capsys):
    kfp = install(monkeypatch)
    name = "bert-src"
    for _ in range(2):
        _register(tracking_uri, name)

    assert _trigger(name, env) == 0
    runs = {r["params"]["model"]: (run_id, r) for run_id, r in kfp.runs.items()}
    assert set(runs) == {f"models:/{name}/1", f"models:/{name}/2"}
    for version in ("1", "2"):
        run_id, run = runs[f"models:/{name}/{version}"]
        assert run["params"] == {
            "model": f"models:/{name}/{version}",
            "task": "sst2",
            "constraint": 0.5,
            "train_data": "s3://data/train.tsv",
            "dev_data": "s3://data/dev.tsv",
            "gpu_limit": 0,
            "registered_model_name": f"{name}-pruned",
            "mlflow_uri": tracking_uri,
        }
        assert run["name"] == f"fastprune-{name}-v{version}"
        tags = _tags(tracking_uri, name)[version]
        assert (tags[STATUS], tags[RUN], tags[ATTEMPTS]) == ("submitted", run_id, "1")
    assert len({r["version_id"] for r in kfp.runs.values()}) == 1, "one pipeline version for the whole trigger"
    out = capsys.readouterr().out
    assert out.count("submitted") >= 2 and f"{HOST}/#/runs/details/" in out

    # CI runs again while both runs are in flight: nothing is submitted twice
    assert _trigger(name, env) == 0
    assert len(kfp.runs) == 2
    assert "is running" in capsys.readouterr().out

    # version 1's run succeeded, version 2's failed; a third version appears
    first, second = runs[f"models:/{name}/1"][0], runs[f"models:/{name}/2"][0]
    kfp.runs[first]["state"], kfp.runs[second]["state"] = "SUCCEEDED", "FAILED"
    _register(tracking_uri, name)
    assert _trigger(name, env, "--max-attempts", "2") == 0
    new = {r["params"]["model"]: run_id for run_id, r in kfp.runs.items() if run_id not in (first, second)}
    assert set(new) == {f"models:/{name}/2", f"models:/{name}/3"}, "the failed one is retried, the new one pruned"
    tags = _tags(tracking_uri, name)
    assert tags["1"][PRUNED_RUN] == first and tags["1"][STATUS] == "succeeded"
    assert (tags["2"][STATUS], tags["2"][RUN], tags["2"][ATTEMPTS]) == ("submitted", new[f"models:/{name}/2"], "2")
    assert tags["3"][ATTEMPTS] == "1"

    # the retry fails too: the limit is reached, nothing more is submitted
    kfp.runs[new[f"models:/{name}/2"]]["state"] = "FAILED"
    count = len(kfp.runs)
    assert _trigger(name, env, "--max-attempts", "2") == 0
    assert len(kfp.runs) == count
    out = capsys.readouterr().out
    assert "failed 2 times, the limit" in out and "already pruned" in out


def test_an_alias_or_a_stage_selects_the_versions(env, tracking_uri, monkeypatch, capsys):
    kfp = install(monkeypatch)
    name = "roberta-src"
    for _ in range(3):
        _register(tracking_uri, name)
    client = MlflowClient(tracking_uri)
    client.set_registered_model_alias(name, "champion", "2")

    assert _trigger(name, env, "--source-alias", "champion", "--registered-model-name", "roberta-small") == 0
    (run,) = kfp.runs.values()
    assert run["params"]["model"] == f"models:/{name}/2" and run["params"]["registered_model_name"] == "roberta-small"

    assert _trigger(name, env, "--source-alias", "best") == 2
    assert "has no alias 'best'; its aliases: ['champion']" in capsys.readouterr().err
    assert _trigger("no-such-model", env) == 2
    assert "no registered model 'no-such-model'" in capsys.readouterr().err
    assert _trigger(name, env, "--source-stage", "Prod") == 2
    assert "unknown stage 'Prod'; stages: None, Staging, Production, Archived" in capsys.readouterr().err
    assert _trigger(name, env, "--registered-model-name", name) == 2
    assert "another name than the source" in capsys.readouterr().err
    assert len(kfp.runs) == 1


def test_dry_run_changes_nothing(env, tracking_uri, monkeypatch, capsys):
    kfp = install(monkeypatch)
    name = "electra-src"
    _register(tracking_uri, name)
    assert _trigger(name, env, "--dry-run") == 0
    assert kfp.clients == [] and _tags(tracking_uri, name) == {"1": {}}
    assert "would prune" in capsys.readouterr().out


def test_a_failed_local_run_is_recorded_and_retried(env, tracking_uri, tmp_path, capsys):
    """Real kfp.local: the version holds no model, so the fetch step fails; the failure is tagged, the next
    trigger would retry it, and after --max-attempts it gives up."""
    name = "broken-src"
    _register(tracking_uri, name, content="not a model")
    argv = [
        "trigger",
        "--registered-model",
        name,
        "--local",
        "--pipeline-root",
        str(tmp_path / "root"),
        "--params",
        str(env),
        "--train-data",
        str(SST2_TRAIN),
        "--dev-data",
        str(SST2_DEV),
    ]  # real files: checked up front
    assert main(argv) == 1, "a failed local run fails the CI job"
    tags = _tags(tracking_uri, name)["1"]
    assert (tags[STATUS], tags[ATTEMPTS]) == ("failed", "1") and PRUNED_RUN not in tags
    assert "step fetch-model (prepare) failed" in tags[ERROR] and "holds no Hugging Face model folder" in tags[ERROR]
    assert "1 failed" in capsys.readouterr().out

    assert main([*argv, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would prune" in out and "attempt 2 of 3" in out
    assert main([*argv, "--max-attempts", "1"]) == 0
    assert "failed 1 times, the limit" in capsys.readouterr().out


NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _version(**tags) -> SourceVersion:
    return SourceVersion("m", "1", {k: v for k, v in tags.items() if v is not None})


@pytest.mark.parametrize(
    "tags, state, action, reason",
    [
        ({}, None, "prune", "not pruned yet"),
        ({PRUNED_RUN: "r1", STATUS: "succeeded"}, None, "skip", "already pruned by run r1"),
        ({STATUS: "submitted", RUN: "r1"}, "RUNNING", "skip", "run r1 is running"),
        ({STATUS: "submitted", RUN: "r1"}, "SUCCEEDED", "done", "run r1 succeeded"),
        ({STATUS: "submitted", RUN: "r1", ATTEMPTS: "1"}, "CANCELED", "retry", "attempt 2 of 3 after: run r1 ended"),
        ({STATUS: "running", UPDATED: (NOW - timedelta(hours=1)).isoformat()}, None, "skip", "running 1 h 0 min ago"),
        (
            {STATUS: "running", UPDATED: (NOW - timedelta(days=2)).isoformat(), ATTEMPTS: "1"},
            None,
            "retry",
            "no news of run (none) for 48 h 0 min",
        ),
        ({STATUS: "failed", ATTEMPTS: "3", ERROR: "boom"}, None, "skip", "failed 3 times, the limit (last: boom)"),
    ],
)
def test_decisions(tags, state, action, reason):
    decision = decide(_version(**tags), lambda run_id: state, 3, timedelta(hours=24), NOW)
    assert decision.action == action and reason in decision.reason


def test_the_example_ci_workflow_uses_valid_commands_and_parameters():
    import re
    import shlex
    from pathlib import Path

    from fastprune.pipelines.params import load_params
    from fastprune.pipelines.submit import pipeline_factory

    from fastprune.cli import build_parser

    repo = Path(__file__).resolve().parents[2]
    workflow = yaml.safe_load((repo / "examples" / "github-actions" / "prune-new-model-versions.yml").read_text())
    commands = [
        step["run"]
        for job in workflow["jobs"].values()
        for step in job["steps"]
        if step.get("run", "").startswith("fastprune ")
    ]
    assert len(commands) == 3 and any("--local" in c for c in commands) and any("--host" in c for c in commands)
    for command in commands:
        argv = shlex.split(re.sub(r"\$(\w+)", r"value-of-\1", command))[1:]  # the variables are set in CI
        args = build_parser(argv).parse_args(argv)  # exits on an unknown flag
        assert args.command == "trigger" and (repo / args.params).is_file()
    for name, kind in (("fastprune-params.yaml", "prune"), ("fastprune-sweep-params.yaml", "sweep")):
        load_params(repo / "examples" / name, pipeline_factory(kind)[1])


def test_registered_model_layouts(tmp_path):
    """Where the fetch step finds the Hugging Face folder in a downloaded model version."""
    from fastprune.common.ops.registry import RegistryError, _model_folder, parse_models_uri

    def files(root, *paths):
        for path in paths:
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_text("x")
        return root

    plain = files(tmp_path / "plain", "config.json", "model.safetensors")
    assert _model_folder(plain, "u") == plain
    flavour = files(
        tmp_path / "flavour",
        "MLmodel",
        "model/config.json",
        "model/model.safetensors",
        "components/tokenizer/vocab.txt",
        "components/tokenizer/tokenizer_config.json",
    )
    assert _model_folder(flavour, "u") == flavour / "model"
    assert (flavour / "model" / "vocab.txt").is_file(), "the tokenizer is put beside the model"
    nested = files(tmp_path / "nested", "artifacts/hf/config.json", "artifacts/hf/pytorch_model.bin", "README.md")
    assert _model_folder(nested, "u") == nested / "artifacts" / "hf"
    files(nested, "other/config.json", "other/model.safetensors")
    with pytest.raises(RegistryError, match="several model folders"):
        _model_folder(nested, "models:/m/1")
    with pytest.raises(RegistryError, match="models:/m/1 holds no Hugging Face model folder.*README.txt"):
        _model_folder(files(tmp_path / "none", "README.txt"), "models:/m/1")

    assert parse_models_uri("models:/bert-sst2/3") == ("bert-sst2", 3, None)
    assert parse_models_uri("models:/bert-sst2@champion") == ("bert-sst2", None, "champion")
    with pytest.raises(ConfigError, match="use models:/NAME/VERSION"):
        parse_models_uri("models:/bert-sst2/latest")
