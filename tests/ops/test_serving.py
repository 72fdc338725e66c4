"""The registered MLflow model serves without fastprune: its own code is logged with it, it pins only what it uses,
its signature declares the outputs, and ``mlflow models serve`` answers from a virtual environment without
fastprune (label names and probabilities; answer spans). Versions registered earlier still load."""

import ast
import json
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
import yaml
from cleanenv import clean_venv
from fastprune.common.folders import write_manifest
from fastprune.common.model.arch import adapter_for
from fastprune.common.model.export import export_pruned, load_pruned, save_pruned
from fastprune.common.model.masks import Masks
from fastprune.common.ops.registry import predict_text
from fastprune.common.ops.registry_extras import use_experiment
from fastprune.common.ops.serving import ENTRY_FILE, SERVED_PACKAGES, log_portable_model
from fastprune.common.tasks.spec import get_task
from mlflow.artifacts import download_artifacts
from mlflow.exceptions import MlflowException
from servers import mlflow_model_server, mlflow_server, post_json
from tiny import tiny_model, tiny_tokenizer

LABELS = {0: "negative", 1: "positive"}
TEXTS = ["a gorgeous , witty , seductive movie .", "the movie is a disaster", "it 's not bad at all"]
QUESTIONS = pd.DataFrame(
    {
        "question": ["who wrote the book ?", "when was it written ?"],
        "context": ["the book was written by ann lee in the summer .", "it was written in 1990 , in a small house ."],
    }
)


def _pruned_folder(task: str, folder: Path, num_labels: int = 2) -> Path:
    """A tiny model pruned unevenly (a layer without heads, one without neurons), exported as the pipeline does."""
    model = tiny_model("bert", task="qa" if task == "squad" else "classification", num_labels=num_labels, seed=3)
    if task == "sst2":
        model.config.id2label, model.config.label2id = LABELS, {v: k for k, v in LABELS.items()}
    dims = adapter_for(model).dims(model.config)
    head, neuron = torch.ones(dims.num_layers, dims.num_heads), torch.ones(dims.num_layers, dims.intermediate_size)
    head[0], head[1, 1:], neuron[1], neuron[2, 20:] = 0.0, 0.0, 0.0, 0.0
    folder = save_pruned(export_pruned(model, Masks(head, neuron)), folder, tiny_tokenizer())
    write_manifest(folder)
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exported")
    return {task: _pruned_folder(task, root / task, 1 if task == "stsb" else 2) for task in ("sst2", "stsb", "squad")}


@pytest.fixture
def tracking(tmp_path):
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    use_experiment("serving")  # artifacts beside the database, not in ./mlruns
    yield
    mlflow.set_tracking_uri(previous)


def _expected(folder: Path, task: str, frame: pd.DataFrame) -> pd.DataFrame:
    model, tokenizer = load_pruned(folder)
    return predict_text(model, tokenizer, get_task(task), frame)


def test_logged_model_carries_its_code_and_pins_only_what_it_uses(folders, tracking, tmp_path):
    with mlflow.start_run():
        info = log_portable_model(folders["sst2"], "sst2", tmp_path)
    local = Path(download_artifacts(info.model_uri, dst_path=str(tmp_path / "downloaded")))
    requirements = (local / "requirements.txt").read_text().split()
    assert [r.split("==")[0] for r in requirements] == list(SERVED_PACKAGES) and all("==" in r for r in requirements)
    code = next(local.rglob(ENTRY_FILE)).read_text()
    tree = ast.parse(code)
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported - set(sys.stdlib_module_names) == {"mlflow", "numpy", "pandas", "torch", "transformers"}
    signature = yaml.safe_load((local / "MLmodel").read_text())["signature"]
    outputs = {c["name"]: c["type"] for c in json.loads(signature["outputs"])}
    assert outputs == {"label": "string", "score": "double", "probabilities": "array"}

    got = mlflow.pyfunc.load_model(info.model_uri).predict(pd.DataFrame({"text": TEXTS}))
    expected = _expected(folders["sst2"], "sst2", pd.DataFrame({"text": TEXTS}))
    assert got["label"].tolist() == [LABELS[int(i)] for i in expected["label"]] and got["label"].dtype == object
    assert torch.allclose(
        torch.tensor(got["probabilities"].tolist()), torch.tensor(expected["probabilities"].tolist()), atol=1e-6
    )


def test_regression_and_question_answering(folders, tracking, tmp_path):
    with mlflow.start_run():
        regressor = mlflow.pyfunc.load_model(log_portable_model(folders["stsb"], "stsb", tmp_path / "r").model_uri)
        qa_info = log_portable_model(folders["squad"], "squad", tmp_path / "q")
    pairs = pd.DataFrame({"text": TEXTS, "text_pair": TEXTS[::-1]})
    scores = regressor.predict(pairs)
    assert list(scores.columns) == ["score"]
    assert scores["score"].tolist() == pytest.approx(
        _expected(folders["stsb"], "stsb", pairs)["score"].tolist(), abs=1e-5
    )
    answers = mlflow.pyfunc.load_model(qa_info.model_uri).predict(QUESTIONS)
    pd.testing.assert_frame_equal(answers, _expected(folders["squad"], "squad", QUESTIONS), check_dtype=False)
    assert answers["answer"].dtype == object  # not pandas 3's str, which MLServer 1.7.1 cannot encode
    for row, context in zip(answers.itertuples(), QUESTIONS["context"], strict=True):
        assert context[row.start : row.end] == row.answer
    signature = mlflow.models.get_model_info(qa_info.model_uri).signature
    assert signature.outputs.input_names() == ["answer", "start", "end", "score"]
    with pytest.raises(MlflowException, match=r"missing inputs \['question', 'context'\]"):
        mlflow.pyfunc.load_model(qa_info.model_uri).predict(pd.DataFrame({"text": ["who?"]}))


def test_sentence_embeddings(tracking, tmp_path):
    """An embedding model (a pruned sentence-transformers folder) serves ``embedding`` per ``text``, pooled and
    normalised as its folder says, the same as fastprune's own loader."""
    from fastprune.common.model.loading import load_model
    from tiny import tiny_st_folder

    task = get_task("embedding")
    model, tokenizer = load_model(tiny_st_folder(tmp_path / "st", mode="cls"), task)
    dims = adapter_for(model).dims(model.config)
    head = torch.ones(dims.num_layers, dims.num_heads)
    head[0, 1:] = 0.0
    folder = save_pruned(
        export_pruned(model, Masks(head, torch.ones(dims.num_layers, dims.intermediate_size))),
        tmp_path / "m",
        tokenizer,
    )
    write_manifest(folder)
    with mlflow.start_run():
        info = log_portable_model(folder, "embedding", tmp_path / "e")
    got = mlflow.pyfunc.load_model(info.model_uri).predict(pd.DataFrame({"text": TEXTS}))
    expected = _expected(folder, "embedding", pd.DataFrame({"text": TEXTS}))
    assert list(got.columns) == ["embedding"] and len(got["embedding"][0]) == dims.hidden_size
    assert torch.allclose(
        torch.tensor(got["embedding"].tolist()), torch.tensor(expected["embedding"].tolist()), atol=1e-5
    )
    assert mlflow.models.get_model_info(info.model_uri).signature.outputs.input_names() == ["embedding"]


def test_a_corrupted_folder_is_refused(folders, tracking, tmp_path):
    with mlflow.start_run():
        info = log_portable_model(folders["sst2"], "sst2", tmp_path)
    local = Path(download_artifacts(info.model_uri, dst_path=str(tmp_path / "downloaded")))
    weights = next(local.rglob("model.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-8] + b"garbage!")
    with pytest.raises(MlflowException, match="model.safetensors does not match its sha256"):
        mlflow.pyfunc.load_model(str(local))


# The entry point that the versions registered before the models that serve without fastprune carry.
LEGACY_ENTRY_POINT = '''"""MLflow entry point of a model registered by fastprune (a model from code: nothing \
pickled)."""

from mlflow.models import set_model

from fastprune.common.registry import PrunedTextModel

set_model(PrunedTextModel())
'''


def test_versions_registered_earlier_still_load(folders, tracking, tmp_path):
    """Versions registered before this change run fastprune's PrunedTextModel (their code imports it)."""
    entry = tmp_path / "pyfunc_model.py"
    entry.write_text(LEGACY_ENTRY_POINT)
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(entry),
            artifacts={"model": str(folders["sst2"])},
            model_config={"task": "sst2"},
            pip_requirements=["fastprune==0.1.0"],
        )
    got = mlflow.pyfunc.load_model(info.model_uri).predict(pd.DataFrame({"text": TEXTS}))
    assert got.equals(_expected(folders["sst2"], "sst2", pd.DataFrame({"text": TEXTS})))


@pytest.mark.slow
@pytest.mark.server
def test_mlflow_models_serve_without_fastprune(folders, tmp_path):
    """Registered on a real MLflow server, served by ``mlflow models serve --env-manager local`` from a venv where
    fastprune does not import, queried over HTTP."""
    venv = clean_venv(tmp_path / "venv")
    with mlflow_server(tmp_path / "tracking", timeout_s=300) as uri:  # a busy shared machine: slow starts
        client = mlflow.MlflowClient(uri)
        experiment = client.create_experiment("serving")
        versions = {}
        for task in ("sst2", "squad"):
            run = client.create_run(experiment)
            previous = mlflow.get_tracking_uri()
            mlflow.set_tracking_uri(uri)
            try:
                with mlflow.start_run(run_id=run.info.run_id):
                    info = log_portable_model(folders[task], task, tmp_path / task)
                versions[task] = mlflow.register_model(info.model_uri, f"tiny-{task}").version
            finally:
                mlflow.set_tracking_uri(previous)
        env = venv.env(MLFLOW_TRACKING_URI=uri)
        with mlflow_model_server(venv.python, f"models:/tiny-sst2/{versions['sst2']}", tmp_path / "s1", env) as url:
            status, answer = post_json(f"{url}/invocations", {"dataframe_records": [{"text": t} for t in TEXTS]})
            bad_status, bad = post_json(f"{url}/invocations", {"dataframe_records": [{"sentence": "no text"}]})
        with mlflow_model_server(venv.python, f"models:/tiny-squad/{versions['squad']}", tmp_path / "s2", env) as url:
            qa_status, qa_answer = post_json(f"{url}/invocations", {"dataframe_records": QUESTIONS.to_dict("records")})
    assert status == 200, answer
    expected = _expected(folders["sst2"], "sst2", pd.DataFrame({"text": TEXTS}))
    predictions = answer["predictions"]
    assert [p["label"] for p in predictions] == [LABELS[int(i)] for i in expected["label"]]
    assert torch.allclose(
        torch.tensor([p["probabilities"] for p in predictions]),
        torch.tensor(expected["probabilities"].tolist()),
        atol=1e-5,
    )
    assert [p["score"] for p in predictions] == pytest.approx(expected["score"].tolist(), abs=1e-5)
    assert bad_status == 400 and "missing inputs ['text']" in bad["message"], bad
    assert qa_status == 200, qa_answer
    expected_qa = _expected(folders["squad"], "squad", QUESTIONS)
    got_qa = qa_answer["predictions"]
    assert [(p["answer"], p["start"], p["end"]) for p in got_qa] == list(
        zip(expected_qa["answer"], expected_qa["start"], expected_qa["end"], strict=True)
    )
    assert all(c[p["start"] : p["end"]] == p["answer"] for p, c in zip(got_qa, QUESTIONS["context"], strict=True))
