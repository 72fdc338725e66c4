"""Task ``causal-lm``: text read from txt/jsonl/folders, calibration windows drawn by seed, the next-token Fisher loss
(data and model labels), perplexity as exp(mean NLL), the lower-is-better direction in the gate, the sweep and the
sanity warnings, and the bad inputs refused before any compute."""

from __future__ import annotations

import json
import math

import pytest
import torch
from fastprune.common.errors import DataError, ModelTaskMismatchError
from fastprune.common.model.loading import check_model_for_task
from fastprune.common.ops.registry import evaluation_gate
from fastprune.common.stages.sanity import chance_warning, sampling_warning
from fastprune.common.stages.sweep import Candidate, choose
from fastprune.common.tasks.spec import get_task
from tiny import TEXT, tiny_config, tiny_llama

TASK = get_task("causal-lm")


@pytest.fixture(scope="module")
def macbeth():
    return TASK.load_data(TEXT / "macbeth_gut.txt")


def test_text_sources_txt_jsonl_and_folders(tmp_path, macbeth):
    assert len(macbeth) == 1 and macbeth[0]["text"].lstrip().startswith("MACBETH")
    records = tmp_path / "docs.jsonl"
    records.write_text("\n".join(json.dumps({"body": f"document {i}", "id": i}) for i in range(3)))
    assert TASK.load_data(records, text_columns=["body"])["text"] == ["document 0", "document 1", "document 2"]
    with pytest.raises(DataError, match=r"record 0 has no text field 'text' \(found \['body', 'id'\]\)"):
        TASK.load_data(records)
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / "b.txt").write_text("second")
    assert TASK.load_data(tmp_path)["text"] == ["first", "second"]
    (tmp_path / "table.tsv").write_text("x\ty\n")
    with pytest.raises(DataError, match=r"reads text from one of \['.txt', '.jsonl', '.json'\]"):
        TASK.load_data(tmp_path / "table.tsv")
    with pytest.raises(DataError, match="does not exist"):
        TASK.load_data(tmp_path / "missing.txt")


def test_windows_are_cut_and_sampled_by_seed(macbeth, tokenizer):
    sample, slots = TASK.draw_sample(macbeth, 12, seed=0, max_length=32)
    again, _ = TASK.draw_sample(macbeth, 12, seed=0, max_length=32)
    other, _ = TASK.draw_sample(macbeth, 12, seed=1, max_length=32)
    assert slots == len(macbeth[0]["text"]) // int(32 * TASK.chars_per_token)
    assert sample["text"] == again["text"] and sample["text"] != other["text"]
    distinct, _ = TASK.draw_sample(macbeth, slots, seed=0, replace=False, max_length=32)
    assert len(set(distinct["text"])) == slots  # without replacement: every slot once
    warning = sampling_warning(slots + 1, slots, False, TASK.sample_unit)
    assert f"larger than the {slots} window slots of the training text" in warning
    batches = TASK.batches(sample, tokenizer, batch_size=5, max_length=32)
    assert [len(b["input_ids"]) for b in batches] == [5, 5, 2]
    for b in batches:
        assert b["input_ids"].shape[1] == 32 and bool(b["attention_mask"].all())  # a slot holds a whole window
        assert torch.equal(b["labels"], b["input_ids"])
    short = TASK.batches(sample.select([0]).map(lambda r: {"text": "to be or not"}), tokenizer, 4, 32)
    assert short[0]["input_ids"].shape[1] == 4 and short[0]["labels"].tolist() == short[0]["input_ids"].tolist()


def test_fisher_loss_is_the_next_token_loss_and_finite_for_both_label_sources(macbeth, tokenizer):
    model = tiny_llama()
    sample, _ = TASK.draw_sample(macbeth, 4, seed=0, max_length=16)
    batch = TASK.batches(sample, tokenizer, 4, 16)[0]
    loss = TASK.fisher_loss(model, batch)
    reference = model(input_ids=batch["input_ids"], labels=batch["labels"]).loss  # full windows: the same mean
    torch.testing.assert_close(loss, reference)
    with torch.no_grad():
        drawn = TASK.fisher_loss(model, batch, "model", torch.Generator().manual_seed(0))
        redrawn = TASK.fisher_loss(model, batch, "model", torch.Generator().manual_seed(0))
    assert math.isfinite(float(drawn)) and float(drawn) == float(redrawn) and float(drawn) != float(loss.detach())


def test_perplexity_is_exp_of_the_mean_next_token_nll(tokenizer, tmp_path):
    model = tiny_llama()
    text = "the movie is a gorgeous , witty , seductive film . " * 40
    (tmp_path / "dev.txt").write_text(text)
    dev = TASK.load_data(tmp_path / "dev.txt")
    metrics = TASK.evaluate(model, tokenizer, dev, batch_size=64)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids), TASK.eval_length):  # by hand: window by window, token by token
            window = torch.tensor([ids[start : start + TASK.eval_length]])
            logp = model(input_ids=window).logits.log_softmax(-1)[0]
            for t in range(window.shape[1] - 1):
                total -= float(logp[t, window[0, t + 1]])
                count += 1
    assert metrics["tokens"] == count and metrics["windows"] == math.ceil(len(ids) / TASK.eval_length)
    assert metrics["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-4)
    assert metrics["chance"] == model.config.vocab_size


def test_lower_perplexity_is_better_in_the_gate_the_sweep_and_the_warnings():
    assert not TASK.higher_is_better and TASK.metric_drop(20.0, 23.0) == 3.0
    assert evaluation_gate(
        {"task": "causal-lm", "metric": "perplexity", "metric_before": 20.0, "metric_after": 20.5}, 1.0
    )[0]
    passed, reason = evaluation_gate(
        {"metric": "perplexity", "higher_is_better": False, "metric_before": 20.0, "metric_after": 23.0}, 1.0
    )
    assert not passed and "a rise of 3.00 points" in reason

    def candidate(i: int, after: float) -> Candidate:
        return Candidate(
            i, 0.7, "flops", "perplexity", 20.0, after, 0.7, 100, 80, None, None, None, True, "", None, False
        )

    assert choose([candidate(0, 25.0), candidate(1, 22.0), candidate(2, 24.0)], "smallest").index == 1
    assert candidate(0, 25.0).drop == 5.0
    assert chance_warning(TASK, [], {"perplexity": 3500.0, "chance": 3039.0}) is not None
    assert chance_warning(TASK, [], {"perplexity": 40.0, "chance": 3039.0}) is None


def test_a_decoder_for_a_classification_task_and_an_encoder_for_causal_lm_are_refused():
    llama = tiny_llama().config
    llama.architectures = ["LlamaForCausalLM"]
    check_model_for_task(llama, TASK, "tiny-llama")
    with pytest.raises(ModelTaskMismatchError, match="it is a causal language model: use --task causal-lm"):
        check_model_for_task(llama, get_task("sst2"), "tiny-llama")
    bert = tiny_config("bert")
    bert.architectures = ["BertForSequenceClassification"]
    with pytest.raises(ModelTaskMismatchError, match=r"needs a decoder language model .*\(model_type 'bert'\)"):
        check_model_for_task(bert, TASK, "tiny-bert")


def test_text_shorter_than_one_window_is_refused(macbeth, tokenizer):
    TASK.check_data(macbeth, tokenizer, 512, "macbeth")
    short = macbeth.map(lambda r: {"text": "to be or not to be"})
    with pytest.raises(DataError, match=r"short text has 6 tokens, shorter than one window of 512 .* --max-length"):
        TASK.check_data(short, tokenizer, None, "short text")


def test_the_pyfunc_predict_continues_prompts(tokenizer):
    import pandas as pd

    out = TASK.predict(tiny_llama(), tokenizer, pd.DataFrame({"prompt": ["the movie is", "a fine"]}))
    assert list(out.columns) == ["text"] and len(out) == 2 and all(isinstance(t, str) and t for t in out["text"])
    with pytest.raises(ValueError, match="'prompt' column"):
        TASK.predict(tiny_llama(), tokenizer, pd.DataFrame({"text": ["x"]}))
