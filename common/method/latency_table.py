"""Latency mode (paper, section 3): a per-block latency lookup table measured on the target
device, its piecewise-linear fit, the latency-constrained mask search, and an end-to-end profiler
that compares whole models like with like.

The table times ONE attention block with h = 1..H heads and ONE FFN block with n neurons (a coarse
grid of n), built as the model's family computes them (``ArchAdapter.timed_block``), at the target batch
size and sequence length. Each block kind is fitted by

    latency(0) = 0                                   (the block is dropped)
    latency(n) = flat_ms                             for 0 < n <= threshold
    latency(n) = flat_ms + slope * (n - threshold)   for n > threshold

which is monotone non-decreasing. A model's latency under the fit is the sum over its layers' blocks.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel
from torch import nn

from ..errors import ConfigError
from ..model.arch import NEURON_MULTIPLE, ModelDims, adapter_for, padded_size
from ..model.timing import device_name, dtype_name, now, time_interleaved, to_dtype

BlockKind = str  # "head" (attention block) or "neuron" (FFN block)


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
) -> LatencyTable:
    """Measure one attention block for every head count in ``head_grid`` (default 1..H) and one FFN
    block for every neuron count in ``neuron_grid`` (default ``default_neuron_grid(F)``) on an input
    of shape (batch_size, seq_len, hidden), and fit the piecewise-linear curves. Each block is
    warmed up, then all blocks are timed round-robin ``repeats`` times; the median is kept."""
    config = getattr(config, "config", config)
    adapter = adapter_for(config)
    dims = adapter.dims(config)
    device, torch_dtype = torch.device(device), to_dtype(dtype)
    if batch_size < 1 or seq_len < 1:
        raise ConfigError(f"batch_size and seq_len must be positive, got {batch_size}, {seq_len}")
    heads = _validate_grid(head_grid or range(1, dims.num_heads + 1), dims.num_heads, "head")
    neurons = _validate_grid(
        neuron_grid or default_neuron_grid(dims.intermediate_size), dims.intermediate_size, "neuron"
    )
    started = now()
    torch.manual_seed(seed)
    blocks: list[nn.Module] = [adapter.timed_block(config, "head", h) for h in heads]
    blocks += [adapter.timed_block(config, "neuron", n) for n in neurons]
    blocks = [b.to(device=device, dtype=torch_dtype).eval() for b in blocks]
    x = torch.randn(batch_size, seq_len, dims.hidden_size, device=device, dtype=torch_dtype)
    with torch.inference_mode():
        samples = time_interleaved([_bind(b, x) for b in blocks], device, repeats, warmup)
    medians = [statistics.median(s) for s in samples]
    return LatencyTable.from_measurements(
        device=device_name(device),
        dtype=torch_dtype,
        batch_size=batch_size,
        seq_len=seq_len,
        dims=dims,
        heads=list(zip(heads, medians[: len(heads)], strict=True)),
        neurons=list(zip(neurons, medians[len(heads) :], strict=True)),
        build_seconds=now() - started,
    )


def _bind(module: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    return lambda: module(x)


# ----- cost of masks and the latency-constrained search --------------------------------------------


# ----- end-to-end profiling ------------------------------------------------------------------------
