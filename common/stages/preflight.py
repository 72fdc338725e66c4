"""Checks of every input and output named on the command line (or as a pipeline parameter), run before any model
is loaded: a missing file or folder, dev data that does not parse for the task (its labels included), an output
path that cannot be written or already holds something, a device this machine does not have."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConfigError
from ..folders import check_output
from ..ops.storage import is_remote
from ..tasks.spec import get_task

_DATA_SUFFIXES = (".tsv", ".csv", ".json", ".jsonl", ".parquet", ".txt")


def looks_local(source: str) -> bool:
    """Whether ``source`` names a local path (rather than an ``s3://`` URI, a registered model or a hub id); the
    rule :func:`fastprune.common.stages.sources.resolve_source` follows, plus data file suffixes."""
    if is_remote(source) or source.startswith("models:/"):
        return False
    path = Path(source).expanduser()
    return (
        source.startswith(("/", ".", "~"))
        or source.count("/") > 1
        or path.exists()
        or path.suffix.lower() in _DATA_SUFFIXES
    )


def check_exists(source: str | None, what: str) -> None:
    """A local path named as ``what`` must exist."""
    if source and looks_local(source) and not Path(source).expanduser().exists():
        raise ConfigError(f"{what} {source!r} does not exist")


def check_model_source(source: str | None, task: str) -> None:
    """A local model folder the task cannot read is refused (e.g. task embedding: no sentence-transformers folder, a
    pooling mode fastprune cannot carry)."""
    if source and looks_local(source) and Path(source).expanduser().exists():
        get_task(task).check_source(Path(source).expanduser())


def check_dev_data(source: str | None, task: str, text_columns=None, label_column: str | None = None) -> None:
    """The dev data is read and every label parsed against ``task`` (a :class:`DataError` naming the row)."""
    if not source:
        return
    check_exists(source, "dev data")
    from ..tasks.data import load_task_data
    from .sources import resolve_source

    load_task_data(resolve_source(source)[0], get_task(task), "validation", text_columns, label_column)


def check_local_model(source: str, task: str, train_data: str | None = None, max_length: int | None = None) -> None:
    """A local model folder must fit the task (its head: a decoder for ``causal-lm``, a classifier for GLUE...),
    read from its config.json alone; and the task's check of the training data against the model's tokenizer
    (:meth:`~fastprune.common.tasks.base.Task.check_data`: text shorter than one window) runs when both are local."""
    folder = Path(source).expanduser()
    if not looks_local(source) or not (folder / "config.json").is_file():
        return
    from ..model.loading import check_model_for_task
    from ..model.portable import read_config

    spec = get_task(task)
    check_model_for_task(read_config(folder), spec, str(folder))
    if train_data and looks_local(train_data) and spec.checks_data:
        from transformers import AutoTokenizer

        data = spec.load_data(Path(train_data).expanduser(), "train")
        spec.check_data(data, AutoTokenizer.from_pretrained(folder), max_length, f"training data {train_data}")


def check_prune_inputs(cfg, output: str | Path, overwrite: bool = False) -> Path:
    """What ``fastprune prune`` checks before loading the model (``cfg`` is a :class:`PruneConfig`, whose
    validation already checked the parameters and the device)."""
    output = check_output(output, overwrite)
    check_exists(cfg.model, "model")
    check_model_config(cfg.model, cfg.allocation)
    check_model_source(cfg.model, cfg.task)
    check_exists(cfg.train_data, "training data")
    check_dev_data(cfg.dev_data, cfg.task, cfg.text_columns, cfg.label_column)
    check_local_model(cfg.model, cfg.task, cfg.train_data, cfg.sample.max_length)
    return output


def check_model_config(source: str | None, allocation: str = "global") -> None:
    """A local model's config (a folder's ``config.json``, a GGUF file's header; no weights read): a supported
    family whose key/value groups divide its query heads (``allocation`` ``uniform`` keeps the same number of
    query heads in every kept group)."""
    if not source or not looks_local(source):
        return
    from ..model.arch import adapter_for
    from ..model.gguf import gguf_config, is_gguf
    from ..model.portable import read_config

    path = Path(source).expanduser()
    if is_gguf(path):
        config = gguf_config(path)
    elif (path / "config.json").is_file():
        config = read_config(path)
    else:
        return
    adapter = adapter_for(config)
    heads = getattr(config, adapter.cfg_heads)
    groups = getattr(config, adapter.cfg_kv_heads, None) if adapter.cfg_kv_heads else None
    if groups is not None and (groups < 1 or heads % groups):
        raise ConfigError(
            f"model {source!r}: its {groups} key/value groups do not divide its {heads} query heads"
            + (
                " (--allocation uniform keeps the same number of query heads in every kept group)"
                if allocation == "uniform"
                else ""
            )
            + "; num_key_value_heads must be a positive divisor of num_attention_heads"
        )
    adapter.dims(config)


def check_pipeline_inputs(arguments: dict, pipeline_root: str | Path, default_task: str = "sst2") -> None:
    """What ``fastprune run --local`` and ``fastprune sweep --local`` check before the first step: the local
    model, training and dev data exist, the dev data parses for the task, the device is here, the pipeline root
    can be written (runs are added to it as new folders: nothing in it is replaced)."""
    from ..model.loading import check_device

    check_device(arguments.get("device") or "auto")
    root = check_output(pipeline_root, overwrite=True)  # a folder, or one we can make; its earlier runs stay
    if root.is_dir() and not os.access(root, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write into the pipeline root {root}: no write permission")
    check_exists(arguments.get("model"), "model")
    check_model_config(arguments.get("model"), arguments.get("allocation") or "global")
    check_model_source(arguments.get("model"), arguments.get("task") or default_task)
    check_exists(arguments.get("train_data"), "training data")
    check_dev_data(arguments.get("dev_data"), arguments.get("task") or default_task)
    if arguments.get("model"):
        check_local_model(
            arguments["model"],
            arguments.get("task") or default_task,
            arguments.get("train_data"),
            arguments.get("max_length"),
        )
