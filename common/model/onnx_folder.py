"""A deployable ONNX folder made from a model folder written by fastprune (an exported pruned model, or a prepared
dense one): ``model.onnx`` (dynamic batch and sequence axes), ``config.json``, the tokenizer files and
``fastprune_onnx.json`` (how it was made), the layout ONNX Runtime and Optimum's ``ORTModelFor...`` load. An
embedding model's folder is also a sentence-transformers folder (``modules.json``, ``1_Pooling``,
``sentence_bert_config.json``), the layout ``SentenceTransformer(folder, backend="onnx")`` loads: its ``model.onnx``
at the root (or in ``onnx/``, where the export step writes it) gives ``last_hidden_state``, which that backend pools.

``quantize="int8"`` applies onnxruntime's dynamic quantization (int8 weights, activations quantized at run time)
to every MatMul with a constant weight, per channel by default (:data:`PER_CHANNEL`: on the SST-2 MiniLM per-channel
kept the accuracy per-tensor lost, at the same speed; ``benchmarks/onnx_bench.py``). The fp32 graph is checked
against torch (max difference 1e-4); the int8 one's difference is measured and recorded, not bounded.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..tasks.st_folder import write_st_files
from .arch import STRUCTURE_KEY
from .onnx_export import (
    check_onnx,
    embedding_pooling,
    export_onnx,
    model_input_names,
    model_output_names,
    ort_session,
)

ONNX_FILE = "model.onnx"
ONNX_META = "fastprune_onnx.json"
ONNX_SUBFOLDER = "onnx"
"""Where the export stage puts the ONNX folder inside the exported model folder (Optimum: ``subfolder="onnx"``)."""
QUANTIZATIONS = ("none", "int8")
PIPELINE_CHOICES = ("none", "fp32", "int8")
"""The pipeline's ``onnx`` parameter: no ONNX folder, an fp32 one, or an int8 one."""
PER_CHANNEL = True
_MARKERS = ("fastprune.json", "stage.json")


def check_quantize(quantize: str) -> str:
    if quantize not in QUANTIZATIONS:
        raise ConfigError(f"unknown quantization {quantize!r}; valid: {', '.join(QUANTIZATIONS)} (none: fp32)")
    return quantize


def check_model_folder(folder: str | Path) -> Path:
    """A folder written by fastprune (``fastprune prune``'s ``model/``, the export or prepare stage): config.json,
    model.safetensors and fastprune's metadata; a one-line :class:`ConfigError` otherwise."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"--pruned {str(folder)!r} is not a folder")
    if (folder / "model" / "config.json").is_file() and not (folder / "config.json").is_file():
        raise ConfigError(
            f"--pruned {str(folder)!r} is the output of fastprune prune: give its model folder, "
            f"{str(folder / 'model')!r}"
        )
    config = folder / "config.json"
    marked = any((folder / m).is_file() for m in _MARKERS) or (
        config.is_file() and STRUCTURE_KEY in json.loads(config.read_text() or "{}")
    )
    if not (config.is_file() and (folder / "model.safetensors").is_file() and marked):
        raise ConfigError(
            f"--pruned {str(folder)!r} is not a model folder written by fastprune (it needs config.json, "
            "model.safetensors and fastprune.json, as in the model/ folder of fastprune prune or the "
            "export step's output)"
        )
    return folder


def check_output(output: str | Path, overwrite: bool) -> Path:
    output = Path(output)
    if output.exists() and not overwrite:
        raise ConfigError(f"--output {str(output)!r} exists; choose a new folder or pass --overwrite to replace it")
    if output.exists() and not output.is_dir():
        raise ConfigError(f"--output {str(output)!r} exists and is not a folder")
    return output


def _empty_weight_nodes(path: Path) -> list[str]:
    """MatMul/Gemm nodes whose constant weight has no elements (a layer with every head or neuron pruned): dynamic
    quantization cannot compute a scale for them, so they stay fp32 (they compute nothing anyway)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    empty = {init.name for init in graph.initializer if int(np.prod(init.dims)) == 0}
    return [node.name for node in graph.node if node.op_type in ("MatMul", "Gemm") and set(node.input) & empty]


def quantize_int8(source: Path, destination: Path, per_channel: bool = PER_CHANNEL) -> None:
    """onnxruntime dynamic quantization: int8 weights of every constant-weight MatMul, activations quantized at run
    time (uint8)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.disable(logging.WARNING)  # onnxruntime logs a line per tensor on the root logger
    try:
        quantize_dynamic(
            str(source),
            str(destination),
            per_channel=per_channel,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=_empty_weight_nodes(source),
        )
    finally:
        logging.disable(logging.NOTSET)


def _config(model: nn.Module, meta: dict) -> dict:
    """The model's config as a stock one (no custom code: ``auto_map`` dropped) with how the ONNX file was made."""
    config: dict = getattr(model, "config").to_dict()  # noqa: B009 - a transformers model's config
    config.pop("auto_map", None)
    config["architectures"] = [type(model).__name__]
    config["fastprune_onnx"] = meta
    return config


def build_onnx_folder(
    model_dir: str | Path, out: str | Path, quantize: str = "none", per_channel: bool = PER_CHANNEL, opset: int = 17
) -> dict:
    """Write the ONNX folder of the model in ``model_dir`` into ``out`` (an empty folder: the caller builds it beside
    its destination and renames it into place). Returns the metadata also written to ``fastprune_onnx.json``."""
    from .export import load_pruned

    check_quantize(quantize)
    model_dir, out = Path(model_dir), Path(out)
    model, tokenizer = load_pruned(model_dir)
    model = model.float().eval()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fp32.", dir=out) as tmp:
        fp32 = export_onnx(model, Path(tmp) / ONNX_FILE, opset=opset)  # checked against torch within 1e-4
        if quantize == "int8":
            quantize_int8(fp32, out / ONNX_FILE, per_channel)
        else:
            fp32.replace(out / ONNX_FILE)
    meta = {
        "format": "onnx",
        "opset": opset,
        "inputs": list(model_input_names(model)),
        "outputs": list(model_output_names(model)),
        "dynamic_axes": ["batch", "sequence"],
        "quantization": "int8-dynamic" if quantize == "int8" else "none",
        "per_channel": per_channel if quantize == "int8" else None,
        "weight_type": "QInt8" if quantize == "int8" else "float32",
        "max_abs_diff_vs_torch": check_onnx(model, out / ONNX_FILE, atol=float("inf")),  # int8: measured, not bounded
        "architecture": type(model).__name__,
    }
    pooling = embedding_pooling(model)
    if pooling is not None:
        meta["pooling"] = {"mode": pooling.mode, "normalize": pooling.normalize}
    source = model_dir / "fastprune.json"
    if source.is_file():
        meta.update({k: v for k, v in json.loads(source.read_text()).items() if k in ("source", "task")})
    (out / "config.json").write_text(json.dumps(_config(model, meta), indent=2, default=str))
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    if pooling is not None:  # an embedding model: a sentence-transformers folder, as its ONNX backend loads it
        write_st_files(out, pooling.model_copy(update={"transformer_path": ""}), int(model.config.hidden_size))
    (out / ONNX_META).write_text(json.dumps(meta, indent=2))
    return meta


# ----- running it: a module that quacks like a transformers model, for the dev-set evaluation ---------------------
class OrtModel(nn.Module):
    """An ONNX folder's model on onnxruntime (CPU) behind a transformers-like call: ``model(**batch)`` returns an
    object with ``logits`` (or ``start_logits``/``end_logits``, or ``last_hidden_state``), so
    :func:`~fastprune.common.evaluate.evaluate` measures it like a torch model; ``config`` is the folder's
    config.json as attributes (an embedding model's pooling is read from it)."""

    def __init__(self, folder: str | Path, threads: int | None = None):
        super().__init__()
        self.config = SimpleNamespace(**json.loads((Path(folder) / "config.json").read_text()))
        self.session = ort_session(Path(folder) / ONNX_FILE, threads)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        **_: object,
    ) -> SimpleNamespace:
        given = {
            "input_ids": input_ids,
            "attention_mask": attention_mask if attention_mask is not None else torch.ones_like(input_ids),
            "token_type_ids": token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids),
        }
        feed = {name: given[name].cpu().numpy().astype(np.int64) for name in self.input_names}
        outputs = self.session.run(self.output_names, feed)
        return SimpleNamespace(**{n: torch.from_numpy(v) for n, v in zip(self.output_names, outputs, strict=True)})

    def __call__(self, *args, **kwargs) -> SimpleNamespace:  # no hooks, no autograd: straight to forward
        return self.forward(*args, **kwargs)


def onnx_candidate(model_dir: Path, device: torch.device, dtype: str) -> tuple[str, OrtModel] | None:
    """The ONNX folder the export step wrote inside ``model_dir`` (its ``onnx/``), named for a latency table
    (``pruned onnx int8``), when it can be compared like with like: onnxruntime runs it on the CPU, in its own
    precision, so only a float32 profile on the CPU includes it."""
    folder = Path(model_dir) / ONNX_SUBFOLDER
    if not (folder / ONNX_FILE).is_file() or device.type != "cpu" or dtype != "float32":
        return None
    meta = json.loads((folder / ONNX_META).read_text()) if (folder / ONNX_META).is_file() else {}
    kind = "int8" if meta.get("quantization") == "int8-dynamic" else "fp32"
    return f"pruned onnx {kind}", OrtModel(folder, torch.get_num_threads())
