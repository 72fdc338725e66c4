"""Timing on a device (helpers shared by the latency table) and end-to-end profiling of models."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel
from torch import nn

from ..errors import ConfigError
from . import spread

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


def now() -> float:
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
    begin = now()
    fn()
    return (now() - begin) * 1000.0


def time_interleaved(
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


MODES = ("forward", "prefill", "decode")
"""What a profile times: ``forward``, one call on the whole batch (an encoder's use, and every position's logits of
a causal LM); for a causal LM, ``prefill`` (the prompt, a new key/value cache, the last position's logits, as
generation runs it) and ``decode`` (one token per sequence over a key/value cache of ``seq_len`` tokens)."""
CAUSAL_LM_MODES = ("prefill", "decode")


def default_modes(model: nn.Module) -> tuple[str, ...]:
    """``prefill`` and ``decode`` for a model that generates (a causal LM), else ``forward``."""
    can_generate = getattr(model, "can_generate", None)
    return CAUSAL_LM_MODES if callable(can_generate) and can_generate() else ("forward",)


class ProfileEntry(BaseModel):
    """Latency of one model at one (mode, dtype, batch, seq) setting."""

    model: str
    mode: str = "forward"
    dtype: str
    batch_size: int
    seq_len: int
    p50_ms: float
    p90_ms: float
    mean_ms: float
    throughput: float  # sequences per second at the p50 latency
    speedup: float  # the first model's latency / this one's: median over the interleaved repeats (model/spread.py)
    repeats: int
    warmup: int
    p10_ms: float | None = None
    speedup_p10: float | None = None
    speedup_p90: float | None = None
    noisy: bool = False  # the p10-p90 range of the latency or the speedup exceeds spread.NOISY_SPREAD of its median


class ProfileResult(BaseModel):
    device: str
    entries: list[ProfileEntry]

    def entry(
        self,
        model: str,
        dtype: str = "float32",
        batch_size: int | None = None,
        seq_len: int | None = None,
        mode: str = "forward",
    ) -> ProfileEntry:
        for e in self.entries:
            if (
                (e.model, e.dtype, e.mode) == (model, dtype_name(dtype), mode)
                and batch_size in (None, e.batch_size)
                and (seq_len in (None, e.seq_len))
            ):
                return e
        raise KeyError(f"no {mode} profile for model={model!r} dtype={dtype} batch={batch_size} seq={seq_len}")

    def to_markdown(self) -> str:
        modes = any(e.mode != "forward" for e in self.entries)  # a mode column only where there is a choice
        lines = [
            f"Device: {self.device}"
            + ("; decode = one token per sequence over a key/value cache of `seq` tokens" if modes else ""),
            "",
            "| model |"
            + (" mode |" * modes)
            + " dtype | batch | seq | p50 ms | p10-p90 ms | seq/s | speedup (p10-p90) | |",
            "|---|" + ("---|" * modes) + "---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for e in self.entries:
            lines.append(
                f"| {e.model} |"
                + (f" {e.mode} |" * modes)
                + f" {e.dtype} | {e.batch_size} | {e.seq_len} | {e.p50_ms:.2f} | "
                f"{e.p10_ms or e.p50_ms:.2f}-{e.p90_ms:.2f} | {e.throughput:.1f} | {e.speedup:.2f}x "
                f"({e.speedup_p10 or e.speedup:.2f}-{e.speedup_p90 or e.speedup:.2f}) | {'noisy' if e.noisy else ''} |"
            )
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    def comparison(self, before: str, after: str) -> dict[str, float | None]:
        """``after`` against ``before``: their p50 latencies and the speedup (with its p10-p90) in the first mode
        measured under plain keys (``speedup``, ...) and, where a mode other than ``forward`` was measured, in every
        mode under keys that name it (``prefill_speedup``, ``decode_latency_after_ms``, ...)."""
        modes = list(dict.fromkeys(e.mode for e in self.entries))
        figures: dict[str, float | None] = {}
        for mode in modes:
            first, second = (next(e for e in self.entries if (e.model, e.mode) == (m, mode)) for m in (before, after))
            keys = {
                "latency_before_ms": first.p50_ms,
                "latency_after_ms": second.p50_ms,
                "speedup": second.speedup,
                "speedup_p10": second.speedup_p10,
                "speedup_p90": second.speedup_p90,
            }
            if mode == modes[0]:
                figures |= keys
            if modes != ["forward"]:
                figures |= {f"{mode}_{k}": v for k, v in keys.items()}
        return figures


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


def _stats(
    model: str, mode: str, dtype: str, batch: int, seq: int, samples: list[float], repeats: int, warmup: int
) -> ProfileEntry:
    stats = spread.spread(samples)
    return ProfileEntry(
        model=model,
        mode=mode,
        dtype=dtype,
        batch_size=batch,
        seq_len=seq,
        p50_ms=stats.median,
        p10_ms=stats.p10,
        p90_ms=stats.p90,
        mean_ms=float(np.mean(samples)),
        noisy=stats.noisy,
        throughput=batch / (stats.median / 1000.0),
        speedup=1.0,
        repeats=repeats,
        warmup=warmup,
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
    modes: Sequence[str] = ("forward",),
) -> ProfileResult:
    """End-to-end latency of whole models on the SAME random inputs per (mode, dtype, batch, seq) setting,
    in this process: every model is warmed up, then the models are timed interleaved (A, B, A, B, ...)
    under ``torch.inference_mode`` so drift of the machine hits all of them alike. Half precision
    (float16/bfloat16) is measured only on CUDA; it is skipped on other devices. ``speedup`` is the
    first model's p50 over each model's p50. Models are put in eval mode (converted copies are used
    for another device or dtype). ``modes``: see :data:`MODES` (``prefill`` and ``decode`` need causal LMs)."""
    if not models:
        raise ConfigError("profile_models needs at least one model")
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise ConfigError(f"profile modes {list(modes)}: each must be one of {', '.join(MODES)}")
    cannot = [name for name, m in models.items() if default_modes(m) != CAUSAL_LM_MODES]
    if cannot and set(modes) & set(CAUSAL_LM_MODES):
        raise ConfigError(
            f"profile modes prefill and decode time a causal LM; {', '.join(cannot)} does not generate: use forward"
        )
    device = torch.device(device)
    wanted = [dtype_name(d) for d in dtypes]
    run_dtypes = [d for d in wanted if d == "float32" or device.type == "cuda"]
    entries: list[ProfileEntry] = []
    for dtype in run_dtypes:
        prepared = {name: _prepare(m, device, to_dtype(dtype)) for name, m in models.items()}
        for batch in batch_sizes:
            for seq in seq_lens:
                inputs = random_inputs(batch, seq, vocab_size, device, seed)
                for mode in modes:
                    entries += _profile_setting(prepared, device, mode, dtype, inputs, repeats, warmup)
    return ProfileResult(device=device_name(device), entries=entries)


def _profile_setting(
    models: Mapping[str, nn.Module],
    device: torch.device,
    mode: str,
    dtype: str,
    inputs: dict[str, torch.Tensor],
    repeats: int,
    warmup: int,
) -> list[ProfileEntry]:
    batch, seq = inputs["input_ids"].shape
    with torch.inference_mode():
        calls = [model_call(m, inputs, mode) for m in models.values()]
        samples = time_interleaved(calls, device, repeats, warmup)
    entries = [
        _stats(name, mode, dtype, batch, seq, s, repeats, warmup) for name, s in zip(models, samples, strict=True)
    ]
    for e, s in zip(entries, samples, strict=True):
        speedup = spread.paired_speedup(samples[0], s)
        e.speedup, e.speedup_p10, e.speedup_p90 = speedup.median, speedup.p10, speedup.p90
        e.noisy = e.noisy or speedup.noisy
    return entries


def model_call(model: nn.Module, inputs: dict[str, torch.Tensor], mode: str = "forward") -> Callable[[], object]:
    """One timed call of ``model`` in ``mode`` (:data:`MODES`). For ``decode`` the prompt's key/value cache is built
    here, once; each call appends one token per sequence and crops it off again, so every call sees the same cache."""
    if mode == "forward":
        return lambda: model(**inputs)
    if mode == "prefill":
        return lambda: model(**inputs, logits_to_keep=1)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    cache = model(**inputs, use_cache=True).cache
    if cache is None:
        raise ConfigError(f"{type(model).__name__} keeps no key/value cache: it cannot be profiled in decode mode")
    token, longer = ids[:, -1:], torch.cat([mask, mask[:, -1:]], dim=1)

    def step() -> object:
        out = model(input_ids=token, attention_mask=longer, cache=cache, logits_to_keep=1)
        cache.crop(-token.shape[1])
        return out

    return step
