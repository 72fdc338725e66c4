"""Latency that tells the truth on a shared machine: callables timed interleaved (a, b, c, a, b, c, ...) over
repeats, each summarised by its median and spread (p10-p90 over the repeats), speedups taken per repeat from
back-to-back calls (so slow drift of the machine's load cancels) and a ``noisy`` flag when the spread is large
relative to the median.

One measurement on a busy machine once reported a pruned model 1.18x faster where interleaved repeats gave 1.7x:
a figure without its spread cannot be trusted, so every figure here carries one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from pydantic import BaseModel

from ..errors import ConfigError

NOISY_SPREAD = 0.2
"""A measurement is noisy when its p10-p90 range exceeds this fraction of its median."""


class Spread(BaseModel):
    """The median of repeated samples and their p10-p90 range."""

    median: float
    p10: float
    p90: float
    repeats: int

    @property
    def relative(self) -> float:
        """(p90 - p10) / median: 0 for a steady measurement."""
        return (self.p90 - self.p10) / self.median if self.median else float("inf")

    @property
    def noisy(self) -> bool:
        return self.relative > NOISY_SPREAD

    def text(self, digits: int = 2, unit: str = "") -> str:
        """``12.30 ms (p10-p90 11.90-13.10)``, with ``, noisy`` when it is."""
        flag = ", noisy" if self.noisy else ""
        return f"{self.median:.{digits}f}{unit} (p10-p90 {self.p10:.{digits}f}-{self.p90:.{digits}f}{unit}{flag})"


def spread(samples: Sequence[float]) -> Spread:
    if not len(samples):
        raise ConfigError("no samples to summarise: repeats must be >= 1")
    values = np.asarray(samples, dtype=float)
    return Spread(
        median=float(np.median(values)),
        p10=float(np.percentile(values, 10)),
        p90=float(np.percentile(values, 90)),
        repeats=len(values),
    )


def paired_speedup(base: Sequence[float], other: Sequence[float]) -> Spread:
    """The speedup of ``other`` over ``base`` from samples taken in the same rounds: base_i / other_i per round."""
    if len(base) != len(other):
        raise ConfigError(f"paired samples differ in number: {len(base)} and {len(other)}")
    return spread([b / o for b, o in zip(base, other, strict=True)])


def _wall_ms(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000.0


def interleave(
    fns: Sequence[Callable[[], object]],
    repeats: int,
    warmup: int,
    time_once: Callable[[Callable[[], object]], float] = _wall_ms,
) -> list[list[float]]:
    """Warm every callable up, then time them round-robin ``repeats`` times; the samples (ms) per callable."""
    if repeats < 1 or warmup < 0:
        raise ConfigError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    for fn in fns:
        for _ in range(warmup):
            fn()
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            samples[i].append(time_once(fn))
    return samples


class Timed(BaseModel):
    """One callable's latency and, against the first callable of its round, its speedup."""

    name: str
    latency_ms: Spread
    speedup: Spread

    @property
    def noisy(self) -> bool:
        return self.latency_ms.noisy or self.speedup.noisy


def time_interleaved(fns: Mapping[str, Callable[[], object]], repeats: int = 20, warmup: int = 3) -> list[Timed]:
    """Every callable timed interleaved; speedups are against the first one."""
    names = list(fns)
    samples = interleave([fns[n] for n in names], repeats, warmup)
    return [
        Timed(name=n, latency_ms=spread(s), speedup=paired_speedup(samples[0], s))
        for n, s in zip(names, samples, strict=True)
    ]
