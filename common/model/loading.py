"""Load a fine-tuned model and its tokenizer, and check that they fit the task and each other."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer

from ..errors import ConfigError, IntegrityError, ModelTaskMismatchError
from ..tasks.spec import Task
from .arch import STRUCTURE_KEY, adapter_for
from .checkpoint import CONVERT_HINT, PickleCheckpointError, check_local_weights
from .export import load_pruned
from .gguf import gguf_config, is_gguf, load_gguf
from .portable import is_portable_folder, read_config

log = logging.getLogger(__name__)


_DEVICE = re.compile(r"(?P<kind>cpu|cuda|mps)(?::(?P<index>\d+))?")


def available_devices() -> list[str]:
    """The devices this machine can run on: ``cpu``, ``cuda:0``... and ``mps``."""
    mps = getattr(torch.backends, "mps", None)
    return (
        ["cpu"]
        + [f"cuda:{i}" for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0)]
        + (["mps"] if mps is not None and mps.is_available() else [])
    )


def check_device(device: str | None, available: bool = True) -> str:
    """``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``) if it exists here (with ``available``; else
    only its spelling is checked); a :class:`ConfigError` naming the devices available otherwise."""
    if device in (None, "", "auto"):
        return "auto"
    match = _DEVICE.fullmatch(str(device).strip().lower())
    if match is None or (match["kind"] != "cuda" and match["index"] not in (None, "0")):
        raise ConfigError(
            f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps (available here: "
            f"{', '.join(available_devices())})"
        )
    if available:
        here = available_devices()
        kind, index = match["kind"], int(match["index"] or 0)
        if kind == "cuda" and not any(d.startswith("cuda") for d in here):
            raise ConfigError(
                f"device {device!r} is not available: this machine has no CUDA GPU (available: {', '.join(here)})"
            )
        if kind == "cuda" and f"cuda:{index}" not in here:
            count = sum(d.startswith("cuda") for d in here)
            raise ConfigError(
                f"device {device!r} is not available: this machine has {count} CUDA GPU"
                f"{'s' if count > 1 else ''} (available: {', '.join(here)})"
            )
        if kind == "mps" and "mps" not in here:
            raise ConfigError(
                f"device {device!r} is not available: this machine has no Apple MPS (available: {', '.join(here)})"
            )
    return str(device).strip().lower()


def resolve_device(device: str | None = "auto") -> torch.device:
    """The torch device for ``device`` (``auto``: the first GPU if there is one), checked by :func:`check_device`."""
    device = check_device(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def spread_across_gpus(device: torch.device | str, gpus: int) -> bool:
    """Whether a model is loaded across every GPU of the step (``device_map="auto"``: a model larger than one
    device): on ``cuda`` with no index chosen (``--device auto`` or ``cuda``) when the machine has more than one."""
    device = torch.device(device)
    return device.type == "cuda" and device.index is None and gpus > 1


def check_model_for_task(config, task: Task, where: str) -> None:
    """The model must carry the task's head (fine-tuned for it), as the task checks it (the number of labels...)."""
    adapter_for(config)  # unsupported architectures fail here, naming the supported ones
    task.check_model(config, where)


def check_tokenizer(tokenizer, config, where: str) -> None:
    """Every id the tokenizer can produce must exist in the model's embedding table."""
    vocab = getattr(config, "vocab_size", None)
    ids = tokenizer("fastprune checks the tokenizer")["input_ids"]
    if vocab is not None and (len(tokenizer) > vocab or max(ids) >= vocab):
        raise ModelTaskMismatchError(
            f"the tokenizer of {where} ({len(tokenizer)} tokens) does not match the model's vocabulary "
            f"({vocab} embeddings): use the tokenizer the model was fine-tuned with"
        )


def load_model(
    source: str | Path,
    task: Task,
    device: torch.device | str = "cpu",
    trust_remote_code: bool = False,
    tokenizer_source: str | Path | None = None,
    allow_pickle: bool = False,
):
    """A fine-tuned model (local folder, a GGUF file, or a hub id when the hub is reachable) and its tokenizer,
    checked against the task. On ``cuda`` with more than one GPU the model is spread across them
    (:func:`spread_across_gpus`). A folder written by fastprune's export is rebuilt with its structure.
    Weights are read from safetensors only, unless ``allow_pickle`` (``pytorch_model.bin``...)."""
    where = str(source)
    if is_gguf(source):  # one llama.cpp file: checked (package, architecture, task) before its weights are read
        check_model_for_task(gguf_config(source), task, where)
        model, tokenizer = load_gguf(source, task.auto_model_class(), device)
        check_tokenizer(tokenizer, model.config, where)
        return model, tokenizer
    root, source = source, task.model_folder(source)  # a sentence-transformers folder's encoder may sit below it
    check_local_weights(source, allow_pickle)
    try:
        if is_portable_folder(source):  # fastprune's own export: read as the stock config, its code not run
            config = read_config(source)
        else:
            config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, IntegrityError) as e:
        raise ModelTaskMismatchError(f"cannot read a model config from {where}: {e}") from e
    check_model_for_task(config, task, where)
    if getattr(config, STRUCTURE_KEY, None):
        model, tokenizer = load_pruned(source, device)
    else:
        cls = task.auto_model_class()
        spread = spread_across_gpus(device, torch.cuda.device_count() if torch.cuda.is_available() else 0)
        try:
            model = cls.from_pretrained(
                source,
                trust_remote_code=trust_remote_code,
                use_safetensors=None if allow_pickle else True,
                **({"device_map": "auto"} if spread else {}),
            )
            model = (model if spread else model.to(device)).eval()
        except OSError as e:
            if allow_pickle or Path(source).is_dir():
                raise ModelTaskMismatchError(f"cannot load the model weights of {where}: {e}") from e
            raise PickleCheckpointError(
                f"cannot load safetensors weights of {where} ({str(e).splitlines()[0]}): "
                "fastprune reads safetensors only; if the model has pickle weights only, "
                f"either {CONVERT_HINT}, or pass --allow-pickle (allow_pickle=True) if you "
                "trust the file"
            ) from e
        tokenizer = None
    if tokenizer_source is not None or tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(
            tokenizer_source or source,
            trust_remote_code=trust_remote_code,
            **({"config": config} if tokenizer_source is None else {}),
        )
    check_tokenizer(tokenizer, config, where)
    task.attach(model, root)
    log.info("loaded %s (%s) on %s", where, type(model).__name__, device)
    return model, tokenizer
