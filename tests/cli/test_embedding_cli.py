"""``fastprune prune --task embedding`` end to end on a tiny sentence-transformers folder, its early errors, and
(slow) on the real all-MiniLM-L6-v2."""

import json

import pytest
import torch
from tiny import DATA, tiny_st_folder

from fastprune.cli import main

TRAIN, DEV = str(DATA / "stsb_train.tsv"), str(DATA / "stsb_dev.tsv")


def _prune(model, out, *extra, constraint="0.5", samples="64", dev=DEV):
    return main(
        [
            "prune",
            "--model",
            str(model),
            "--task",
            "embedding",
            "--train-data",
            TRAIN,
            "--dev-data",
            dev,
            "--constraint",
            constraint,
            "--num-samples",
            samples,
            "--output",
            str(out),
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """``fastprune prune --task embedding`` of a tiny sentence-transformers folder: its output folder."""
    work = tmp_path_factory.mktemp("embedding_cli")
    assert _prune(tiny_st_folder(work / "st"), work / "out") == 0
    return work / "out"


def test_prune_an_embedding_model_end_to_end(pruned):
    summary = json.loads((pruned / "summary.json").read_text())
    assert summary["metric"] == "spearman_cosine" and summary["flops_ratio"] <= 0.5 + 1e-9
    assert summary["params_after"] < summary["params_before"]
    assert summary["metric_after"] == pytest.approx(summary["metric_tuned_masked"], abs=1e-4)  # exported == masked
    # the budget re-split rearranges the layers it re-splits for embeddings (Task.resplit_rearranges)
    assert summary["resplit"] and any(entry["rearranged"] for entry in summary["resplit"])
    exported = pruned / "model"
    assert {"modules.json", "sentence_bert_config.json", "1_Pooling"} <= {p.name for p in exported.iterdir()}


def test_fastprune_onnx_of_the_pruned_embedding_model(pruned, tmp_path, capsys):
    import numpy as np
    import onnxruntime as ort
    from fastprune.common.model.loading import load_model
    from fastprune.common.tasks.spec import get_task

    assert main(["onnx", "--pruned", str(pruned / "model"), "--output", str(tmp_path / "onnx")]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["max_abs_diff_vs_torch"] < 1e-4
    assert {"model.onnx", "modules.json", "1_Pooling", "sentence_bert_config.json"} <= {
        p.name for p in (tmp_path / "onnx").iterdir()
    }
    texts = ["A man is playing a guitar.", "Three dogs run in the park."]
    task = get_task("embedding")
    model, tokenizer = load_model(pruned / "model", task)
    session = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    enc = tokenizer(texts, padding=True, return_tensors="np")
    (got,) = session.run(["sentence_embedding"], {i.name: enc[i.name].astype(np.int64) for i in session.get_inputs()})
    np.testing.assert_allclose(got, task.embed_texts(model, tokenizer, texts, "cpu").numpy(), atol=1e-5)


def test_bad_embedding_inputs_fail_before_any_compute(tmp_path, capsys):
    plain = tiny_st_folder(tmp_path / "plain")
    (plain / "modules.json").unlink()
    assert _prune(plain, tmp_path / "out") == 2
    assert "not a sentence-transformers model folder" in capsys.readouterr().err
    sqrt = tiny_st_folder(tmp_path / "sqrt", mode="mean_sqrt_len_tokens")
    assert _prune(sqrt, tmp_path / "out") == 2
    assert "pools with mean_sqrt_len_tokens" in capsys.readouterr().err
    unscored = tmp_path / "pairs.tsv"
    unscored.write_text("sentence1\tsentence2\nA man runs.\tA man is running.\n")
    assert _prune(tiny_st_folder(tmp_path / "ok"), tmp_path / "out", dev=str(unscored)) == 2
    assert "needs sentence pairs with a gold score" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_prune_real_minilm_as_an_embedding_model(tmp_path):
    from fastprune.defaults import minilm_dir

    model = minilm_dir()
    if not (model / "modules.json").is_file():
        pytest.skip(f"{model} is not a sentence-transformers folder")
    dev = tmp_path / "dev.tsv"  # 80 pairs: five evaluations of the dev set are most of the time
    dev.write_text("".join(open(DEV, encoding="utf-8").readlines()[:81]), encoding="utf-8")
    torch.set_num_threads(2)
    try:
        code = _prune(model, tmp_path / "out", constraint="0.6", samples="64", dev=str(dev))
    finally:
        torch.set_num_threads(1)
    assert code == 0
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["metric_before"] > 80, "all-MiniLM-L6-v2 scores about 87 Spearman on STS-B dev"
    assert s["flops_ratio"] <= 0.6 + 1e-9 and s["params_after"] < 0.9 * s["params_before"]
    assert s["metric_after"] == pytest.approx(s["metric_tuned_masked"], abs=0.05)  # exported == masked
    assert s["metric_after"] > s["metric_before"] - 10, "pruning 40% of FLOPs should not wreck the embeddings"
