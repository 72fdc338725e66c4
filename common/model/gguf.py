"""Models stored as one GGUF file (llama.cpp's format): read dequantized into a stock transformers model.

``--model path/model.gguf`` is checked before any weight is read: the ``gguf`` package must be installed (it reads
the file; ``pip install 'fastprune[llm]'``) and the file's architecture (``general.architecture``) must be a supported
decoder family. transformers then dequantizes every tensor to float32; the model it returns keeps a GGUF quantizer
and refuses ``save_pretrained``, so a fresh model is built from its config (without ``quantization_config``) and
the dequantized weights are copied in: a plain dense model, the baseline the pruning measures against (its weights
went through the file's quantization).
"""

from __future__ import annotations

import importlib.util
import logging
import struct
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError, IntegrityError, UnsupportedArchitectureError
from .arch import ADAPTERS

log = logging.getLogger(__name__)
SUFFIX = ".gguf"
INSTALL_HINT = "pip install 'fastprune[llm]' (or: pip install gguf accelerate)"


def is_gguf(source: str | Path) -> bool:
    return str(source).lower().endswith(SUFFIX)


def gguf_model_types() -> tuple[str, ...]:
    """The GGUF architectures fastprune reads: its decoder families (a GGUF names them as transformers does)."""
    return tuple(t for a in ADAPTERS if a.causal for t in a.model_types)


def check_gguf(path: str | Path) -> str:
    """The architecture of a GGUF file, checked before its weights are read: the ``gguf`` and ``accelerate``
    packages installed, a readable GGUF header, a supported decoder family."""
    path = Path(path)
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"reading {path.name} needs the {' and '.join(missing)} package(s): {INSTALL_HINT}")
    if not path.is_file():
        raise ConfigError(f"GGUF model {str(path)!r} is not a file")
    try:
        architecture = read_architecture(path)
    except (KeyError, ValueError, OSError, struct.error, UnicodeDecodeError) as e:
        raise IntegrityError(f"{path} is not a readable GGUF model file: {e}") from None
    if architecture not in gguf_model_types():
        raise UnsupportedArchitectureError(
            f"{path.name} holds a GGUF model of architecture {architecture!r}, which fastprune does not prune; "
            f"supported GGUF architectures: {', '.join(gguf_model_types())}"
        )
    return architecture


_SCALAR_BYTES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUF value types
_STRING, _ARRAY = 8, 9


def read_architecture(path: Path) -> str:
    """``general.architecture`` from a GGUF header, reading the key/value pairs up to it only (a model's tokenizer
    arrays, tens of thousands of strings, usually come after it)."""
    with open(path, "rb") as f:

        def unpack(fmt: str):
            return struct.unpack("<" + fmt, f.read(struct.calcsize("<" + fmt)))[0]

        def string() -> str:
            return f.read(unpack("Q")).decode()

        def skip(kind: int) -> None:
            if kind == _STRING:
                f.seek(unpack("Q"), 1)
            elif kind == _ARRAY:
                inner, count = unpack("I"), unpack("Q")
                if inner in _SCALAR_BYTES:
                    f.seek(_SCALAR_BYTES[inner] * count, 1)
                else:
                    for _ in range(count):
                        skip(inner)
            elif kind in _SCALAR_BYTES:
                f.seek(_SCALAR_BYTES[kind], 1)
            else:
                raise ValueError(f"unknown GGUF value type {kind}")

        if f.read(4) != b"GGUF":
            raise ValueError("no GGUF magic number")
        if unpack("I") < 2:
            raise ValueError("GGUF version 1 is not supported")
        _tensors, pairs = unpack("Q"), unpack("Q")
        for _ in range(pairs):
            key, kind = string(), unpack("I")
            if key == "general.architecture" and kind == _STRING:
                return string()
            skip(kind)
    raise KeyError("general.architecture")


def gguf_config(path: str | Path):
    """The transformers config of a checked GGUF file (no weights read)."""
    from transformers import AutoConfig

    path = Path(path)
    check_gguf(path)
    config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    return config


def load_gguf(path: str | Path, auto_class, device: torch.device | str = "cpu") -> tuple[nn.Module, object]:
    """The dequantized float32 model (a fresh stock model, savable) and its tokenizer, from a checked GGUF file."""
    from transformers import AutoTokenizer

    path = Path(path)
    check_gguf(path)
    loaded = auto_class.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = auto_class.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    del loaded
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    log.info("read %s (GGUF, %s) dequantized to float32", path, config.model_type)
    return model.to(device).eval(), tokenizer
