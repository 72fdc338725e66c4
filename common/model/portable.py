"""Exported folders that load without fastprune: a stock config where one describes the pruned model, else a model
type of fastprune's own whose code (``modeling_fastprune.py``, copied into the folder) transformers loads with
``trust_remote_code=True``; and the reverse, for fastprune itself, which rebuilds the stock classes.

Where every layer keeps every head and one FFN size, the config is the family's stock one with that FFN size: plain
``from_pretrained`` loads it. Otherwise the config names ``fastprune_<model type>`` and ``auto_map`` points at the
classes of ``modeling_fastprune.py``; without ``trust_remote_code=True`` transformers refuses the folder (an unknown
model type, custom code to run) rather than loading it into the wrong shapes.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from transformers import PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from ..errors import IntegrityError
from . import modeling_fastprune
from .arch import STRUCTURE_KEY, ArchAdapter

MODELING_FILE = "modeling_fastprune.py"
PREFIX = modeling_fastprune.MODEL_TYPE_PREFIX
CLASS_PREFIX = "Fastprune"
log = logging.getLogger(__name__)
_AUTO_CLASSES = {
    "ForSequenceClassification": "AutoModelForSequenceClassification",
    "ForQuestionAnswering": "AutoModelForQuestionAnswering",
    "ForCausalLM": "AutoModelForCausalLM",
    "Model": "AutoModel",  # the bare encoder (sentence embeddings)
}


def fits_stock_config(structure: dict[str, list], dense_heads: int, free_head_count: bool = False) -> bool:
    """Whether a stock config describes the structure: one FFN size, and every head kept in every layer; or, for a
    family whose config states its head size and key/value head count (``free_head_count``: Llama and its kin),
    the same number of key/value groups in every layer, each keeping the same number of query heads, in order."""
    if len(set(structure["intermediate_size"])) > 1:
        return False
    if not free_head_count or "head_groups" not in structure:
        return all(h == dense_heads for h in structure["num_heads"])
    shapes = {(len(g), len(set(g))) for g in structure["head_groups"]}
    if len(shapes) != 1:
        return False
    heads, groups = shapes.pop()
    in_order = [j // (heads // groups) for j in range(heads)] if heads and heads % groups == 0 else None
    return in_order is not None and all(g == in_order for g in structure["head_groups"])


def make_portable(folder: Path, adapter: ArchAdapter, dense_heads: int) -> bool:
    """Rewrite ``folder/config.json`` (written by ``save_pretrained`` with the structure under
    ``fastprune_structure``) so that transformers alone loads the folder; returns whether it needs the custom code
    (then ``modeling_fastprune.py`` is copied beside it)."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    structure = config[STRUCTURE_KEY]
    free = bool(adapter.cfg_kv_heads and adapter.cfg_head_size)
    if fits_stock_config(structure, dense_heads, free):
        sizes = structure["intermediate_size"]
        if sizes:
            config[adapter.cfg_intermediate] = sizes[0]
        if free and structure["num_heads"][0] != dense_heads:  # the stock config of the kept heads and groups
            head_size = config.get(adapter.cfg_head_size) or config[adapter.cfg_hidden] // dense_heads
            config.update({adapter.cfg_head_size: head_size, adapter.cfg_heads: structure["num_heads"][0]})
            config[str(adapter.cfg_kv_heads)] = structure["num_key_value_heads"][0]
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        return False
    base_type, architecture = config["model_type"], config["architectures"][0]
    auto_class = next((auto for suffix, auto in _AUTO_CLASSES.items() if architecture.endswith(suffix)), None)
    model_class = getattr(modeling_fastprune, CLASS_PREFIX + architecture, None)
    if auto_class is None or model_class is None or model_class.base_model_type != base_type:
        log.warning(
            "%s (%s) has no portable modeling code (sequence classification, question answering and causal "
            "language models have): the exported folder loads with fastprune's load_pruned only",
            architecture,
            base_type,
        )
        return False
    config_class = model_class.config_class
    module = MODELING_FILE.removesuffix(".py")
    config.update(
        model_type=PREFIX + base_type,
        architectures=[model_class.__name__],
        auto_map={"AutoConfig": f"{module}.{config_class.__name__}", auto_class: f"{module}.{model_class.__name__}"},
    )
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    shutil.copyfile(modeling_fastprune.__file__, folder / MODELING_FILE)
    return True


def read_config(folder: str | Path) -> PretrainedConfig:
    """The stock transformers config of a model folder: a portable folder's own model type (``fastprune_bert``)
    is read as the stock one (``bert``), its architecture as the stock class, without running its code."""
    path = Path(folder) / "config.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise IntegrityError(f"cannot read {path}: {e}") from e
    model_type = str(data.get("model_type", ""))
    if model_type.startswith(PREFIX):
        model_type = model_type[len(PREFIX) :]
        data.pop("auto_map", None)
        data["model_type"] = model_type
        data["architectures"] = [a.removeprefix(CLASS_PREFIX) for a in data.get("architectures") or []]
    if model_type not in CONFIG_MAPPING:
        raise IntegrityError(f"{path} names an unknown model_type {model_type!r}")
    return CONFIG_MAPPING[model_type].from_dict(data)


def is_portable_folder(folder: str | Path) -> bool:
    """Whether ``folder`` is a local model folder with fastprune's own model type (``fastprune_bert``, ...)."""
    path = Path(folder) / "config.json"
    try:
        return path.is_file() and str(json.loads(path.read_text()).get("model_type", "")).startswith(PREFIX)
    except (OSError, ValueError):
        return False
