"""Loading task data, sampling, batching and metrics."""

import json

import numpy as np
import pytest
import torch
from fastprune.common.errors import ConfigError, DataError
from fastprune.common.tasks.data import average_length, load_task_data, sample_dataset, task_batches
from fastprune.common.tasks.evaluate import classification_metrics, regression_metrics
from fastprune.common.tasks.spec import get_task
from tiny import DATA, SST2, tiny_tokenizer


@pytest.mark.parametrize(
    "task,file,rows,pair,label_type",
    [
        ("sst2", SST2 / "dev.tsv", 872, False, int),
        ("mrpc", DATA / "mrpc_train.tsv", 160, True, int),
        ("stsb", DATA / "stsb_train.tsv", 160, True, float),
        ("rte", DATA / "rte_train.tsv", 120, True, int),
    ],
)
def test_glue_tsv_columns_are_inferred(task, file, rows, pair, label_type):
    ds = load_task_data(file, get_task(task))
    assert len(ds) == rows
    assert bool(ds[0]["text_b"]) == pair
    assert all(isinstance(v, label_type) for v in ds["label"])
    if task == "rte":  # string labels mapped to ids in the task's order
        assert set(ds["label"]) == {0, 1}


def test_other_formats_give_the_same_rows(tmp_path):
    task = get_task("rte")
    ref = load_task_data(DATA / "rte_dev.tsv", task)
    records = [{"sentence1": r["text_a"], "sentence2": r["text_b"], "label": r["label"]} for r in ref]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    (tmp_path / "d.json").write_text(json.dumps(records))
    import csv

    with open(tmp_path / "d.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["sentence1", "sentence2", "label"])
        w.writeheader()
        w.writerows(records)
    from datasets import Dataset

    Dataset.from_list(records).to_parquet(str(tmp_path / "d.parquet"))
    for name in ("d.jsonl", "d.json", "d.csv", "d.parquet"):
        assert load_task_data(tmp_path / name, task).to_list() == ref.to_list(), name


def test_named_columns_override_inference(tmp_path):
    (tmp_path / "d.csv").write_text("review,stars\ngreat film,1\nawful,0\n")
    ds = load_task_data(tmp_path / "d.csv", get_task("sst2"), text_columns=["review"], label_column="stars")
    assert ds["text_a"] == ["great film", "awful"] and ds["label"] == [1, 0]


@pytest.mark.parametrize(
    "content,match",
    [
        ("", "empty"),
        ("sentence\tlabel\n", "no examples"),
        ("text\tlabel\nhello\t1\n", "no text column.*sentence"),
        ("sentence\tgold\nhello\t1\n", "no label column"),
        ("sentence\tlabel\nhello\t7\n", "label 7 outside"),
        ("sentence\tlabel\nhello\t1\textra\n", "line 2 has 3 fields"),
    ],
)
def test_bad_data_fails_early_with_a_clear_message(tmp_path, content, match):
    path = tmp_path / "bad.tsv"
    path.write_text(content)
    with pytest.raises(DataError, match=match):
        load_task_data(path, get_task("sst2"))


def test_missing_file_and_unknown_task():
    with pytest.raises(DataError, match="does not exist"):
        load_task_data("/nonexistent/train.tsv", get_task("sst2"))
    with pytest.raises(ConfigError, match="valid tasks: .*sst2"):
        get_task("imdb")


def test_sampling_is_seeded_and_batches_pad_dynamically():
    task = get_task("sst2")
    ds = load_task_data(SST2 / "dev.tsv", task)
    a, b, c = (sample_dataset(ds, 100, s) for s in (0, 0, 1))
    assert a.to_list() == b.to_list() and a.to_list() != c.to_list()
    assert len(sample_dataset(ds, 5000, 0, replace=False)) == len(ds)
    with_replacement = sample_dataset(ds, 2000, 0)
    assert len(with_replacement) == 2000 and len(set(with_replacement["text_a"])) < 872
    batches = task_batches(a, tiny_tokenizer(), task, batch_size=32)
    assert [len(b["labels"]) for b in batches] == [32, 32, 32, 4]
    lengths = {b["input_ids"].shape[1] for b in batches}
    assert len(lengths) > 1 and max(lengths) <= task.max_length  # padded per batch, truncated to max
    assert 3 < average_length(batches) < max(lengths)


def test_metrics_match_known_values():
    m = classification_metrics(np.array([1, 0, 1, 1]), np.array([1, 0, 0, 1]))
    assert m["accuracy"] == 75.0 and m["f1"] == pytest.approx(80.0)
    assert m["matthews"] == pytest.approx(100 * (2 * 1 - 1 * 0) / np.sqrt(3 * 2 * 1 * 2))
    r = regression_metrics(np.array([1.0, 2.0, 3.0, 5.0]), np.array([1.0, 2.0, 3.0, 4.0]))
    assert r["spearman"] == pytest.approx(100.0) and r["pearson"] < 100.0


def test_first_examples_cuts_the_batch_that_holds_the_last_one():
    from fastprune.common.tasks.data import first_examples

    batches = [{"input_ids": torch.arange(i * 4, i * 4 + 4)[:, None], "labels": torch.zeros(4, 1)} for i in range(3)]
    first = first_examples(batches, 6)
    assert [len(b["input_ids"]) for b in first] == [4, 2] and len(first[1]["labels"]) == 2
    assert torch.cat([b["input_ids"] for b in first]).flatten().tolist() == list(range(6))
    assert first_examples(batches, 0) == batches and first_examples(batches, 99) == batches
