"""Tests of fastprune.common.qa: SQuAD loading, feature preparation, post-processing, scoring, evaluation."""

from __future__ import annotations

import copy
import json
import math
import unicodedata
from pathlib import Path

import datasets
import numpy as np
import pytest
from fastprune.common.errors import ConfigError, DataError
from fastprune.common.ops.registry_extras import use_experiment
from fastprune.common.tasks.qa import (
    load_squad,
    normalize_answer,
    postprocess_predictions,
    prepare_eval_features,
    prepare_train_features,
    qa_logits,
    squad_scores,
)
from tiny import tiny_model, tiny_tokenizer

SMALL = Path(__file__).resolve().parents[1] / "data" / "squad_small.json"


@pytest.fixture(scope="module")
def raw() -> dict:
    return json.loads(SMALL.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def ds() -> datasets.Dataset:
    return load_squad(SMALL)


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def squash(text: str) -> str:
    """Normalised text without spaces and accents (as the uncased WordPiece tokenizer decodes it)."""
    text = "".join(c for c in unicodedata.normalize("NFD", text) if not unicodedata.combining(c))
    return normalize_answer(text).replace(" ", "")


def aligned(ds: datasets.Dataset, tok) -> datasets.Dataset:
    """Examples whose first gold answer starts and ends on token boundaries (SQuAD has a few that do not)."""
    keep = []
    for i, row in enumerate(ds):
        offsets = tok(row["context"], return_offsets_mapping=True)["offset_mapping"]
        start = row["answers"]["answer_start"][0]
        end = start + len(row["answers"]["text"][0])
        if start in {s for s, _ in offsets} and end in {e for _, e in offsets}:
            keep.append(i)
    assert len(keep) > 0.8 * len(ds)
    return ds.select(keep)


def oracle_logits(
    features: list[dict], hit: float = 10.0, null: float = 10.0
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Logits peaked at the gold start/end positions of each train feature (at CLS, `null` high, if none)."""
    starts, ends = [], []
    for f in features:
        s, e = np.zeros(len(f["input_ids"])), np.zeros(len(f["input_ids"]))
        s[f["start_positions"]] = hit if f["start_positions"] else null
        e[f["end_positions"]] = hit if f["end_positions"] else null
        starts.append(s)
        ends.append(e)
    return starts, ends


def with_unanswerable(raw: dict, n: int = 3) -> dict:
    """A copy of the v1.1 json where the first n questions are SQuAD v2 'is_impossible' ones."""
    data = copy.deepcopy(raw)
    for qa in data["data"][0]["paragraphs"][0]["qas"][:n]:
        qa["is_impossible"] = True
        qa["plausible_answers"], qa["answers"] = qa["answers"], []
    return data


# --------------------------------------------------------------------------------------------- loading
def test_load_official_json(raw, ds):
    n_qas = sum(len(p["qas"]) for a in raw["data"] for p in a["paragraphs"])
    assert len(ds) == n_qas > 30
    assert set(ds.column_names) == {"id", "question", "context", "answers"}
    assert len(set(ds["id"])) == len(ds)
    for row in ds:
        assert row["answers"]["text"]
        for text, start in zip(row["answers"]["text"], row["answers"]["answer_start"], strict=True):
            assert row["context"][start : start + len(text)] == text


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet", "list"])
def test_flat_round_trip(ds, tmp_path, fmt):
    rows = ds.to_list()
    if fmt == "list":
        source = rows
    elif fmt == "parquet":
        source = tmp_path / "squad.parquet"
        ds.to_parquet(str(source))
    else:
        source = tmp_path / f"squad.{fmt}"
        text = "\n".join(json.dumps(r) for r in rows) if fmt == "jsonl" else json.dumps(rows)
        source.write_text(text, encoding="utf-8")
    assert load_squad(source).to_list() == rows


def test_unanswerable_needs_version_2(raw, tmp_path):
    path = tmp_path / "v2.json"
    path.write_text(json.dumps(with_unanswerable(raw)), encoding="utf-8")
    with pytest.raises(DataError, match="squad_v2"):
        load_squad(path)
    v2 = load_squad(path, version_2=True)
    assert [len(a["text"]) == 0 for a in v2["answers"][:4]] == [True, True, True, False]


def bad_answer_start(rows: list[dict]) -> list[dict]:
    rows[0]["answers"] = {"text": ["Denver Broncos"], "answer_start": [3]}
    return rows


@pytest.mark.parametrize(
    ("write", "match"),
    [
        (None, "does not exist"),
        (lambda rows: json.dumps({"version": "1.1", "data": []}), "no questions"),
        (lambda rows: '{"data": [', "malformed JSON"),
        (
            lambda rows: json.dumps([{k: v for k, v in r.items() if k != "context"} for r in rows]),
            r"lacks column\(s\) \['context'\]; found \['answers', 'id', 'question'\]",
        ),
        (lambda rows: json.dumps(bad_answer_start(rows)), "is not at answer_start 3"),
        (lambda rows: json.dumps({"data": [{"paragraphs": [{"qas": [{"question": "q"}]}]}]}), "malformed SQuAD"),
    ],
)
def test_bad_files_raise_data_error(ds, tmp_path, write, match):
    path = tmp_path / "bad.json"
    if write is not None:
        path.write_text(write(ds.to_list()), encoding="utf-8")
    with pytest.raises(DataError, match=match) as err:
        load_squad(path)
    assert "bad.json" in str(err.value)


# -------------------------------------------------------------------------------------------- features
def test_train_features_point_at_answer(ds, tok):
    sub = aligned(ds, tok)
    features = prepare_train_features(sub, tok)
    assert all(
        set(f) == {"input_ids", "attention_mask", "token_type_ids", "start_positions", "end_positions"}
        for f in features
    )
    answers = {squash(a["text"][0]) for a in sub["answers"]}
    checked = 0
    _, meta = prepare_eval_features(sub, tok)
    found = {m["example_id"] for f, m in zip(features, meta, strict=True) if f["start_positions"]}
    assert found == set(sub["id"]), "every answer fits in some window"
    for f in (f for f in features if f["start_positions"]):
        assert 0 < f["start_positions"] <= f["end_positions"] < len(f["input_ids"]) <= 384
        decoded = tok.decode(f["input_ids"][f["start_positions"] : f["end_positions"] + 1])
        if tok.unk_token not in decoded:
            assert squash(decoded) in answers
            checked += 1
    assert checked > 0.8 * len(sub)
    batch = tok.pad(features[:4], return_tensors="pt")
    assert batch["input_ids"].shape[0] == 4 and batch["start_positions"].shape == (4,)


def test_long_contexts_give_windows(ds, tok):
    features = prepare_train_features(ds, tok, max_length=64, doc_stride=16)
    eval_features, meta = prepare_eval_features(ds, tok, max_length=64, doc_stride=16)
    assert len(features) == len(eval_features) == len(meta) > 3 * len(ds)
    gold = {r["id"]: r["answers"] for r in ds}
    for f, e, m in zip(features, eval_features, meta, strict=True):
        assert e["input_ids"] == f["input_ids"] and len(f["input_ids"]) <= 64
        spans = [o for o in m["offset_mapping"] if o is not None]
        start = gold[m["example_id"]]["answer_start"][0]
        inside = spans[0][0] <= start and start + len(gold[m["example_id"]]["text"][0]) <= spans[-1][1]
        assert (f["start_positions"] > 0) == inside
        assert m["offset_mapping"][0] is None and m["offset_mapping"][-1] is None
    assert sum(f["start_positions"] == 0 for f in features) > len(ds)


def test_feature_setup_errors(ds, tok):
    with pytest.raises(ConfigError, match="doc_stride"):
        prepare_train_features(ds, tok, max_length=64, doc_stride=64)
    with pytest.raises(ConfigError, match="question .* tokens"):
        prepare_eval_features(ds, tok, max_length=24, doc_stride=8)

    class Slow:
        is_fast = False

    with pytest.raises(ConfigError, match="fast tokenizer"):
        prepare_train_features(ds, Slow())


# ------------------------------------------------------------------------------- postprocess + scoring
@pytest.mark.parametrize(("max_length", "doc_stride"), [(384, 128), (64, 16)])
def test_oracle_logits_score_100(ds, tok, max_length, doc_stride):
    sub = aligned(ds, tok)
    features = prepare_train_features(sub, tok, max_length, doc_stride)
    _, meta = prepare_eval_features(sub, tok, max_length, doc_stride)
    starts, ends = oracle_logits(features)
    predictions = postprocess_predictions(sub, meta, starts, ends)
    assert predictions.keys() == set(sub["id"])
    assert squad_scores(predictions, sub) == {"exact_match": 100.0, "f1": 100.0}
    shifted = postprocess_predictions(sub, meta, [np.roll(s, 1) for s in starts], ends)
    scores = squad_scores(shifted, sub)
    assert scores["exact_match"] < 20 and 20 < scores["f1"] < 100


def test_oracle_version_2(raw, tok, tmp_path):
    path = tmp_path / "v2.json"
    path.write_text(json.dumps(with_unanswerable(raw)), encoding="utf-8")
    full = load_squad(path, version_2=True)
    sub = full.select([i for i in range(len(full)) if not full[i]["answers"]["text"]])
    sub = datasets.concatenate_datasets([sub, aligned(full.select(range(3, len(full))), tok)])
    features = prepare_train_features(sub, tok, 96, 32)
    _, meta = prepare_eval_features(sub, tok, 96, 32)
    # windows without the answer are confidently null: the example's null score is the minimum over windows
    starts, ends = oracle_logits(features, hit=10.0, null=12.0)
    v2 = squad_scores(postprocess_predictions(sub, meta, starts, ends, version_2=True), sub, version_2=True)
    assert v2["exact_match"] == v2["f1"] == v2["no_ans_f1"] == v2["has_ans_f1"] == 100.0
    v1 = squad_scores(postprocess_predictions(sub, meta, starts, ends), sub, version_2=True)
    assert v1["no_ans_f1"] == 0.0 and v1["has_ans_f1"] == 100.0


def test_squad_scores_by_hand():
    rows = [
        {
            "id": "a",
            "question": "q",
            "context": "Denver Broncos won.",
            "answers": {"text": ["Denver Broncos"], "answer_start": [0]},
        },
        {
            "id": "b",
            "question": "q",
            "context": "The Carolina Panthers lost.",
            "answers": {"text": ["Carolina Panthers", "Panthers"], "answer_start": [4, 13]},
        },
        {
            "id": "c",
            "question": "q",
            "context": "Levi's Stadium.",
            "answers": {"text": ["Levi's Stadium"], "answer_start": [0]},
        },
    ]
    ds = load_squad(rows)
    # a: "broncos" vs "denver broncos": P=1, R=1/2, F1=2/3; b: exact after normalisation;
    # c: "levi stadium" vs "levis stadium" (the apostrophe is dropped, not spaced): P=R=1/2
    predictions = {"a": "the Broncos", "b": "The Panthers!", "c": "Levi Stadium"}
    scores = squad_scores(predictions, ds)
    assert scores["exact_match"] == pytest.approx(100 / 3)
    assert scores["f1"] == pytest.approx(100 * (2 / 3 + 1 + 1 / 2) / 3)
    missing = squad_scores({"b": "Panthers"}, ds)
    assert missing == pytest.approx({"exact_match": 100 / 3, "f1": 100 / 3})
    assert normalize_answer("  The  Denver, Broncos!") == "denver broncos"


def test_squad_scores_version_2():
    rows = [
        {"id": "a", "question": "q", "context": "x y", "answers": {"text": [], "answer_start": []}},
        {"id": "b", "question": "q", "context": "x y", "answers": {"text": [], "answer_start": []}},
        {"id": "c", "question": "q", "context": "x y", "answers": {"text": ["y"], "answer_start": [2]}},
    ]
    ds = load_squad(rows, version_2=True)
    scores = squad_scores({"a": "", "b": "x", "c": ""}, ds, version_2=True)
    assert scores["exact_match"] == pytest.approx(100 / 3) and scores["f1"] == pytest.approx(100 / 3)
    assert scores["no_ans_f1"] == 50.0 and scores["has_ans_f1"] == 0.0


# ----------------------------------------------------------------------------------------- evaluation
@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_evaluate_qa_tiny_model(ds, tok, family):
    from fastprune.common.tasks.qa import evaluate_qa

    model = tiny_model(family, task="qa")
    sub = ds.select(range(0, 60, 10))
    model.train()
    scores = evaluate_qa(model, tok, sub, batch_size=4, max_length=128, doc_stride=32)
    assert model.training, "evaluate_qa must restore the training mode"
    assert set(scores) == {"exact_match", "f1"}
    assert all(math.isfinite(v) and 0 <= v <= 100 for v in scores.values())
    # dynamic padding must not change the logits that reach post-processing
    assert evaluate_qa(model, tok, sub, batch_size=64, max_length=128, doc_stride=32) == pytest.approx(scores)


def test_answer_questions_and_the_qa_pyfunc(ds, tok, tmp_path):
    """The registered pyfunc of a question-answering model answers raw questions with spans of their contexts,
    the same spans the SQuAD evaluation scores."""
    import mlflow
    import pandas as pd
    from fastprune.common.folders import write_manifest
    from fastprune.common.model.export import save_pruned
    from fastprune.common.ops.registry import log_pruned_model, predict_text
    from fastprune.common.tasks.spec import get_task

    model = tiny_model("bert", task="qa", seed=3)
    sub = ds.select(range(0, 40, 5))
    frame = pd.DataFrame({"question": sub["question"], "context": sub["context"]})
    got = predict_text(model, tok, get_task("squad"), frame)
    assert list(got.columns) == ["answer", "start", "end", "score"] and len(got) == len(sub)
    for row, context in zip(got.itertuples(), sub["context"], strict=True):
        assert row.answer and context[row.start : row.end] == row.answer
    features, meta = prepare_eval_features(sub, tok, 384, 128)
    expected = postprocess_predictions(sub, meta, *qa_logits(model, tok, features))
    assert got["answer"].tolist() == [expected[i] for i in sub["id"]]
    with pytest.raises(ValueError, match="'question' and 'context'"):
        predict_text(model, tok, get_task("squad"), pd.DataFrame({"text": ["who?"]}))

    folder = save_pruned(model, tmp_path / "model", tokenizer=tok)
    write_manifest(folder)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        use_experiment("qa")  # artifacts beside the database, not in ./mlruns
        with mlflow.start_run():
            info = log_pruned_model(folder, "squad", tmp_path)
        loaded = mlflow.pyfunc.load_model(info.model_uri)
    finally:
        mlflow.set_tracking_uri(previous)
    pd.testing.assert_frame_equal(loaded.predict(frame), got, check_dtype=False)  # text: object, not str


def test_best_span_is_the_best_valid_pair_of_the_top_starts_and_ends():
    """The vectorised span search equals the plain double loop over the n-best starts and ends."""
    from fastprune.common.tasks.qa import _best_span

    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(3, 60))
        start, end = rng.standard_normal(n), rng.standard_normal(n)
        offsets = [None if rng.random() < 0.3 else (3 * k, 3 * k + 2) for k in range(n)]
        n_best, longest = int(rng.integers(1, 8)), int(rng.integers(1, 6))
        expected = None
        for s in np.argsort(start)[::-1][:n_best]:
            for e in np.argsort(end)[::-1][:n_best]:
                if offsets[s] and offsets[e] and s <= e < s + longest:
                    if expected is None or start[s] + end[e] > expected[0]:
                        expected = (float(start[s] + end[e]), offsets[s][0], offsets[e][1])
        assert _best_span(start, end, offsets, n_best, longest) == expected


def test_evaluation_features_are_computed_once_per_dataset_and_tokenizer(ds, tok, monkeypatch):
    """Evaluating several models on one dev set tokenizes it once, also with a tokenizer loaded anew from the same
    files; another dataset or window size is tokenized again."""
    from fastprune.common.tasks import qa

    calls = []
    real = qa.prepare_eval_features
    monkeypatch.setattr(qa, "prepare_eval_features", lambda *a: calls.append(a[2:]) or real(*a))
    monkeypatch.setattr(qa, "_eval_features", qa._FeatureCache())
    model, sub = tiny_model("bert", task="qa"), ds.select(range(6))
    first = qa.evaluate_qa(model, tok, sub, max_length=128, doc_stride=32)
    assert qa.evaluate_qa(model, tiny_tokenizer(), sub, max_length=128, doc_stride=32) == first
    assert calls == [(128, 32)]
    qa.evaluate_qa(model, tok, ds.select(range(1, 7)), max_length=128, doc_stride=32)
    qa.evaluate_qa(model, tok, sub, max_length=96, doc_stride=32)
    assert calls == [(128, 32), (128, 32), (96, 32)]
