"""Checkpoints fastprune will read: safetensors only, checked before anything is allocated.

- :func:`read_header` parses a safetensors file's header (names, dtypes, shapes) without reading the tensors, and
  refuses an empty, truncated or corrupt file with one line naming it.
- :func:`check_weights_format` refuses a folder whose only weights are pickle files (``pytorch_model.bin``,
  ``*.pt``, ``*.pth``) unless the user allows pickle explicitly, and says how to convert them.
- :func:`check_pruned_config` validates a pruned model's ``config.json`` (its architecture against an allow-list,
  its per-layer structure against the weights' shapes) before the model is built.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import FastpruneError, IntegrityError, UnsupportedArchitectureError
from .arch import STRUCTURE_KEY, adapter_for
from .modeling_fastprune import BIAS_HEADS_KEY

_DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U64": 8,
    "U32": 4,
    "U16": 2,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit
PICKLE_PATTERNS = ("pytorch_model*.bin", "*.pt", "*.pth", "*.ckpt")
CONVERT_HINT = (
    'convert it to safetensors once, where you trust the file: python -c "from transformers import '
    "AutoModelForSequenceClassification as M; M.from_pretrained('OLD').save_pretrained('NEW')\" (transformers "
    "5 writes safetensors; with transformers 4 add safe_serialization=True; AutoModelForQuestionAnswering for a QA "
    "model; copy the tokenizer files too)"
)


class PickleCheckpointError(FastpruneError, ValueError):
    """A model's weights are only available as a pickle file, which can run arbitrary code when loaded."""


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]


def _corrupt(path: Path, why: str) -> IntegrityError:
    return IntegrityError(
        f"{path} is not a valid safetensors file: {why}; expected a complete file written by "
        "safetensors (save_pretrained): copy or export it again"
    )


def read_header(path: str | Path) -> dict[str, TensorInfo]:
    """The tensors of a safetensors file (name -> dtype and shape), from its header alone; the header is checked
    against the file's size, so an empty, truncated or corrupt file is refused here, naming it."""
    path = Path(path)
    size = path.stat().st_size
    if size < 8:
        raise _corrupt(path, f"it has {size} bytes, fewer than the 8 of a header length (empty or truncated)")
    with path.open("rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        if length > min(size - 8, _MAX_HEADER):
            raise _corrupt(path, f"its header claims {length} bytes but the file has {size} (truncated or corrupt)")
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _corrupt(path, "its header is not JSON (corrupt)") from None
    if not isinstance(header, dict):
        raise _corrupt(path, "its header is not a JSON object (corrupt)")
    tensors: dict[str, TensorInfo] = {}
    end_of_data = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        tensors[name] = info = _entry(path, name, entry)
        begin, end = entry["data_offsets"]
        if end - begin != math.prod(info.shape) * _DTYPE_BYTES[info.dtype]:
            raise _corrupt(path, f"tensor {name!r} has {end - begin} bytes for shape {list(info.shape)} {info.dtype}")
        end_of_data = max(end_of_data, end)
    if end_of_data != size - 8 - length:
        raise _corrupt(
            path,
            f"its tensors need {end_of_data} bytes of data but the file holds {size - 8 - length} "
            "(truncated or corrupt)",
        )
    return tensors


def _entry(path: Path, name: str, entry: Any) -> TensorInfo:
    ok = (
        isinstance(entry, dict)
        and entry.get("dtype") in _DTYPE_BYTES
        and isinstance(entry.get("shape"), list)
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in entry["shape"])
        and isinstance(entry.get("data_offsets"), list)
        and len(entry["data_offsets"]) == 2
        and all(isinstance(o, int) and not isinstance(o, bool) for o in entry["data_offsets"])
        and 0 <= entry["data_offsets"][0] <= entry["data_offsets"][1]
    )
    if not ok or not isinstance(entry, dict):
        raise _corrupt(path, f"the header entry of tensor {name!r} is malformed (corrupt)")
    return TensorInfo(entry["dtype"], tuple(entry["shape"]))


def check_weights_format(folder: str | Path, allow_pickle: bool = False) -> None:
    """Refuse a local model folder whose weights are pickle files only (no ``*.safetensors``), unless
    ``allow_pickle``; a folder with no weights at all is left to the loader's own error."""
    folder = Path(folder)
    if allow_pickle or not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for pattern in PICKLE_PATTERNS for p in folder.glob(pattern))
    if pickles:
        raise PickleCheckpointError(
            f"{folder} holds pickle weights only ({', '.join(pickles)}), which can run code when loaded: fastprune "
            f"reads safetensors only. Either {CONVERT_HINT}, or pass --allow-pickle (allow_pickle=True) if you "
            "trust the file"
        )


# ----- pruned configs ---------------------------------------------------------------------------------------
def model_class(config, where: str):
    """The transformers class ``config.architectures`` names, if it is a sequence classifier, a question-answering
    model or the bare encoder of a supported family (nothing else is ever instantiated: no ``pipeline``,
    ``Trainer``...)."""
    from transformers import AutoModel, AutoModelForQuestionAnswering, AutoModelForSequenceClassification

    try:
        adapter_for(config)
    except UnsupportedArchitectureError as e:
        raise IntegrityError(f"{where}/config.json: {e}") from None
    allowed: dict[str, Any] = {}
    for auto in (AutoModelForSequenceClassification, AutoModelForQuestionAnswering, AutoModel):
        try:
            cls: Any = auto._model_mapping[type(config)]
        except KeyError:
            continue
        allowed[cls.__name__] = cls
    architectures = getattr(config, "architectures", None) or []
    name = architectures[0] if architectures else None
    if not isinstance(name, str) or name not in allowed or len(architectures) != 1:
        raise IntegrityError(
            f"{where}/config.json names architectures {architectures!r}: expected exactly one of "
            f"{sorted(allowed)} (model_type {config.model_type!r})"
        )
    return allowed[name]


def _counts(structure: dict, key: str, layers: int, limit: int, where: str) -> list[int]:
    values = structure.get(key)
    if (
        not isinstance(values, list)
        or len(values) != layers
        or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= limit for v in values)
    ):
        raise IntegrityError(
            f"{where}/config.json: {STRUCTURE_KEY}.{key} must list {layers} integers from 0 to "
            f"{limit} (one per layer, at most the config's), got {str(values)[:200]}"
        )
    return values


def check_pruned_config(config, tensors: dict[str, TensorInfo], where: str) -> None:
    """Check a model folder's config before anything is built: its dense sizes are positive integers, and the
    per-layer structure of a pruned model lists one integer per layer within them (every tensor's shape is then
    checked against the weights by :func:`check_shapes`)."""
    adapter = adapter_for(config)
    try:
        dims = adapter.dims(config)
    except (TypeError, ZeroDivisionError, AttributeError, ValueError) as e:
        raise IntegrityError(f"{where}/config.json has unusable dimensions: {e}") from None
    for name in ("num_layers", "num_heads", "head_size", "hidden_size", "intermediate_size"):
        value = getattr(dims, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise IntegrityError(f"{where}/config.json: {name} must be a positive integer, got {value!r}")
    if not adapter.cfg_head_size and dims.hidden_size % dims.num_heads:
        raise IntegrityError(
            f"{where}/config.json: hidden size {dims.hidden_size} is not a multiple of the {dims.num_heads} heads"
        )
    structure = getattr(config, STRUCTURE_KEY, None)
    if structure is None:
        return
    if not isinstance(structure, dict) or not structure:
        raise IntegrityError(
            f"{where}/config.json: {STRUCTURE_KEY} must be an object with num_heads and "
            f"intermediate_size lists, got {str(structure)[:200]}"
        )
    heads = _counts(structure, "num_heads", dims.num_layers, dims.num_heads, where)
    _counts(structure, "intermediate_size", dims.num_layers, dims.intermediate_size, where)
    if "num_key_value_heads" in structure:
        _counts(structure, "num_key_value_heads", dims.num_layers, dims.kv_heads, where)
    groups = structure.get("head_groups")
    if groups is not None and not (
        isinstance(groups, list)
        and len(groups) == dims.num_layers
        and all(
            isinstance(g, list)
            and all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < dims.kv_heads for i in g)
            for g in groups
        )
    ):
        raise IntegrityError(
            f"{where}/config.json: {STRUCTURE_KEY}.head_groups must list, per layer, the key/value "
            f"group (0 to {dims.kv_heads - 1}) of each kept head, got {str(groups)[:200]}"
        )
    if adapter.shared_bias:
        _check_bias_heads(structure.get(BIAS_HEADS_KEY), heads, dims.num_heads, where)


def _check_bias_heads(kept: Any, heads: list[int], dense: int, where: str) -> None:
    """A family with a shared position bias lists the dense head of each kept head (distinct, in 0..dense-1), which
    may go unsaid only where every layer keeps every head."""
    if kept is None and all(h == dense for h in heads):
        return
    if not (
        isinstance(kept, list)
        and len(kept) == len(heads)
        and all(
            isinstance(k, list)
            and len(k) == h
            and len(set(k)) == h
            and all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < dense for i in k)
            for k, h in zip(kept, heads, strict=False)
        )
    ):
        raise IntegrityError(
            f"{where}/config.json: {STRUCTURE_KEY}.{BIAS_HEADS_KEY} must list, per layer, the distinct dense heads "
            f"(0 to {dense - 1}) that layer keeps, as many as its num_heads {heads}, got {str(kept)[:200]}"
        )


def check_shapes(expected: dict, tensors: dict[str, TensorInfo], where: str) -> None:
    """Every tensor the model holds (``expected``: a state dict, on the meta device) must be in the file with the
    same shape, and the file must hold nothing else."""
    for name, tensor in expected.items():
        found = tensors.get(name)
        if found is None or found.shape != tuple(tensor.shape):
            got = "missing" if found is None else f"of shape {list(found.shape)}"
            raise IntegrityError(
                f"{where}: the weights do not match config.json: {name} should be "
                f"{list(tensor.shape)}, the file's is {got}"
            )
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise IntegrityError(f"{where}: the weights hold tensors the config's model does not have: {extra[:5]}")


def check_local_weights(folder: str | Path, allow_pickle: bool = False) -> None:
    """A local model folder's weights, before transformers reads them: safetensors (every file's header checked:
    not empty, truncated or corrupt), or pickle files only when ``allow_pickle``."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    check_weights_format(folder, allow_pickle)
    for file in sorted(folder.glob("*.safetensors")):
        read_header(file)
