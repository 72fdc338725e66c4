"""Sentence-transformers folders: read the modules fastprune carries (the Transformer, its pooling, Normalize) and
write them beside an exported model, so that ``SentenceTransformer(folder)`` loads it.

A sentence-transformers folder lists its modules in ``modules.json``: a ``Transformer`` (the encoder's folder, often
the root), a ``Pooling`` (``1_Pooling/config.json``: mean, CLS or max over the tokens) and optionally ``Normalize``
(L2; no config: the real all-mpnet-base-v2 folder lists ``2_Normalize`` without such a folder). fastprune computes
``embedding = pool(last hidden state)``, L2-normalised when the folder has ``Normalize``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel

from ..errors import ModelTaskMismatchError

PoolingMode = Literal["mean", "cls", "max"]
POOLING_KEY = "fastprune_pooling"
"""Key in a model's config (and ``config.json``) that holds its :class:`Pooling` as a dict."""
MODULES = "modules.json"
POOLING_DIR = "1_Pooling"
ST_CONFIG = "sentence_bert_config.json"
_ST = "sentence_transformers.models."
_MODES: dict[str, PoolingMode] = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
}
_UNSUPPORTED = ("pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken")
_CARRIED = {"Transformer", "Pooling", "Normalize"}


class Pooling(BaseModel):
    """How token states become one sentence embedding."""

    mode: PoolingMode = "mean"
    normalize: bool = False
    max_seq_length: int | None = None
    transformer_path: str = ""  # the encoder's folder inside the sentence-transformers folder


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """Sentence embeddings [B, H] from token states [B, T, H], as sentence-transformers' Pooling (and Normalize)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    if pooling.mode == "cls":
        out = hidden[:, 0]
    elif pooling.mode == "max":
        out = hidden.masked_fill(mask == 0, -1e9).max(dim=1).values
    else:
        out = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(out, p=2, dim=-1) if pooling.normalize else out


def _json(path: Path, where: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelTaskMismatchError(f"{where}: cannot read {path.name}: {e}") from None


def read_st_folder(folder: str | Path) -> Pooling:
    """The pooling of a local sentence-transformers folder; a :class:`ModelTaskMismatchError` naming what is wrong
    when it is not one (no ``modules.json``, no Transformer or Pooling module) or pools in a way fastprune cannot
    carry (mean_sqrt_len, weighted mean, last token, several modes at once, other modules)."""
    root = Path(folder)
    where = str(root)
    if not (root / MODULES).is_file():
        raise ModelTaskMismatchError(
            f"{where} is not a sentence-transformers model folder: it has no {MODULES} (task embedding needs one, "
            "with a Transformer and a Pooling module, as SentenceTransformer.save writes)"
        )
    modules = _json(root / MODULES, where)
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise ModelTaskMismatchError(f"{where}/{MODULES} must be a list of modules, got {str(modules)[:200]}")
    kinds = {str(m.get("type", "")).removeprefix(_ST): str(m.get("path", "")) for m in modules}
    other = sorted(set(kinds) - _CARRIED)
    if other:
        raise ModelTaskMismatchError(
            f"{where}/{MODULES} has modules fastprune cannot carry: {other}; supported: {sorted(_CARRIED)}"
        )
    for needed in ("Transformer", "Pooling"):
        if needed not in kinds:
            raise ModelTaskMismatchError(f"{where}/{MODULES} has no {needed} module (found {sorted(kinds)})")
    config = _json(root / kinds["Pooling"] / "config.json", where)
    used = [key for key, value in config.items() if key.startswith("pooling_mode_") and value is True]
    unsupported = [key for key in used if key not in _MODES]
    supported = ", ".join(_MODES[k] for k in _MODES)
    if unsupported or len(used) != 1:
        names = [key.removeprefix("pooling_mode_") for key in used] or ["none"]
        raise ModelTaskMismatchError(
            f"{where}/{kinds['Pooling']}/config.json pools with {'+'.join(names)}: fastprune carries exactly one "
            f"of {supported}"
        )
    st_config = root / kinds["Transformer"] / ST_CONFIG
    max_len = _json(st_config, where).get("max_seq_length") if st_config.is_file() else None
    return Pooling(
        mode=_MODES[used[0]],
        normalize="Normalize" in kinds,
        max_seq_length=int(max_len) if max_len else None,
        transformer_path=kinds["Transformer"],
    )


def write_st_files(folder: Path, pooling: Pooling, hidden_size: int, lowercase: bool = False) -> None:
    """Make ``folder`` (a model folder: config, weights, tokenizer) a sentence-transformers folder with ``pooling``:
    ``modules.json``, ``1_Pooling/config.json`` and ``sentence_bert_config.json``."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": _ST + "Transformer"},
        {"idx": 1, "name": "1", "path": POOLING_DIR, "type": _ST + "Pooling"},
    ]
    if pooling.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": _ST + "Normalize"})
    (folder / MODULES).write_text(json.dumps(modules, indent=2) + "\n")
    (folder / POOLING_DIR).mkdir(exist_ok=True)
    config: dict[str, Any] = {"word_embedding_dimension": hidden_size}
    config |= {key: pooling.mode == mode for key, mode in _MODES.items()}
    config |= dict.fromkeys(_UNSUPPORTED, False)
    (folder / POOLING_DIR / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    st_config = {"max_seq_length": pooling.max_seq_length or 512, "do_lower_case": lowercase}
    (folder / ST_CONFIG).write_text(json.dumps(st_config, indent=2) + "\n")


def model_pooling(model: Any) -> Pooling:
    """The pooling a loaded embedding model carries in its config (set when it was loaded for task embedding)."""
    found = getattr(model.config, POOLING_KEY, None)
    if not found:
        raise ModelTaskMismatchError(
            f"{type(model).__name__} carries no sentence pooling: load it for task embedding from a "
            "sentence-transformers folder"
        )
    return Pooling.model_validate(found)
