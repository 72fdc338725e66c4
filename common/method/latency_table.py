"""Latency mode (paper, section 3): a per-block latency lookup table measured on the target
device, its piecewise-linear fit, the latency-constrained mask search, and an end-to-end profiler
that compares whole models like with like.

The table times ONE attention block with h = 1..H query heads (under grouped-query attention, with every
number g of key/value groups that can hold them) and ONE FFN block with n neurons (a coarse grid of n), built
as the model's family computes them (``ArchAdapter.timed_block``), at the target batch size, either for a
prefill (``mode="prefill"``: sequences of ``seq_len`` tokens, what an encoder always does) or for one decoding
step (``mode="decode"``: one new token per sequence attending over a key/value cache of ``seq_len`` tokens of the
kept groups; decoder families only). Each block kind is fitted by

    latency(0) = 0                                   (the block is dropped)
    latency(n) = flat_ms                             for 0 < n <= threshold
    latency(n) = flat_ms + slope * (n - threshold)   for n > threshold

which is monotone non-decreasing; an attention block with h heads over g groups adds ``group_ms`` per group
(fitted from the blocks with the same h and different g; 0 under plain multi-head attention). A model's latency
under the fit is the sum over its layers' blocks.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, model_validator
from torch import nn

from ..errors import ConfigError
from ..model.arch import NEURON_MULTIPLE, ModelDims, adapter_for, padded_size
from ..model.blocks import kv_cache
from ..model.timing import device_name, dtype_name, now, time_interleaved, to_dtype

BlockKind = str  # "head" (attention block) or "neuron" (FFN block)
LatencyMode = Literal["prefill", "decode"]
LATENCY_MODES: tuple[str, ...] = ("prefill", "decode")


# ----- small helpers ------------------------------------------------------------------------------


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
        return max(0.0, float(y.mean())), 0.0
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


def fit_group_ms(points: Sequence[tuple[int, int, float]]) -> float:
    """The latency of one more key/value group at the same number of query heads: the least-squares slope of the
    attention blocks' latency against their group count, within each head count (>= 0; 0 when no head count was
    measured with two group counts)."""
    by_heads: dict[int, list[tuple[int, float]]] = {}
    for h, g, ms in points:
        by_heads.setdefault(h, []).append((g, ms))
    num = den = 0.0
    for pts in by_heads.values():
        g_mean = statistics.fmean(g for g, _ in pts)
        ms_mean = statistics.fmean(ms for _, ms in pts)
        num += sum((g - g_mean) * (ms - ms_mean) for g, ms in pts)
        den += sum((g - g_mean) ** 2 for g, _ in pts)
    slope = max(0.0, num / den) if den > 0 else 0.0
    # at most what every block measured per group: noisy timings must not leave a block a negative remainder
    return min([slope, *(ms / g for _, g, ms in points if g > 0)])


def _interpolate(points: Sequence[tuple[int, float]], n: float) -> float:
    """Linear interpolation of measured points with (0, 0) added; clamps to the largest point."""
    if n <= 0:
        return 0.0
    xs = [0.0] + [float(p[0]) for p in points]
    ys = [0.0] + [float(p[1]) for p in points]
    return float(np.interp(n, xs, ys))


def _fewest_groups(heads: int, dims: ModelDims) -> int:
    """The fewest key/value groups that hold ``heads`` query heads (``heads`` under plain attention)."""
    return -(-heads // dims.group_size)


def attention_shapes(heads: Sequence[int], dims: ModelDims) -> list[tuple[int, int]]:
    """The (query heads, key/value groups) an attention block is timed with: under grouped-query attention every
    group count from the fewest that hold the heads to one head a group (at most the dense groups); under plain
    attention one group a head."""
    if not dims.grouped:
        return [(h, h) for h in heads]
    return [(h, g) for h in heads for g in range(_fewest_groups(h, dims), min(h, dims.kv_heads) + 1)]


def check_mode(mode: str, config) -> LatencyMode:
    """``mode`` when the model's family can be timed in it: decoding steps (a key/value cache) need a decoder."""
    if mode not in LATENCY_MODES:
        raise ConfigError(f"latency mode must be one of {', '.join(LATENCY_MODES)}, got {mode!r}")
    adapter = adapter_for(config)
    if mode == "decode" and not adapter.causal:
        raise ConfigError(
            f"latency mode 'decode' times one-token decoding over a key/value cache, which a {adapter.family} "
            "encoder does not do: use latency mode 'prefill'"
        )
    return mode  # type: ignore[return-value]


def _check_kind(kind: BlockKind) -> BlockKind:
    if kind not in ("head", "neuron"):
        raise ConfigError(f"block kind must be 'head' or 'neuron', got {kind!r}")
    return kind


# ----- the lookup table ---------------------------------------------------------------------------
class LatencyTable(BaseModel):
    """Measured latency of one attention block (by number of query heads and key/value groups) and one FFN block (by
    number of neurons) on one device at one batch size, length and dtype, for a prefill or one decoding step, with
    the fitted curves. ``seq_len`` is the prefill's length, or the key/value cache length of a decoding step."""

    device: str
    dtype: str
    batch_size: int
    seq_len: int
    dims: ModelDims
    attention: list[tuple[int, int, float]]  # (query heads, key/value groups, ms)
    neurons: list[tuple[int, float]]
    head_fit: BlockFit
    neuron_fit: BlockFit
    group_ms: float = 0.0  # the fitted latency of one key/value group (0 under plain multi-head attention)
    mode: LatencyMode = "prefill"
    build_seconds: float = 0.0

    @model_validator(mode="before")
    @classmethod
    def _heads_only(cls, data: Any) -> Any:
        """A table saved before attention was timed per group count (encoders: one group a head) still loads."""
        if isinstance(data, dict) and "heads" in data and "attention" not in data:
            data = {**data, "attention": [(h, h, ms) for h, ms in data["heads"]]}
            del data["heads"]
        return data

    @classmethod
    def from_measurements(
        cls,
        *,
        device: str,
        dtype: torch.dtype | str,
        batch_size: int,
        seq_len: int,
        dims: ModelDims,
        neurons: Sequence[tuple[int, float]],
        heads: Sequence[tuple[int, float]] = (),
        attention: Sequence[tuple[int, int, float]] = (),
        mode: LatencyMode = "prefill",
        build_seconds: float = 0.0,
    ) -> LatencyTable:
        """``attention`` holds (heads, groups, ms) points; ``heads`` (heads, ms) points at the fewest groups that
        hold the heads (under plain attention, the only ones)."""
        points = {(int(h), int(g)): float(ms) for h, g, ms in attention}
        points.update({(int(h), _fewest_groups(int(h), dims)): float(ms) for h, ms in heads})
        triples = [(h, g, ms) for (h, g), ms in sorted(points.items())]
        neurons = sorted((int(n), float(ms)) for n, ms in neurons)
        group_ms = fit_group_ms(triples) if dims.grouped else 0.0
        return cls(
            device=device,
            dtype=dtype_name(dtype),
            batch_size=batch_size,
            seq_len=seq_len,
            dims=dims,
            attention=triples,
            neurons=neurons,
            head_fit=fit_piecewise([(h, ms - group_ms * g) for h, g, ms in triples]),
            neuron_fit=fit_piecewise(neurons),
            group_ms=group_ms,
            mode=mode,
            build_seconds=build_seconds,
        )

    # ----- queries ----------------------------------------------------------------------------
    @property
    def heads(self) -> list[tuple[int, float]]:
        """The attention blocks measured with the fewest groups that hold their heads: (heads, ms)."""
        return [(h, ms) for h, g, ms in self.attention if g == _fewest_groups(h, self.dims)]

    def fit(self, kind: BlockKind) -> BlockFit:
        return self.head_fit if _check_kind(kind) == "head" else self.neuron_fit

    def attention_ms(self, heads: int, groups: int | None = None) -> float:
        """Fitted latency of one attention block with ``heads`` query heads over ``groups`` key/value groups
        (default: the fewest that hold them); 0 without heads."""
        if heads <= 0:
            return 0.0
        groups = _fewest_groups(heads, self.dims) if groups is None else groups
        return self.head_fit.predict(heads) + self.group_ms * groups

    def fitted_ms(self, kind: BlockKind, n: int) -> float:
        """Latency of one block with ``n`` units under the fit (attention: over the fewest groups that hold them)."""
        return self.attention_ms(n) if _check_kind(kind) == "head" else self.neuron_fit.predict(n)

    def measured_ms(self, kind: BlockKind, n: float) -> float:
        """Latency of one block with ``n`` units, linearly interpolated between measured points (attention: over
        the fewest groups that hold them)."""
        return _interpolate(self.heads if _check_kind(kind) == "head" else self.neurons, n)

    def dense_ms(self) -> float:
        """The dense model's block latency under the fit (all layers, all heads, groups and neurons)."""
        d = self.dims
        per_layer = self.attention_ms(d.num_heads, d.kv_heads) + self.neuron_fit.predict(d.intermediate_size)
        return d.num_layers * per_layer

    # ----- caching ----------------------------------------------------------------------------
    def key(self) -> str:
        """A file-name-safe string that identifies what the timings depend on."""
        d = self.dims
        parts = (
            self.device,
            self.dtype,
            f"b{self.batch_size}",
            f"s{self.seq_len}" if self.mode == "prefill" else f"decode-kv{self.seq_len}",
            f"H{d.num_heads}x{d.head_size}",
            f"d{d.hidden_size}",
            f"F{d.intermediate_size}",
            *((f"G{d.kv_heads}",) if d.grouped else ()),
            *(("gated",) if d.mlp_inputs == 2 else ()),
        )
        return "_".join(re.sub(r"[^A-Za-z0-9.]+", "-", part).strip("-") for part in parts)

    def matches(
        self,
        config,
        device: torch.device | str,
        batch_size: int,
        seq_len: int,
        dtype: torch.dtype | str = torch.float32,
        mode: LatencyMode = "prefill",
    ) -> bool:
        """Whether this table was measured for this model shape, device, batch, length, dtype and mode."""
        config = getattr(config, "config", config)
        return (
            self.dims == adapter_for(config).dims(config)
            and self.device == device_name(device)
            and self.batch_size == batch_size
            and self.seq_len == seq_len
            and self.dtype == dtype_name(dtype)
            and self.mode == mode
        )

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.model_dump_json(indent=2), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        return cls.model_validate_json(Path(path).read_text(encoding="utf-8"))


# ----- the timed blocks: the family's (``ArchAdapter.timed_block``, :mod:`fastprune.common.model.blocks`) -------
def default_neuron_grid(intermediate_size: int, points: int = 20, multiple: int = NEURON_MULTIPLE) -> list[int]:
    """About ``points`` neuron counts: half log-spaced (dense at small n), half evenly spaced, always including
    ``intermediate_size``; each rounded up to a multiple of ``multiple`` (capped at ``intermediate_size``), the
    FFN sizes that export produces (see :data:`~fastprune.common.model.arch.NEURON_MULTIPLE`)."""
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
    mode: LatencyMode = "prefill",
) -> LatencyTable:
    """Measure one attention block for every head count in ``head_grid`` (default 1..H; under grouped-query
    attention with every group count that holds them, :func:`attention_shapes`) and one FFN block for every
    neuron count in ``neuron_grid`` (default ``default_neuron_grid(F)``), and fit the curves. A prefill
    (``mode="prefill"``) feeds (batch_size, seq_len, hidden) inputs; a decoding step (``mode="decode"``, decoders
    only) feeds (batch_size, 1, hidden) and, to attention, key/value caches of ``seq_len`` tokens of the block's
    groups. Each block is warmed up, then all blocks are timed round-robin ``repeats`` times; the median is kept."""
    config = getattr(config, "config", config)
    mode = check_mode(mode, config)
    adapter = adapter_for(config)
    dims = adapter.dims(config)
    device, torch_dtype = torch.device(device), to_dtype(dtype)
    if batch_size < 1 or seq_len < 1:
        raise ConfigError(f"batch_size and seq_len must be positive, got {batch_size}, {seq_len}")
    heads = _validate_grid(head_grid or range(1, dims.num_heads + 1), dims.num_heads, "head")
    neurons = _validate_grid(
        neuron_grid or default_neuron_grid(dims.intermediate_size), dims.intermediate_size, "neuron"
    )
    shapes = attention_shapes(heads, dims)
    started = now()
    torch.manual_seed(seed)
    attention = [adapter.timed_block(config, "head", h, g).to(device, torch_dtype).eval() for h, g in shapes]
    ffn = [adapter.timed_block(config, "neuron", n).to(device, torch_dtype).eval() for n in neurons]
    x = torch.randn(batch_size, 1 if mode == "decode" else seq_len, dims.hidden_size, device=device, dtype=torch_dtype)
    caches: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # by group count, shared by the blocks that have it
    for g in sorted({g for _, g in shapes}) if mode == "decode" else ():
        caches[g] = kv_cache(batch_size, g, seq_len, dims.head_size, device, torch_dtype)
    calls = [_bind(b, x, caches.get(g)) for (_, g), b in zip(shapes, attention, strict=True)]
    calls += [_bind(b, x) for b in ffn]
    with torch.inference_mode():
        samples = time_interleaved(calls, device, repeats, warmup)
    medians = [statistics.median(s) for s in samples]
    return LatencyTable.from_measurements(
        device=device_name(device),
        dtype=torch_dtype,
        batch_size=batch_size,
        seq_len=seq_len,
        dims=dims,
        attention=[(h, g, ms) for (h, g), ms in zip(shapes, medians[: len(shapes)], strict=True)],
        neurons=list(zip(neurons, medians[len(shapes) :], strict=True)),
        mode=mode,
        build_seconds=now() - started,
    )


def _bind(module: nn.Module, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None = None):
    if past is None:
        return lambda: module(x)
    return lambda: module(x, past)


# ----- cost of masks and the latency-constrained search --------------------------------------------


# ----- end-to-end profiling ------------------------------------------------------------------------
