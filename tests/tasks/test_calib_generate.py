"""Self-generated calibration (``calib_generate``): each causal-LM window keeps its prompt and the rest is sampled
from the dense model; the windows round-trip through the Fisher stage's folder."""

from __future__ import annotations

import pytest
import torch
from fastprune.common.tasks.causal_lm import generated_batches, load_batches, pad_windows, save_batches
from tiny import tiny_llama


def _windows() -> list[dict[str, torch.Tensor]]:
    """Two batches of real-token windows: one of them shorter than the others (padded), one no longer than the
    prompt."""
    g = torch.Generator().manual_seed(1)

    def tokens(n: int) -> list[int]:
        return torch.randint(5, 200, (n,), generator=g).tolist()

    return [pad_windows([tokens(16), tokens(11), tokens(4)], 0), pad_windows([tokens(16), tokens(16)], 0)]


@pytest.mark.parametrize("group", [16, 2])  # 2: the windows sampled in several groups
def test_the_prompt_is_kept_and_the_rest_sampled_within_each_window(group, monkeypatch):
    monkeypatch.setattr("fastprune.common.tasks.causal_lm.GENERATE_BATCH", group)
    model, batches = tiny_llama(), _windows()
    made = generated_batches(model, batches, prompt=4, seed=0)
    assert len(made) == len(batches)
    changed = 0
    for old, new in zip(batches, made, strict=True):
        assert torch.equal(new["attention_mask"], old["attention_mask"])  # shapes and lengths unchanged
        assert torch.equal(new["input_ids"][:, :4], old["input_ids"][:, :4])  # the prompts kept
        pad = old["attention_mask"] == 0
        assert torch.equal(new["input_ids"][pad], old["input_ids"][pad])  # the padding stays padding
        assert torch.equal(new["labels"], new["input_ids"].masked_fill(pad, -100))
        changed += int((new["input_ids"][:, 4:] != old["input_ids"][:, 4:])[~pad[:, 4:]].sum())
    assert changed > 20  # most continuation tokens differ from the text's (random 200-token vocabulary)
    assert torch.equal(made[0]["input_ids"][2], batches[0]["input_ids"][2])  # a window no longer than the prompt


def test_generation_is_seeded_and_leaves_the_global_random_state_alone():
    model, batches = tiny_llama(), _windows()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = generated_batches(model, batches, prompt=4, seed=0)
    assert torch.equal(torch.rand(3), expected)  # the caller's random stream is untouched
    again = generated_batches(model, batches, prompt=4, seed=0)
    other = generated_batches(model, batches, prompt=4, seed=1)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(first, other, strict=True))


def test_windows_are_sampled_the_same_however_the_task_batched_them():
    """Generation groups windows of one width across batches (fewer, larger ``generate`` calls): the task's batch
    size does not change the windows."""
    model, batches = tiny_llama(), _windows()
    whole = [{k: torch.cat([b[k] for b in batches]) for k in ("input_ids", "attention_mask")}]
    one = generated_batches(model, whole, prompt=4, seed=0)[0]["input_ids"]
    split = generated_batches(model, batches, prompt=4, seed=0)
    assert [len(b["input_ids"]) for b in split] == [3, 2]
    assert torch.equal(torch.cat([b["input_ids"] for b in split]), one)


def test_windows_round_trip_through_safetensors(tmp_path):
    batches = generated_batches(tiny_llama(), _windows(), prompt=4, seed=0)
    save_batches(batches, tmp_path / "calibration.safetensors")
    loaded = load_batches(tmp_path / "calibration.safetensors")
    assert len(loaded) == len(batches)
    for a, b in zip(batches, loaded, strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"task": "sst2"}, r"calib_generate 8: only a model that continues text.*task 'sst2' does not"),
        ({"task": "causal-lm", "sample": {"max_length": 8}}, r"shorter than a calibration window \(8 tokens.*1 to 7"),
    ],
)
def test_bad_settings_are_refused_where_the_parameters_are_validated(params, message):
    from fastprune.common.stages.config import PruneConfig

    with pytest.raises(ValueError, match=message):
        PruneConfig(model="m", train_data="t", fisher={"calib_generate": 8}, **params)
