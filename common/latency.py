"""Latency mode (paper, section 3): a per-block latency lookup table measured on the target
device, its piecewise-linear fit, the latency-constrained mask search, and an end-to-end profiler
that compares whole models like with like.

The table times ONE attention block with h = 1..H heads and ONE FFN block with n neurons (a coarse
grid of n) at the target batch size and sequence length. Each block kind is fitted by

    latency(0) = 0                                   (the block is dropped)
    latency(n) = flat_ms                             for 0 < n <= threshold
    latency(n) = flat_ms + slope * (n - threshold)   for n > threshold

which is monotone non-decreasing. A model's latency under the fit is the sum over its layers' blocks.
"""

from __future__ import annotations

import copy
import re
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel
from torch import nn

from . import timing
from .arch import NEURON_MULTIPLE, ModelDims, adapter_for, padded_size
from .errors import ConfigError
from .masks import Masks
from .search import check_constraint

BlockKind = str  # "head" (attention block) or "neuron" (FFN block)
_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


# ----- small helpers ------------------------------------------------------------------------------
def _now() -> float:
    """The CPU clock used for every timing (one place, so tests can observe when timing happens)."""
    return time.perf_counter()


def to_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower().removeprefix("torch.")]
    except KeyError:
        raise ConfigError(f"unknown dtype {dtype!r}; use one of float32, float16, bfloat16") from None


def dtype_name(dtype: torch.dtype | str) -> str:
    return str(to_dtype(dtype)).removeprefix("torch.")


def _cpu_model_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "cpu"


def device_name(device: torch.device | str) -> str:
    """A human-readable name of the device that timings depend on: the GPU model, or the CPU model
    plus the number of torch threads (CPU latency scales with it)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{_cpu_model_name()} ({torch.get_num_threads()} threads)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_once_ms(fn: Callable[[], object], device: torch.device) -> float:
    """Wall time of one call in ms: CUDA events on a GPU, ``perf_counter`` on the CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        return float(start.elapsed_time(end))
    begin = _now()
    fn()
    return (_now() - begin) * 1000.0


def _time_interleaved(
    fns: Sequence[Callable[[], object]], device: torch.device, repeats: int, warmup: int
) -> list[list[float]]:
    """Warm every function up, then time them round-robin (f1, f2, ..., f1, f2, ...) so slow drift of
    the machine (clock, thermal, other load) spreads evenly over all of them. Returns the samples (ms)."""
    if repeats < 1 or warmup < 0:
        raise ConfigError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    for fn in fns:
        for _ in range(warmup):
            fn()
    _sync(device)
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            samples[i].append(_time_once_ms(fn, device))
    return samples


# ----- the piecewise-linear fit -------------------------------------------------------------------
class BlockFit(BaseModel):
    """latency(n) = 0 for n = 0, ``flat_ms`` for 0 < n <= ``threshold``, and
    ``flat_ms + slope_ms_per_unit * (n - threshold)`` above."""

    threshold: int
    flat_ms: float
    slope_ms_per_unit: float

    def predict(self, n: int | float) -> float:
        if n <= 0:
            return 0.0
        return self.flat_ms + self.slope_ms_per_unit * max(0.0, n - self.threshold)

    def predict_tensor(self, n: torch.Tensor) -> torch.Tensor:
        n = n.double()
        value = self.flat_ms + self.slope_ms_per_unit * (n - self.threshold).clamp(min=0)
        return torch.where(n > 0, value, torch.zeros_like(value))

    def marginal(self, count: int) -> float:
        """Cost of adding one unit to a block that has ``count`` units."""
        return self.predict(count + 1) - self.predict(count)


def _fit_at_threshold(n: torch.Tensor, y: torch.Tensor, threshold: int) -> tuple[float, float]:
    """Least squares flat part and slope for a fixed threshold, with slope >= 0 and flat >= 0."""
    x = (n - threshold).clamp(min=0)
    if float(x.abs().sum()) == 0.0:
        return float(y.mean()), 0.0
    design = torch.stack([torch.ones_like(x), x], dim=1)
    flat, slope = torch.linalg.lstsq(design, y[:, None]).solution.flatten().tolist()
    if slope < 0:
        flat, slope = float(y.mean()), 0.0
    if flat < 0:
        flat, slope = 0.0, max(0.0, float((x * y).sum() / (x * x).sum()))
    return flat, slope


def fit_piecewise(points: Sequence[tuple[int, float]]) -> BlockFit:
    """Fit ``BlockFit`` to measured (units, ms) points (n = 0 is ignored: it is 0 by definition).
    Every measured unit count, and 0 (a purely affine fit), is tried as the threshold; the one with
    the least squared error wins (the smaller threshold on ties)."""
    pts = [(int(n), float(ms)) for n, ms in points if n > 0]
    if not pts:
        raise ConfigError("cannot fit a latency curve without any measurement at n > 0")
    n = torch.tensor([p[0] for p in pts], dtype=torch.float64)
    y = torch.tensor([p[1] for p in pts], dtype=torch.float64)
    best: tuple[float, BlockFit] | None = None
    for threshold in sorted({0, *(p[0] for p in pts)}):
        flat, slope = _fit_at_threshold(n, y, threshold)
        fit = BlockFit(threshold=threshold, flat_ms=flat, slope_ms_per_unit=slope)
        sse = float(((fit.predict_tensor(n) - y) ** 2).sum())
        if best is None or sse < best[0]:
            best = (sse, fit)
    assert best is not None
    return best[1]


def _interpolate(points: Sequence[tuple[int, float]], n: float) -> float:
    """Linear interpolation of measured points with (0, 0) added; clamps to the largest point."""
    if n <= 0:
        return 0.0
    xs = [0.0] + [float(p[0]) for p in points]
    ys = [0.0] + [float(p[1]) for p in points]
    return float(np.interp(n, xs, ys))


def _check_kind(kind: BlockKind) -> BlockKind:
    if kind not in ("head", "neuron"):
        raise ConfigError(f"block kind must be 'head' or 'neuron', got {kind!r}")
    return kind


# ----- the lookup table ---------------------------------------------------------------------------
class LatencyTable(BaseModel):
    """Measured latency of one attention block (by number of heads) and one FFN block (by number of
    neurons) on one device at one batch size, sequence length and dtype, with the fitted curves."""

    device: str
    dtype: str
    batch_size: int
    seq_len: int
    dims: ModelDims
    heads: list[tuple[int, float]]
    neurons: list[tuple[int, float]]
    head_fit: BlockFit
    neuron_fit: BlockFit
    build_seconds: float = 0.0

    @classmethod
    def from_measurements(
        cls,
        *,
        device: str,
        dtype: torch.dtype | str,
        batch_size: int,
        seq_len: int,
        dims: ModelDims,
        heads: Sequence[tuple[int, float]],
        neurons: Sequence[tuple[int, float]],
        build_seconds: float = 0.0,
    ) -> LatencyTable:
        heads = sorted((int(n), float(ms)) for n, ms in heads)
        neurons = sorted((int(n), float(ms)) for n, ms in neurons)
        return cls(
            device=device,
            dtype=dtype_name(dtype),
            batch_size=batch_size,
            seq_len=seq_len,
            dims=dims,
            heads=heads,
            neurons=neurons,
            head_fit=fit_piecewise(heads),
            neuron_fit=fit_piecewise(neurons),
            build_seconds=build_seconds,
        )

    # ----- queries ----------------------------------------------------------------------------
    def fit(self, kind: BlockKind) -> BlockFit:
        return self.head_fit if _check_kind(kind) == "head" else self.neuron_fit

    def fitted_ms(self, kind: BlockKind, n: int) -> float:
        """Latency of one block with ``n`` units under the piecewise-linear fit."""
        return self.fit(kind).predict(n)

    def measured_ms(self, kind: BlockKind, n: float) -> float:
        """Latency of one block with ``n`` units, linearly interpolated between measured points."""
        return _interpolate(self.heads if _check_kind(kind) == "head" else self.neurons, n)

    def dense_ms(self) -> float:
        """The dense model's block latency under the fit (all layers, all heads and neurons)."""
        d = self.dims
        per_layer = self.head_fit.predict(d.num_heads) + self.neuron_fit.predict(d.intermediate_size)
        return d.num_layers * per_layer

    # ----- caching ----------------------------------------------------------------------------
    def key(self) -> str:
        """A file-name-safe string that identifies what the timings depend on."""
        d = self.dims
        parts = (
            self.device,
            self.dtype,
            f"b{self.batch_size}",
            f"s{self.seq_len}",
            f"H{d.num_heads}x{d.head_size}",
            f"d{d.hidden_size}",
            f"F{d.intermediate_size}",
        )
        return "_".join(re.sub(r"[^A-Za-z0-9.]+", "-", part).strip("-") for part in parts)

    def matches(
        self,
        config,
        device: torch.device | str,
        batch_size: int,
        seq_len: int,
        dtype: torch.dtype | str = torch.float32,
    ) -> bool:
        """Whether this table was measured for this model shape, device, batch, length and dtype."""
        config = getattr(config, "config", config)
        return (
            self.dims == adapter_for(config).dims(config)
            and self.device == device_name(device)
            and self.batch_size == batch_size
            and self.seq_len == seq_len
            and self.dtype == dtype_name(dtype)
        )

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.model_dump_json(indent=2), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        return cls.model_validate_json(Path(path).read_text(encoding="utf-8"))


# ----- the timed blocks ---------------------------------------------------------------------------
class AttentionBlock(nn.Module):
    """What one BERT-style attention block computes with ``heads`` heads: Q/K/V projections, scaled
    dot-product attention, output projection, residual and LayerNorm (no padding mask: the models
    skip it for unpadded batches too)."""

    def __init__(self, hidden: int, heads: int, head_size: int, eps: float = 1e-12):
        super().__init__()
        inner = heads * head_size
        self.heads, self.head_size = heads, head_size
        self.query = nn.Linear(hidden, inner)
        self.key = nn.Linear(hidden, inner)
        self.value = nn.Linear(hidden, inner)
        self.out = nn.Linear(inner, hidden)
        self.norm = nn.LayerNorm(hidden, eps=eps)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape
        return x.view(batch, seq, self.heads, self.head_size).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape
        ctx = F.scaled_dot_product_attention(
            self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        )
        ctx = ctx.transpose(1, 2).reshape(batch, seq, self.heads * self.head_size)
        return self.norm(self.out(ctx) + x)


class FFNBlock(nn.Module):
    """One FFN block with ``neurons`` intermediate units: linear, GELU, linear, residual, LayerNorm."""

    def __init__(self, hidden: int, neurons: int, eps: float = 1e-12):
        super().__init__()
        self.inp = nn.Linear(hidden, neurons)
        self.out = nn.Linear(neurons, hidden)
        self.norm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.out(F.gelu(self.inp(x))) + x)


def default_neuron_grid(intermediate_size: int, points: int = 20, multiple: int = NEURON_MULTIPLE) -> list[int]:
    """About ``points`` neuron counts: half log-spaced (dense at small n), half evenly spaced, always including
    ``intermediate_size``; each rounded up to a multiple of ``multiple`` (capped at ``intermediate_size``), the
    FFN sizes that export produces (see :data:`~fastprune.common.arch.NEURON_MULTIPLE`)."""
    half = max(2, points // 2)
    geo = np.geomspace(1, intermediate_size, half)
    lin = np.linspace(intermediate_size / half, intermediate_size, half)
    grid = {padded_size(round(v), intermediate_size, multiple) for v in np.concatenate([geo, lin])}
    return sorted(n for n in grid | {intermediate_size} if 1 <= n <= intermediate_size)


def _validate_grid(grid: Sequence[int], limit: int, what: str) -> list[int]:
    values = sorted({int(n) for n in grid})
    if not values or values[0] < 1 or values[-1] > limit:
        raise ConfigError(f"{what} grid must hold unit counts in 1..{limit}, got {list(grid)}")
    if limit not in values:
        values.append(limit)  # the dense block is always measured
    return values


def build_lut(
    config,
    device: torch.device | str,
    batch_size: int,
    seq_len: int,
    dtype: torch.dtype | str = torch.float32,
    head_grid: Sequence[int] | None = None,
    neuron_grid: Sequence[int] | None = None,
    repeats: int = 10,
    warmup: int = 3,
    seed: int = 0,
) -> LatencyTable:
    """Measure one attention block for every head count in ``head_grid`` (default 1..H) and one FFN
    block for every neuron count in ``neuron_grid`` (default ``default_neuron_grid(F)``) on an input
    of shape (batch_size, seq_len, hidden), and fit the piecewise-linear curves. Each block is
    warmed up, then all blocks are timed round-robin ``repeats`` times; the median is kept."""
    config = getattr(config, "config", config)
    dims = adapter_for(config).dims(config)
    device, torch_dtype = torch.device(device), to_dtype(dtype)
    if batch_size < 1 or seq_len < 1:
        raise ConfigError(f"batch_size and seq_len must be positive, got {batch_size}, {seq_len}")
    heads = _validate_grid(head_grid or range(1, dims.num_heads + 1), dims.num_heads, "head")
    neurons = _validate_grid(
        neuron_grid or default_neuron_grid(dims.intermediate_size), dims.intermediate_size, "neuron"
    )
    eps = float(getattr(config, "layer_norm_eps", 1e-12))
    started = _now()
    torch.manual_seed(seed)
    blocks: list[nn.Module] = [AttentionBlock(dims.hidden_size, h, dims.head_size, eps) for h in heads]
    blocks += [FFNBlock(dims.hidden_size, n, eps) for n in neurons]
    blocks = [b.to(device=device, dtype=torch_dtype).eval() for b in blocks]
    x = torch.randn(batch_size, seq_len, dims.hidden_size, device=device, dtype=torch_dtype)
    with torch.inference_mode():
        samples = _time_interleaved([_bind(b, x) for b in blocks], device, repeats, warmup)
    medians = [statistics.median(s) for s in samples]
    return LatencyTable.from_measurements(
        device=device_name(device),
        dtype=torch_dtype,
        batch_size=batch_size,
        seq_len=seq_len,
        dims=dims,
        heads=list(zip(heads, medians[: len(heads)], strict=True)),
        neurons=list(zip(neurons, medians[len(heads) :], strict=True)),
        build_seconds=_now() - started,
    )


def _bind(module: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    return lambda: module(x)


# ----- cost of masks and the latency-constrained search --------------------------------------------
def masks_latency(masks: Masks, table: LatencyTable) -> float:
    """Block latency (ms) of the masked model under the fitted curves: the sum over layers of the
    attention block's and the FFN block's fitted latency (a block with 0 units costs 0)."""
    heads = sum(table.head_fit.predict(h) for h in masks.heads_per_layer())
    neurons = sum(table.neuron_fit.predict(n) for n in masks.neurons_per_layer())
    return heads + neurons


def latency_ratio(masks: Masks, table: LatencyTable) -> float:
    """Fitted block latency of the masked model relative to the dense model's."""
    return masks_latency(masks, table) / table.dense_ms()


def _ranked(importance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Units of a [L, N] table in descending importance (ties by position): flat indices, their
    layer, and their rank inside their layer (1 = the layer's first unit in this order)."""
    flat = importance.detach().flatten().double().cpu()
    order = torch.argsort(flat, descending=True, stable=True)
    layer = order // importance.shape[1]
    rank = torch.empty_like(order)
    for lay in range(importance.shape[0]):
        where = (layer == lay).nonzero().flatten()
        rank[where] = torch.arange(1, where.numel() + 1)
    return order, layer, rank


def _prefix(values: torch.Tensor) -> torch.Tensor:
    return torch.cat([values.new_zeros(1), values.cumsum(0)])


class _NeuronFill:
    """Greedy neuron selection in global importance order under a per-layer piecewise cost."""

    def __init__(self, importance: torch.Tensor, fit: BlockFit, num_layers: int):
        order, layer, rank = _ranked(importance)
        self.order, self.layer_list = order, layer.tolist()
        self.importance = importance.detach().flatten().double().cpu()[order]
        self.imp_list = self.importance.tolist()
        self.fit, self.num_layers = fit, num_layers
        marginal = fit.predict_tensor(rank) - fit.predict_tensor(rank - 1)
        self.cost_prefix = _prefix(marginal)
        self.imp_prefix = _prefix(self.importance)
        self.layer = layer

    def _prefix_part(self, budget: float) -> tuple[int, float, list[int]]:
        """The longest affordable prefix of the ranking: its length, leftover budget, layer counts."""
        query = torch.tensor([budget], dtype=torch.float64)
        j = int(torch.searchsorted(self.cost_prefix, query, right=True)) - 1
        counts = torch.bincount(self.layer[:j], minlength=self.num_layers).tolist()
        return j, budget - float(self.cost_prefix[j]), counts

    def score(self, budget: float) -> float:
        """Summed importance of the neurons ``select`` would choose (-inf when the budget is negative)."""
        if budget < 0:
            return -float("inf")
        j, remaining, counts = self._prefix_part(budget)
        return float(self.imp_prefix[j]) + self._scan(j, counts, remaining)[1]

    def select(self, budget: float) -> list[int]:
        """Positions (in the ranked order) of the chosen neurons: the longest affordable prefix of the
        ranking at once, then a scan of the rest that adds every neuron whose marginal cost still fits
        (skipping those that do not)."""
        if budget < 0:
            return []
        j, remaining, counts = self._prefix_part(budget)
        return list(range(j)) + self._scan(j, counts, remaining)[0]

    def _scan(self, start: int, counts: list[int], remaining: float) -> tuple[list[int], float]:
        fit = self.fit
        first = fit.predict(1)  # a layer's first neuron pays the flat part
        slope, threshold = fit.slope_ms_per_unit, fit.threshold
        free = sum(max(0, threshold - c) for c in counts if c > 0)  # neurons still inside a flat part
        added: list[int] = []
        gained = 0.0
        for pos in range(start, len(self.layer_list)):
            if remaining < first and remaining < slope and free == 0:
                break
            lay = self.layer_list[pos]
            c = counts[lay]
            cost = first if c == 0 else (0.0 if c < threshold else slope)
            if cost > remaining:
                continue
            remaining -= cost
            counts[lay] = c + 1
            free += max(0, threshold - 1) if c == 0 else (-1 if c < threshold else 0)
            added.append(pos)
            gained += self.imp_list[pos]
        return added, gained

    def mask(self, positions: list[int], shape: torch.Size) -> torch.Tensor:
        mask = torch.zeros(shape[0] * shape[1], dtype=torch.float32)
        mask[self.order[positions]] = 1.0
        return mask.view(shape)


def search_latency(
    head_importance: torch.Tensor,
    neuron_importance: torch.Tensor,
    table: LatencyTable,
    constraint: float,
) -> Masks:
    """Masks with the largest summed importance whose block latency under the table's fitted curves
    stays within ``constraint`` times the dense model's.

    Heads and neurons are ranked globally by importance, as in the FLOPs search. Under the
    piecewise-linear fit a unit costs the block's slope, except that a layer's first unit pays the
    block's whole flat part (the latency up to the threshold), after which the layer's units up to
    the threshold are free; the flat part is saved only when the whole block is dropped. For every
    number k of kept heads (the globally top-k), the per-layer head counts give the attention latency;
    the rest of the budget goes to neurons, greedily in global importance order with that per-layer
    cost (neurons that no longer fit are skipped, cheaper later ones are still taken). The k with the
    largest summed head + neuron importance wins. Every cost is checked against the remaining budget,
    so the result never exceeds the budget under the fitted model.
    """
    constraint = check_constraint(constraint)
    d = table.dims
    _check_shape(head_importance, (d.num_layers, d.num_heads), "head_importance")
    _check_shape(neuron_importance, (d.num_layers, d.intermediate_size), "neuron_importance")
    budget = constraint * table.dense_ms() * (1.0 - 1e-9)  # margin for float summation order

    head_order, head_layer, head_rank = _ranked(head_importance)
    head_marginal = table.head_fit.predict_tensor(head_rank) - table.head_fit.predict_tensor(head_rank - 1)
    head_cost = _prefix(head_marginal)
    head_score = _prefix(head_importance.detach().flatten().double().cpu()[head_order])
    fill = _NeuronFill(neuron_importance, table.neuron_fit, d.num_layers)

    best_k, best_score = 0, -float("inf")
    for k in range(head_order.numel() + 1):
        left = budget - float(head_cost[k])
        if left < 0:
            break  # head cost only grows with k
        score = float(head_score[k]) + fill.score(left)
        if score > best_score:
            best_k, best_score = k, score
    positions = fill.select(budget - float(head_cost[best_k]))
    head_mask = torch.zeros(head_importance.numel(), dtype=torch.float32)
    head_mask[head_order[:best_k]] = 1.0
    return Masks(head_mask.view(d.num_layers, d.num_heads), fill.mask(positions, neuron_importance.shape))


def _check_shape(tensor: torch.Tensor, expected: tuple[int, int], name: str) -> None:
    if tuple(tensor.shape) != expected:
        raise ConfigError(
            f"{name} must have shape {list(expected)} to match the table, got {list(tensor.shape)}"
        )


# ----- end-to-end profiling ------------------------------------------------------------------------
class ProfileEntry(BaseModel):
    """Latency of one model at one (dtype, batch, seq) setting."""

    model: str
    dtype: str
    batch_size: int
    seq_len: int
    p50_ms: float
    p90_ms: float
    mean_ms: float
    throughput: float  # sequences per second at the p50 latency
    speedup: float  # the first model's latency / this one's: median over the interleaved repeats (common/timing.py)
    repeats: int
    warmup: int
    p10_ms: float | None = None
    speedup_p10: float | None = None
    speedup_p90: float | None = None
    noisy: bool = False  # the p10-p90 range of the latency or the speedup exceeds timing.NOISY_SPREAD of its median


class ProfileResult(BaseModel):
    device: str
    entries: list[ProfileEntry]

    def entry(self, model: str, dtype: str = "float32", batch_size: int | None = None,
              seq_len: int | None = None) -> ProfileEntry:
        for e in self.entries:
            if (e.model, e.dtype) == (model, dtype_name(dtype)) and batch_size in (None, e.batch_size) and (
                seq_len in (None, e.seq_len)
            ):
                return e
        raise KeyError(f"no profile for model={model!r} dtype={dtype} batch={batch_size} seq={seq_len}")

    def to_markdown(self) -> str:
        lines = [
            f"Device: {self.device}",
            "",
            "| model | dtype | batch | seq | p50 ms | p10-p90 ms | seq/s | speedup (p10-p90) | |",
            "|---|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for e in self.entries:
            lines.append(
                f"| {e.model} | {e.dtype} | {e.batch_size} | {e.seq_len} | {e.p50_ms:.2f} | "
                f"{e.p10_ms or e.p50_ms:.2f}-{e.p90_ms:.2f} | {e.throughput:.1f} | {e.speedup:.2f}x "
                f"({e.speedup_p10 or e.speedup:.2f}-{e.speedup_p90 or e.speedup:.2f}) | {'noisy' if e.noisy else ''} |"
            )
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


def random_inputs(
    batch_size: int, seq_len: int, vocab_size: int, device: torch.device | str = "cpu", seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random token ids (avoiding the first 1000 ids where the vocabulary allows) and a full mask."""
    generator = torch.Generator().manual_seed(seed)
    low = 1000 if vocab_size > 2000 else 1
    ids = torch.randint(low, vocab_size, (batch_size, seq_len), generator=generator)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}


def _prepare(model: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """The model on ``device`` in ``dtype`` (a copy only when it must be converted), in eval mode."""
    param = next(model.parameters(), None)
    if param is not None and (param.device != device or param.dtype != dtype):
        model = copy.deepcopy(model).to(device=device, dtype=dtype)
    return model.eval()


def _stats(model: str, dtype: str, batch: int, seq: int, samples: list[float], repeats: int,
           warmup: int) -> ProfileEntry:
    stats = timing.spread(samples)
    return ProfileEntry(
        model=model, dtype=dtype, batch_size=batch, seq_len=seq, p50_ms=stats.median, p10_ms=stats.p10,
        p90_ms=stats.p90, mean_ms=float(np.mean(samples)), noisy=stats.noisy,
        throughput=batch / (stats.median / 1000.0), speedup=1.0, repeats=repeats, warmup=warmup,
    )


def profile_models(
    models: Mapping[str, nn.Module],
    batch_sizes: Sequence[int] = (32,),
    seq_lens: Sequence[int] = (128,),
    device: torch.device | str = "cpu",
    dtypes: Sequence[str] = ("float32",),
    repeats: int = 20,
    warmup: int = 5,
    vocab_size: int = 30522,
    seed: int = 0,
) -> ProfileResult:
    """End-to-end latency of whole models on the SAME random inputs per (dtype, batch, seq) setting,
    in this process: every model is warmed up, then the models are timed interleaved (A, B, A, B, ...)
    under ``torch.inference_mode`` so drift of the machine hits all of them alike. Half precision
    (float16/bfloat16) is measured only on CUDA; it is skipped on other devices. ``speedup`` is the
    first model's p50 over each model's p50. Models are put in eval mode (converted copies are used
    for another device or dtype)."""
    if not models:
        raise ConfigError("profile_models needs at least one model")
    device = torch.device(device)
    wanted = [dtype_name(d) for d in dtypes]
    run_dtypes = [d for d in wanted if d == "float32" or device.type == "cuda"]
    entries: list[ProfileEntry] = []
    for dtype in run_dtypes:
        prepared = {name: _prepare(m, device, to_dtype(dtype)) for name, m in models.items()}
        for batch in batch_sizes:
            for seq in seq_lens:
                entries += _profile_setting(
                    prepared, device, dtype, batch, seq, repeats, warmup, vocab_size, seed
                )
    return ProfileResult(device=device_name(device), entries=entries)


def _profile_setting(
    models: Mapping[str, nn.Module],
    device: torch.device,
    dtype: str,
    batch: int,
    seq: int,
    repeats: int,
    warmup: int,
    vocab_size: int,
    seed: int,
) -> list[ProfileEntry]:
    inputs = random_inputs(batch, seq, vocab_size, device, seed)
    calls = [_bind_kwargs(m, inputs) for m in models.values()]
    with torch.inference_mode():
        samples = _time_interleaved(calls, device, repeats, warmup)
    entries = [
        _stats(name, dtype, batch, seq, s, repeats, warmup) for name, s in zip(models, samples, strict=True)
    ]
    for e, s in zip(entries, samples, strict=True):
        speedup = timing.paired_speedup(samples[0], s)
        e.speedup, e.speedup_p10, e.speedup_p90 = speedup.median, speedup.p10, speedup.p90
        e.noisy = e.noisy or speedup.noisy
    return entries


def _bind_kwargs(model: nn.Module, inputs: dict[str, torch.Tensor]) -> Callable[[], object]:
    return lambda: model(**inputs)

