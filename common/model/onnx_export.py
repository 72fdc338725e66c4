"""ONNX export of (pruned) sequence-classification, QA and sentence-embedding models, checked against torch, and an
onnxruntime CPU profiler.

A sentence-embedding model (task embedding: a bare encoder whose config carries its sentence-transformers pooling)
exports two outputs: ``last_hidden_state``, the token embeddings that sentence-transformers' ONNX backend (Optimum's
``ORTModelForFeatureExtraction``) reads and pools with the folder's ``1_Pooling`` config, and ``sentence_embedding``,
pooled (and L2-normalised where the folder lists ``Normalize``) in the graph, for onnxruntime alone.

The legacy TorchScript exporter (``torch.onnx.export(..., dynamo=False)``) with ``dynamic_axes``
exports transformers-5 BERT-style models with the default ``sdpa`` attention, including sliced models
with a different head count per layer and layers left with zero heads or zero neurons (the head count
is inferred from tensor shapes, so each layer's reshape is traced with its own constant head count).
The trace input is padded so the padding-mask path is traced rather than skipped.
"""

from __future__ import annotations

import inspect
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, FastpruneError
from ..tasks.st_folder import POOLING_KEY, Pooling, pool

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
QA_OUTPUTS = ("start_logits", "end_logits")
EMBEDDING_OUTPUTS = ("last_hidden_state", "sentence_embedding")
_PER_TOKEN = (*QA_OUTPUTS, "last_hidden_state")


class OnnxExportError(FastpruneError, RuntimeError):
    """The exported ONNX graph does not reproduce the torch model."""


class _TupleOutputs(nn.Module):
    """Positional inputs in a fixed order, plain tuple outputs (what the tracer needs)."""

    def __init__(self, model: nn.Module, input_names: tuple[str, ...], output_names: tuple[str, ...]):
        super().__init__()
        self.model = model
        self.input_names = input_names
        self.output_names = output_names

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = model_outputs(self.model, dict(zip(self.input_names, inputs, strict=True)))
        return tuple(out[name] for name in self.output_names)


def embedding_pooling(model: nn.Module) -> Pooling | None:
    """The sentence pooling an embedding model's config carries (None for any other model)."""
    found = getattr(getattr(model, "config", None), POOLING_KEY, None)
    return Pooling.model_validate(found) if found else None


def model_outputs(model: nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The exported outputs by name: the model's own, and for an embedding model also its pooled embedding."""
    out = model(**inputs, return_dict=True)
    pooling = embedding_pooling(model)
    if pooling is None:
        return {name: out[name] for name in model_output_names(model)}
    hidden = out["last_hidden_state"]
    mask = inputs.get("attention_mask", torch.ones_like(inputs["input_ids"]))
    return {"last_hidden_state": hidden, "sentence_embedding": pool(hidden, mask, pooling)}


def model_input_names(model: nn.Module) -> tuple[str, ...]:
    """The standard inputs the model's forward accepts (DistilBERT takes no token_type_ids)."""
    params = inspect.signature(model.forward).parameters
    names = tuple(name for name in INPUT_NAMES if name in params)
    if "input_ids" not in names:
        raise ConfigError(f"model {type(model).__name__} takes no input_ids; cannot export it to ONNX")
    return names


def model_output_names(model: nn.Module) -> tuple[str, ...]:
    """``logits`` for sequence classification, ``start_logits``/``end_logits`` for extractive QA,
    ``last_hidden_state``/``sentence_embedding`` for a sentence-embedding model."""
    name = type(model).__name__
    if name.endswith("ForQuestionAnswering"):
        return QA_OUTPUTS
    if name.endswith("ForSequenceClassification"):
        return ("logits",)
    if embedding_pooling(model) is not None:
        return EMBEDDING_OUTPUTS
    raise ConfigError(
        "ONNX export supports *ForSequenceClassification, *ForQuestionAnswering and sentence-embedding models "
        f"(task embedding), got {name}"
    )


def example_inputs(
    input_names: tuple[str, ...],
    batch_size: int,
    seq_len: int,
    vocab_size: int,
    seed: int = 0,
    pad: bool = True,
) -> dict[str, torch.Tensor]:
    """Random int64 inputs; with ``pad`` the first sequence ends in padding (at least one real token)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, max(2, vocab_size), (batch_size, seq_len), generator=generator)
    mask = torch.ones_like(ids)
    if pad and seq_len > 1:
        mask[0, max(1, seq_len - max(1, seq_len // 3)) :] = 0
    inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    return {name: inputs[name] for name in input_names}


def _dynamic_axes(input_names: tuple[str, ...], output_names: tuple[str, ...]) -> dict[str, dict[int, str]]:
    axes = {name: {0: "batch", 1: "sequence"} for name in input_names}
    for name in output_names:
        axes[name] = {0: "batch", 1: "sequence"} if name in _PER_TOKEN else {0: "batch"}
    return axes


def export_onnx(
    model: nn.Module,
    path: str | Path,
    opset: int = 17,
    max_diff_check: bool = True,
    atol: float = 1e-4,
) -> Path:
    """Export a sequence-classification or QA model to ONNX with dynamic batch and sequence axes.

    With ``max_diff_check`` the file is run with onnxruntime on CPU on a random padded input of
    another batch size and length than the trace, and ``OnnxExportError`` is raised if any output
    differs from torch by more than ``atol``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    input_names, output_names = model_input_names(model), model_output_names(model)
    vocab_size = int(getattr(model.config, "vocab_size", 1000))
    was_training = model.training
    wrapper = _TupleOutputs(model, input_names, output_names).eval()
    trace = example_inputs(input_names, 2, 8, vocab_size, seed=0)
    device = next(model.parameters()).device
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about data-dependent Python branches
            torch.onnx.export(
                wrapper,
                tuple(t.to(device) for t in trace.values()),
                str(path),
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_axes=_dynamic_axes(input_names, output_names),
                opset_version=opset,
                dynamo=False,
            )
    finally:
        model.train(was_training)
    if max_diff_check:
        check_onnx(model, path, atol=atol)
    return path


def ort_session(path: str | Path, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_onnx(model: nn.Module, path: str | Path, batch_size: int = 3, seq_len: int = 13, atol: float = 1e-4) -> float:
    """Largest absolute difference between onnxruntime (CPU) and torch outputs on a random padded
    input; raises ``OnnxExportError`` above ``atol``."""
    input_names, output_names = model_input_names(model), model_output_names(model)
    vocab_size = int(getattr(model.config, "vocab_size", 1000))
    inputs = example_inputs(input_names, batch_size, seq_len, vocab_size, seed=1)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            out = model_outputs(model, {k: v.to(device) for k, v in inputs.items()})
            expected = [out[name].float().cpu().numpy() for name in output_names]
    finally:
        model.train(was_training)
    got = ort_session(path).run(list(output_names), {k: v.numpy() for k, v in inputs.items()})
    diff = max(float(np.abs(g - e).max()) for g, e in zip(got, expected, strict=True))
    if not diff <= atol:
        raise OnnxExportError(
            f"ONNX outputs of {path} differ from torch by {diff:.3g} (> {atol:g}) on a "
            f"batch {batch_size} x seq {seq_len} input"
        )
    return diff


def profile_onnx(
    path: str | Path,
    batch_size: int,
    seq_len: int,
    repeats: int = 20,
    warmup: int = 5,
    threads: int | None = None,
    vocab_size: int = 1000,
) -> dict[str, float]:
    """Latency of an exported model with onnxruntime on CPU (``threads`` intra-op threads, default
    torch's thread count) on random unpadded inputs: ``p50_ms``, ``p90_ms``, ``mean_ms`` and
    ``throughput`` (sequences/s at p50)."""
    if repeats < 1 or warmup < 0:
        raise ConfigError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    session = ort_session(path, threads or torch.get_num_threads())
    names = tuple(i.name for i in session.get_inputs())
    inputs = example_inputs(names, batch_size, seq_len, vocab_size, pad=False)
    feed = {k: v.numpy() for k, v in inputs.items()}
    for _ in range(warmup):
        session.run(None, feed)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feed)
        samples.append((time.perf_counter() - start) * 1000.0)
    p50 = float(np.percentile(samples, 50))
    return {
        "p50_ms": p50,
        "p90_ms": float(np.percentile(samples, 90)),
        "mean_ms": float(np.mean(samples)),
        "throughput": batch_size / (p50 / 1000.0),
    }
