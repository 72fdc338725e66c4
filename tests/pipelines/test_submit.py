"""``fastprune submit`` (and ``run --host``) against an in-memory Kubeflow Pipelines API (the one thing mocked):
pipeline versions uploaded once per spec, runs and recurring runs with the right arguments, the cron conversion,
parameter files, and clear early errors."""

import json
import logging

import pytest
import yaml
from fake_kfp import ApiException, install
from fastprune.common.errors import ConfigError
from fastprune.pipelines.params import PruneRunParams, SweepRunParams, load_params, params_model
from fastprune.pipelines.submit import kfp_cron, pipeline_factory

from fastprune.cli import main

HOST = "https://kfp.example.com/pipeline"
TOKEN = "tok-0123456789-secret"


@pytest.fixture
def kfp(monkeypatch):
    return install(monkeypatch)


@pytest.fixture
def params_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "model": "s3://models/bert-sst2",
                "task": "sst2",
                "train_data": "s3://d/train.tsv",
                "dev_data": "s3://d/dev.tsv",
                "constraint": 0.6,
                "gpu_limit": 0,
            }
        )
    )
    return path


@pytest.mark.parametrize(
    "cron, expected",
    [
        ("0 3 * * *", "0 0 3 * * *"),
        ("*/15 9-17 * * MON-FRI", "0 */15 9-17 * * MON-FRI"),
        ("  30  2 1,15 jan-jun/2 0 ", "0 30 2 1,15 jan-jun/2 0"),
        ("0 0 9 ? * 2-6", "0 0 9 ? * 2-6"),  # already Kubeflow's 6 fields
        ("@daily", "0 0 0 * * *"),
        ("@weekly", "0 0 0 * * 0"),
    ],
)
def test_cron_is_converted_to_kubeflows_six_fields(cron, expected):
    assert kfp_cron(cron) == expected


@pytest.mark.parametrize(
    "cron, message",
    [
        ("61 * * * *", "minute field '61' is out of range: 61 is not within 0-59"),
        ("0 24 * * *", "hour field '24' is out of range: 24 is not within 0-23"),
        ("0 3 0 * *", "day-of-month field '0' is out of range: 0 is not within 1-31"),
        ("0 3 * 13 *", "month field '13' is out of range"),
        ("0 3 * * 7", "day-of-week field '7' is out of range: 7 is not within 0-6"),
        ("0 3 * * FUN", "day-of-week field 'FUN' has 'FUN', which is not a number or a name"),
        ("*/0 * * * *", "minute field '*/0' has the step '0', which must be a positive number"),
        ("30-10 * * * *", "start is after its end"),
        ("0 3 * *", "4 fields"),
        ("60 0 3 * * *", "second field '60' is out of range"),
        ("@fortnightly", "unknown macro"),
        ("? 3 * * *", "minute field '?' has '?', which is not a number"),  # '?' only in the day fields
    ],
)
def test_bad_cron_is_refused_naming_the_field_and_the_valid_range(cron, message):
    with pytest.raises(ConfigError) as error:
        kfp_cron(cron)
    assert message in str(error.value)
    assert repr(cron) in str(error.value), "the whole expression is named"


def test_submit_uploads_a_version_and_starts_a_run(kfp, params_file, monkeypatch, capsys, caplog):
    monkeypatch.setenv("KFP_TOKEN", TOKEN)
    caplog.set_level(logging.DEBUG)
    argv = [
        "submit",
        "--host",
        HOST,
        "--namespace",
        "team-a",
        "--params",
        str(params_file),
        "--constraint",
        "0.5",
        "--experiment",
        "nightly",
    ]
    assert main(argv) == 0

    assert kfp.clients == [{"host": HOST, "namespace": "team-a", "existing_token": TOKEN}]
    (pipeline_id,) = kfp.pipelines.values()
    assert list(kfp.pipelines) == ["fastprune"]
    versions = kfp.versions[pipeline_id]
    assert versions[-1]["name"].startswith("v0.1.0-") and versions[-1]["spec"]["pipelineInfo"]["name"] == "fastprune"
    ((run_id, run),) = kfp.runs.items()
    assert run["params"] == {
        "model": "s3://models/bert-sst2",
        "task": "sst2",
        "train_data": "s3://d/train.tsv",
        "dev_data": "s3://d/dev.tsv",
        "constraint": 0.5,
        "gpu_limit": 0,
    }
    assert (run["pipeline_id"], run["version_id"]) == (pipeline_id, versions[-1]["id"])
    assert run["experiment_id"] == kfp.experiments["nightly"] and run["name"] == "fastprune-bert-sst2"
    out = capsys.readouterr().out
    assert f"{HOST}/#/runs/details/{run_id}" in out and "uploaded" in out
    assert TOKEN not in out + caplog.text, "the token is never printed or logged"

    # the same pipeline again: its version is reused, only a run is added
    assert main(argv) == 0
    assert len(kfp.versions[pipeline_id]) == len(versions) and len(kfp.runs) == 2
    assert "unchanged, reused" in capsys.readouterr().out


def test_a_changed_pipeline_is_uploaded_as_a_new_version(kfp, params_file):
    assert main(["submit", "--host", HOST, "--params", str(params_file)]) == 0
    assert main(["submit", "--host", HOST, "--params", str(params_file), "--image", "registry.example/fp:2"]) == 0
    (pipeline_id,) = kfp.pipelines.values()
    names = [v["name"] for v in kfp.versions[pipeline_id]]
    assert len(set(names[-2:])) == 2, "another spec, another version"
    first, second = (kfp.runs[r]["version_id"] for r in sorted(kfp.runs))
    assert first != second
    executors = kfp.version(second)["spec"]["deploymentSpec"]["executors"]
    assert {e["container"]["image"] for e in executors.values()} == {"registry.example/fp:2"}


def test_schedule_creates_a_recurring_run(kfp, params_file, capsys):
    assert (
        main(
            [
                "submit",
                "--host",
                HOST,
                "--params",
                str(params_file),
                "--schedule",
                "30 2 * * 1",
                "--max-concurrency",
                "2",
                "--run-name",
                "weekly-bert",
            ]
        )
        == 0
    )
    assert kfp.runs == {}
    ((job_id, job),) = kfp.recurring_runs.items()
    assert job["cron"] == "0 30 2 * * 1" and job["max_concurrency"] == 2 and job["no_catchup"] is True
    assert job["name"] == "weekly-bert" and job["params"]["constraint"] == 0.6
    assert kfp.version(job["version_id"])["spec"]["pipelineInfo"]["name"] == "fastprune"
    out = capsys.readouterr().out
    assert f"{HOST}/#/recurringrun/details/{job_id}" in out and "0 30 2 * * 1" in out


def test_bad_cron_fails_before_anything_is_sent(kfp, params_file, capsys):
    assert main(["submit", "--host", HOST, "--params", str(params_file), "--schedule", "61 * * * *"]) == 2
    err = capsys.readouterr().err
    assert "minute field '61' is out of range" in err and "0-59" in err
    assert kfp.clients == [] and kfp.calls == []


def test_sweep_pipeline_with_constraints_from_a_json_file(kfp, tmp_path):
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({"model": "models:/bert-sst2/3", "constraints": [0.4, 0.6], "objective": "fastest"}))
    argv = ["submit", "--host", HOST, "--pipeline", "sweep", "--params", str(path), "--max-metric-drop", "0.5"]
    assert main(argv) == 0
    assert list(kfp.pipelines) == ["fastprune-sweep"]
    (run,) = kfp.runs.values()
    assert run["params"] == {
        "model": "models:/bert-sst2/3",
        "constraints": [0.4, 0.6],
        "objective": "fastest",
        "max_metric_drop": 0.5,
    }
    assert kfp.version(run["version_id"])["spec"]["pipelineInfo"]["name"] == "fastprune-sweep"


@pytest.mark.parametrize(
    "content, message",
    [
        ({"constraint": 1.5}, "constraint: Value error, constraint must be a fraction strictly between 0 and 1"),
        ({"constriant": 0.5}, "unknown parameter 'constriant' (valid: model, task"),
        ({"task": "imdb"}, "unknown task 'imdb'; valid tasks: cola, sst2"),
        ({"gpu_limit": -1}, "gpu_limit: Input should be greater than or equal to 0"),
        (["model", "x"], "must hold a mapping of parameter names to values"),
    ],
)
def test_bad_parameter_files_are_refused_clearly(kfp, tmp_path, capsys, content, message):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(content))
    assert main(["submit", "--host", HOST, "--params", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(path) in err
    assert kfp.calls == []


def test_sweep_parameters_are_checked(kfp, tmp_path, capsys):
    assert main(["submit", "--host", HOST, "--constraints", "0.4", "0.5"]) == 2
    assert "unknown parameter 'constraints'" in capsys.readouterr().err, "the prune pipeline has no constraints"
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"constraints": [0.5, 0.5]}))
    with pytest.raises(ConfigError, match="constraints must be distinct"):
        load_params(path, SweepRunParams)
    path.write_text(yaml.safe_dump({"constraints": [0.5, 1.2]}))
    with pytest.raises(ConfigError, match="strictly between 0 and 1"):
        load_params(path, SweepRunParams)


def test_host_namespace_and_token_file_come_from_the_environment(kfp, params_file, tmp_path, monkeypatch, capsys):
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    monkeypatch.setenv("KFP_HOST", HOST)
    monkeypatch.setenv("KFP_NAMESPACE", "team-b")
    monkeypatch.setenv("KFP_TOKEN_FILE", str(token))
    monkeypatch.setenv("KFP_UI_HOST", "https://ui.example.com")
    assert main(["submit", "--params", str(params_file)]) == 0
    assert kfp.clients == [
        {"host": HOST, "namespace": "team-b", "existing_token": TOKEN, "ui_host": "https://ui.example.com"}
    ]
    assert "https://ui.example.com/#/runs/details/" in capsys.readouterr().out

    monkeypatch.delenv("KFP_HOST")
    assert main(["submit", "--params", str(params_file)]) == 2
    assert "no Kubeflow Pipelines host: pass --host URL or set KFP_HOST" in capsys.readouterr().err


def test_server_errors_say_what_was_refused(kfp, params_file, capsys):
    kfp.fail["upload_pipeline"] = ApiException(403, "Forbidden", '{"message": "user cannot create pipelines"}')
    assert main(["submit", "--host", HOST, "--params", str(params_file)]) == 2
    err = capsys.readouterr().err
    assert "Kubeflow Pipelines refused creating pipeline 'fastprune': HTTP 403 Forbidden: user cannot create" in err


def test_dry_run_sends_nothing(kfp, params_file, capsys):
    assert main(["submit", "--host", HOST, "--params", str(params_file), "--schedule", "@hourly", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would create a recurring run, cron '0 0 * * * *'" in out and '"constraint": 0.6' in out
    assert kfp.clients == []


@pytest.mark.parametrize("kind", ["prune", "sweep"])
def test_parameters_follow_the_pipelines(kind):
    build, model, _ = pipeline_factory(kind)
    inputs = {name: spec.type for name, spec in build().component_spec.inputs.items()}
    assert set(model.model_fields) == set(inputs), "every pipeline parameter can be set, and only those"
    base = {"prune": PruneRunParams, "sweep": SweepRunParams}[kind]
    assert issubclass(model, base), "the declared ones keep their checks"
    with pytest.raises(ConfigError, match="which the pipeline does not take"):
        params_model(base, {k: v for k, v in inputs.items() if k != "model"})


def test_causal_lm_runs_take_their_window_length(kfp, tmp_path, capsys):
    """The pipelines and the CI trigger take a causal LM and the sample's ``max_length`` and ``batch_size``."""
    from fastprune.cli import build_parser
    from fastprune.ops_cli import pipeline_params

    path = tmp_path / "llm.yaml"
    text = {"train_data": "s3://d/train.txt", "dev_data": "s3://d/dev.txt", "max_length": 256, "batch_size": 2}
    path.write_text(yaml.safe_dump({"model": "s3://models/smollm2", "task": "causal-lm", **text}))
    assert main(["submit", "--host", HOST, "--params", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert '"task": "causal-lm"' in out and '"max_length": 256' in out and '"batch_size": 2' in out
    flags = ["--registered-model", "smollm2", "--host", HOST, "--task", "causal-lm", "--max-length", "128"]
    for pipeline in ("prune", "sweep"):
        argv = ["trigger", *flags, "--pipeline", pipeline]
        args = build_parser(argv).parse_args(argv)
        assert pipeline_params(args, pipeline).arguments() == {"task": "causal-lm", "max_length": 128}
