"""Latency lookup table, its fit, the latency-constrained search, the profiler and ONNX export."""

from __future__ import annotations

import copy

import pytest
import torch
from fastprune.common.errors import ConfigError
from fastprune.common.method.latency_search import latency_ratio, masks_latency, search_latency
from fastprune.common.method.latency_table import BlockFit, LatencyTable, build_lut, default_neuron_grid, fit_piecewise
from fastprune.common.method.search import search_flops
from fastprune.common.model import timing
from fastprune.common.model.arch import ModelDims, adapter_for
from fastprune.common.model.cost import flops_ratio, head_macs, neuron_macs
from fastprune.common.model.masks import Masks
from fastprune.common.model.onnx_export import check_onnx, export_onnx, profile_onnx
from fastprune.common.model.timing import profile_models
from fastprune.common.stages.config import PruneConfig
from tiny import tiny_config, tiny_model
from torch import nn

DIMS = ModelDims(num_layers=4, num_heads=6, head_size=8, hidden_size=48, intermediate_size=96)


Fit = tuple[int, float, float]  # threshold, flat_ms, slope_ms_per_unit


def _table(head_fit: Fit, neuron_fit: Fit, dims: ModelDims = DIMS) -> LatencyTable:
    """A table whose measurements lie exactly on the given (threshold, flat, slope) curves."""

    def points(fit: Fit, grid: list[int]) -> list[tuple[int, float]]:
        curve = BlockFit(threshold=fit[0], flat_ms=fit[1], slope_ms_per_unit=fit[2])
        return [(n, curve.predict(n)) for n in grid]

    neuron_grid = default_neuron_grid(dims.intermediate_size, 16) + [neuron_fit[0]]
    return LatencyTable.from_measurements(
        device="test-device",
        dtype="float32",
        batch_size=4,
        seq_len=16,
        dims=dims,
        heads=points(head_fit, list(range(1, dims.num_heads + 1))),
        neurons=points(neuron_fit, sorted(set(neuron_grid))),
    )


def _slice(model: nn.Module, heads: list[list[int]], neurons: list[int]) -> nn.Module:
    model = copy.deepcopy(model)
    adapter = adapter_for(model)
    head_size = adapter.dims(model.config).head_size
    for layer, keep_h, n in zip(adapter.layer_modules(model), heads, neurons, strict=True):
        adapter.slice_layer(layer, torch.tensor(keep_h, dtype=torch.long), torch.arange(n), head_size)
    return model


# ----- the fit ---------------------------------------------------------------------------------
def test_fit_recovers_a_synthetic_piecewise_linear_curve():
    table = _table((2, 1.5, 0.25), (24, 3.0, 0.05))
    assert table.head_fit.threshold == 2
    assert table.head_fit.flat_ms == pytest.approx(1.5)
    assert table.head_fit.slope_ms_per_unit == pytest.approx(0.25)
    assert table.neuron_fit.threshold == 24
    assert table.neuron_fit.flat_ms == pytest.approx(3.0)
    assert table.neuron_fit.slope_ms_per_unit == pytest.approx(0.05)


def test_fit_of_noisy_or_decreasing_points_is_monotone_and_zero_at_zero():
    noisy = [(1, 5.0), (2, 4.0), (3, 6.5), (4, 3.0), (6, 7.0), (8, 6.0), (12, 9.5), (16, 8.0)]
    for points in (noisy, [(1, 3.0), (2, 2.0), (4, 1.0)]):
        fit = fit_piecewise(points)
        values = [fit.predict(n) for n in range(0, 20)]
        assert values[0] == 0.0
        assert all(b >= a for a, b in zip(values, values[1:], strict=False))
        assert fit.slope_ms_per_unit >= 0 and fit.flat_ms >= 0


def test_measured_lut_is_monotone_zero_at_zero_and_interpolates():
    config = tiny_config(hidden=32, heads=4, intermediate=64)
    table = build_lut(config, "cpu", batch_size=2, seq_len=8, neuron_grid=[1, 8, 32], repeats=2, warmup=1)
    assert [n for n, _ in table.heads] == [1, 2, 3, 4]
    assert [n for n, _ in table.neurons] == [1, 8, 32, 64]  # the dense size is always measured
    for kind, top in (("head", 4), ("neuron", 64)):
        values = [table.fitted_ms(kind, n) for n in range(top + 1)]
        assert values[0] == 0.0 and all(b >= a for a, b in zip(values, values[1:], strict=False))
        assert table.measured_ms(kind, 0) == 0.0
    (n0, ms0), (n1, ms1) = table.neurons[1], table.neurons[2]
    assert table.measured_ms("neuron", (n0 + n1) / 2) == pytest.approx((ms0 + ms1) / 2)
    assert table.matches(config, "cpu", 2, 8, torch.float32)
    assert not table.matches(config, "cpu", 4, 8, torch.float32)
    assert not table.matches(tiny_config(hidden=32, heads=4, intermediate=32), "cpu", 2, 8, "float32")


def test_table_save_load_round_trip_and_key(tmp_path):
    table = _table((0, 1.0, 0.5), (8, 2.0, 0.1))
    path = table.save(tmp_path / f"{table.key()}.json")
    loaded = LatencyTable.load(path)
    assert loaded == table and loaded.dims == DIMS
    assert loaded.key() == table.key()
    key = table.key()
    assert "float32" in key and "b4" in key and "s16" in key and "/" not in key and " " not in key
    other = table.model_copy(update={"batch_size": 8})
    assert other.key() != table.key()


# ----- the search ------------------------------------------------------------------------------
def test_masks_latency_sums_layers_and_dropped_blocks_cost_nothing():
    table = _table((2, 1.0, 0.5), (10, 2.0, 0.1))
    masks = Masks.ones(DIMS)
    assert masks_latency(masks, table) == pytest.approx(table.dense_ms())
    masks.head[0] = 0  # layer 0 loses its whole attention block
    masks.neuron[1, :90] = 0  # layer 1 keeps 6 neurons: inside the flat part
    expected = table.dense_ms() - table.head_fit.predict(6) - table.neuron_fit.predict(96) + 2.0
    assert masks_latency(masks, table) == pytest.approx(expected)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("fits", [((0, 0.5, 0.3), (0, 0.2, 0.02)), ((3, 2.0, 0.4), (40, 3.0, 0.05))])
def test_search_latency_respects_the_budget(seed, fits):
    table = _table(*fits)
    generator = torch.Generator().manual_seed(seed)
    head_imp = torch.rand(DIMS.num_layers, DIMS.num_heads, generator=generator) * 20
    neuron_imp = torch.rand(DIMS.num_layers, DIMS.intermediate_size, generator=generator)
    for constraint in (0.1, 0.3, 0.5, 0.7, 0.9):
        masks = search_latency(head_imp, neuron_imp, table, constraint)
        assert masks_latency(masks, table) <= constraint * table.dense_ms() + 1e-9
        assert latency_ratio(masks, table) > constraint - 0.2  # the budget is actually spent


def test_search_latency_keeps_the_most_important_units():
    table = _table((0, 0.01, 1.0), (0, 0.001, 0.1))  # nearly proportional: units cost about the same
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        head_imp = torch.rand(DIMS.num_layers, DIMS.num_heads, generator=generator) * 10
        neuron_imp = torch.rand(DIMS.num_layers, DIMS.intermediate_size, generator=generator)
        masks = search_latency(head_imp, neuron_imp, table, 0.5)
        assert masks.head.flatten()[head_imp.argmax()] == 1
        assert masks.neuron.flatten()[neuron_imp.argmax()] == 1
        kept, dropped = head_imp[masks.head == 1], head_imp[masks.head == 0]
        assert kept.mean() > dropped.mean()


def test_search_latency_equals_the_flops_search_when_latency_is_proportional_to_macs():
    seq = 16.0
    table = _table((0, 0.0, head_macs(seq, DIMS) / 1e6), (0, 0.0, neuron_macs(seq, DIMS) / 1e6))
    generator = torch.Generator().manual_seed(3)
    head_imp = torch.rand(DIMS.num_layers, DIMS.num_heads, generator=generator) * 30
    neuron_imp = torch.rand(DIMS.num_layers, DIMS.intermediate_size, generator=generator)

    def kept(m: Masks) -> float:
        return float((head_imp * m.head).sum() + (neuron_imp * m.neuron).sum())

    for constraint in (0.2, 0.5, 0.8):
        by_latency = search_latency(head_imp, neuron_imp, table, constraint)
        by_flops = search_flops(head_imp, neuron_imp, DIMS, seq, constraint)
        assert kept(by_latency) == pytest.approx(kept(by_flops))
        assert flops_ratio(by_latency, DIMS, seq) <= constraint + 1e-9


def test_search_latency_drops_whole_blocks_to_save_the_flat_part():
    # a big flat part per FFN block: keeping a few neurons in every layer is expensive
    table = _table((0, 0.1, 1.0), (0, 20.0, 0.01))
    head_imp = torch.full((DIMS.num_layers, DIMS.num_heads), 100.0)
    generator = torch.Generator().manual_seed(0)
    neuron_imp = torch.rand(DIMS.num_layers, DIMS.intermediate_size, generator=generator)
    masks = search_latency(head_imp, neuron_imp, table, 0.5)
    per_layer = masks.neurons_per_layer()
    assert 0 in per_layer and any(n > 0 for n in per_layer)
    assert masks_latency(masks, table) <= 0.5 * table.dense_ms()


def test_search_latency_rejects_bad_input():
    table = _table((0, 1.0, 0.5), (0, 1.0, 0.1))
    with pytest.raises(ConfigError):
        search_latency(torch.rand(4, 6), torch.rand(4, 96), table, 1.5)
    with pytest.raises(ConfigError):
        search_latency(torch.rand(3, 6), torch.rand(4, 96), table, 0.5)


# ----- the profiler ----------------------------------------------------------------------------
class _Recorder(nn.Module):
    """Logs every call (with the exact input tensors) into a shared event log."""

    def __init__(self, name: str, model: nn.Module, log: list):
        super().__init__()
        self.name, self.model, self.log = name, model, log

    def forward(self, **inputs):
        self.log.append(("call", self.name, inputs))
        return self.model(**inputs)


def test_profiler_feeds_identical_inputs_warms_up_and_interleaves(monkeypatch):
    log: list = []
    real_now = timing.now

    def ticking_now() -> float:
        log.append(("tick",))
        return real_now()

    monkeypatch.setattr(timing, "now", ticking_now)
    base = tiny_model()
    pruned = _slice(base, [[0], [], [1, 2]], [8, 64, 0])
    models = {"a": _Recorder("a", base, log), "b": _Recorder("b", pruned, log)}
    result = profile_models(models, batch_sizes=[2], seq_lens=[8, 12], repeats=3, warmup=2, vocab_size=100)

    for seq in (8, 12):
        calls = [e for e in log if e[0] == "call" and e[2]["input_ids"].shape[1] == seq]
        assert len(calls) == 2 * (2 + 3)
        first_ids = calls[0][2]["input_ids"]
        assert all(c[2]["input_ids"] is first_ids for c in calls)  # the very same tensors
        assert all(torch.equal(c[2]["attention_mask"], torch.ones(2, seq, dtype=torch.long)) for c in calls)
    # per setting: 2 warm-up calls per model with no clock reads, then timed calls a, b, a, b, ...
    # each between two clock reads
    events = [e[0] if e[0] == "tick" else e[1] for e in log]
    per_setting = ["a", "a", "b", "b"] + ["tick", "a", "tick", "tick", "b", "tick"] * 3
    assert events == per_setting * 2
    assert [(e.model, e.seq_len) for e in result.entries] == [("a", 8), ("b", 8), ("a", 12), ("b", 12)]
    assert result.entry("a", seq_len=8).speedup == 1.0
    b = result.entry("b", seq_len=12)
    assert b.speedup_p10 <= b.speedup <= b.speedup_p90  # the median of per-repeat ratios (a_i / b_i)
    assert b.p90_ms >= b.p50_ms >= b.p10_ms > 0 and b.throughput == pytest.approx(2 / (b.p50_ms / 1000))
    assert isinstance(b.noisy, bool)
    table = result.to_markdown()
    assert "| b | float32 | 2 | 12 |" in table and "speedup" in table
    assert result.to_dict()["entries"][0]["model"] == "a"


def test_profiler_skips_half_precision_on_cpu():
    result = profile_models(
        {"m": tiny_model()}, [1], [4], dtypes=("float32", "float16"), repeats=1, warmup=0, vocab_size=100
    )
    assert [e.dtype for e in result.entries] == ["float32"]


# ----- ONNX ------------------------------------------------------------------------------------
def test_onnx_matches_torch_for_a_tiny_bert_classifier(tmp_path):
    model = tiny_model()
    path = export_onnx(model, tmp_path / "bert.onnx")
    assert path.exists() and not model.training
    assert check_onnx(model, path, batch_size=5, seq_len=21) < 1e-4
    stats = profile_onnx(path, batch_size=2, seq_len=8, repeats=2, warmup=1, vocab_size=100)
    assert stats["p90_ms"] >= stats["p50_ms"] > 0


def test_onnx_matches_torch_for_a_sliced_model_with_a_zero_head_layer(tmp_path):
    model = _slice(tiny_model(), heads=[[], [1, 3], [0, 1, 2]], neurons=[16, 0, 64])
    assert adapter_for(model).structure(model)["num_heads"] == [0, 2, 3]
    path = export_onnx(model, tmp_path / "sliced.onnx")
    assert check_onnx(model, path, batch_size=1, seq_len=30) < 1e-4


@pytest.mark.parametrize("family,task", [("distilbert", "classification"), ("bert", "qa")])
def test_onnx_other_inputs_and_outputs(tmp_path, family, task):
    model = _slice(tiny_model(family, task=task), heads=[[0], [], [2, 3]], neurons=[4, 64, 0])
    path = export_onnx(model, tmp_path / "m.onnx")
    assert check_onnx(model, path, batch_size=4, seq_len=9) < 1e-4


def test_budget_resplit_under_a_latency_table_keeps_the_fitted_latency():
    """With a latency constraint the re-split spends the latency the lower layers left (under the table's fitted
    curves), not MACs: the tuned masks never cost more latency than the search's."""
    from fastprune.common.method.resplit import BudgetResplit
    from fastprune.common.method.tuning import tune_masks

    model = tiny_model("bert")
    dims = adapter_for(model).dims(model.config)
    table = _table((3, 2.0, 0.4), (40, 3.0, 0.05), dims)  # flat parts: latency is far from proportional to MACs
    generator = torch.Generator().manual_seed(0)
    importance = [torch.rand(dims.num_layers, n, generator=generator) for n in (dims.num_heads, dims.intermediate_size)]
    masks = search_latency(*importance, table, 0.6)
    batches = [
        {
            "input_ids": torch.randint(5, 200, (4, 10), generator=generator),
            "attention_mask": torch.ones(4, 10, dtype=torch.long),
            "labels": torch.randint(0, 2, (4,), generator=generator),
        }
        for _ in range(2)
    ]
    resplit = BudgetResplit(model, masks, seq_len=10.0, table=table)
    tuned, _ = tune_masks(model, masks, None, batches, progress=False, mode="refit", resplit=resplit)
    assert [entry["layer"] for entry in resplit.log] == [1, 2]
    assert masks_latency(tuned, table) <= masks_latency(masks, table) + 1e-9
    assert masks_latency(tuned, table) > 0.5 * table.dense_ms()  # the budget is spent, not dropped


def test_a_half_precision_latency_table_needs_a_gpu():
    with pytest.raises(ValueError, match="serving_dtype float16 is measured on CUDA devices only, not on cpu"):
        PruneConfig(
            model="m",
            task="sst2",
            train_data="t",
            constraint=0.5,
            constraint_metric="latency",
            serving_dtype="float16",
            device="cpu",
        )
    assert PruneConfig(model="m", task="sst2", train_data="t", constraint=0.5, serving_dtype="float16", device="cpu")


def test_spread_speedups_are_paired_and_noise_is_flagged():
    from fastprune.common.model import spread as timing

    steady = timing.spread([10.0, 10.1, 9.9, 10.0, 10.05])
    assert steady.median == 10.0 and not steady.noisy
    busy = timing.spread([10.0, 30.0, 11.0, 10.5, 25.0])
    assert busy.noisy and busy.p10 < busy.median < busy.p90 and "noisy" in busy.text()
    # the machine slowed down 3x half-way: each repeat's ratio still says 2x, and the speedup is not noisy
    dense, pruned = [10, 10, 30, 30, 30], [5, 5, 15, 15, 15]
    speedup = timing.paired_speedup(dense, pruned)
    assert speedup.median == 2.0 and not speedup.noisy
    order = []
    samples = timing.interleave([lambda: order.append("a"), lambda: order.append("b")], repeats=3, warmup=1)
    assert order == ["a", "b"] + ["a", "b"] * 3 and [len(s) for s in samples] == [3, 3]
    with pytest.raises(ConfigError, match="repeats must be >= 1"):
        timing.interleave([lambda: None], repeats=0, warmup=0)
