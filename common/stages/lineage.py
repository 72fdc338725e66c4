"""Stage lineage: which task, model and sample a stage folder descends from, and the check that a stage's inputs
agree on them.

``prepare`` records the task and a fingerprint of the prepared model (sha256 over its config and weight files);
``sample`` records the task and a fingerprint of the drawn sample; every other stage inherits what its inputs
recorded. :func:`inherited_lineage` refuses inputs that disagree (Fisher gradients of an SST-2 run against an MRPC
model, the gradients of another model or another sample), naming both folders and both values.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..errors import ConfigError

LINEAGE_KEYS = ("task", "model_fingerprint", "sample_fingerprint")
_WHAT = {"task": "task", "model_fingerprint": "model (fingerprint)", "sample_fingerprint": "sample (fingerprint)"}
_STAGE_FILE = "stage.json"
_MODEL_FILES = ("config.json",)
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprint(folder: Path, names: list[str]) -> str:
    """sha256 over the names and contents of ``names`` (files of ``folder``)."""
    digest = hashlib.sha256()
    for name in sorted(names):
        digest.update(f"{name}\0{_file_digest(folder / name)}\n".encode())
    return digest.hexdigest()


def model_fingerprint(folder: Path) -> str:
    """The fingerprint of a model folder: its config and weight files (not the tokenizer or fastprune's notes)."""
    names = [
        p.name for p in folder.iterdir() if p.is_file() and (p.name in _MODEL_FILES or p.suffix in _WEIGHT_SUFFIXES)
    ]
    return fingerprint(folder, names)


def sample_fingerprint(folder: Path) -> str:
    """The fingerprint of a sample folder: its parquet files (the sample and its held-out part)."""
    return fingerprint(folder, [p.name for p in folder.iterdir() if p.is_file() and p.suffix == ".parquet"])


OWN_LINEAGE = {
    "prepare": ("model_fingerprint", model_fingerprint),
    "sample": ("sample_fingerprint", sample_fingerprint),
}
"""The stages that start a lineage, and the fingerprint each records of its own output."""


def own_lineage(stage: str, folder: Path) -> dict[str, str]:
    if stage not in OWN_LINEAGE:
        return {}
    key, compute = OWN_LINEAGE[stage]
    return {key: compute(folder)}


def inherited_lineage(stage: str, inputs: dict[str, Path | None]) -> dict[str, str]:
    """What the input folders of ``stage`` agree on (task, model and sample fingerprints); a :class:`ConfigError`
    naming both inputs and both values when two disagree. Inputs that record nothing (older folders) are skipped."""
    seen: dict[str, tuple[str, str, Path]] = {}
    for name, folder in inputs.items():
        if folder is None or not (folder / _STAGE_FILE).is_file():
            continue
        info = json.loads((folder / _STAGE_FILE).read_text())
        for key in LINEAGE_KEYS:
            value = info.get(key)
            if value is None:
                continue
            if key in seen and seen[key][0] != value:
                first, where, path = seen[key]
                raise ConfigError(
                    f"stage {stage}: its inputs come from different runs: {where} ({path}) was made for "
                    f"{_WHAT[key]} {_short(first)} but {name} ({folder}) for {_WHAT[key]} {_short(value)}; give "
                    f"inputs made from the same model, task and sample"
                )
            seen.setdefault(key, (value, name, folder))
    return {key: value for key, (value, _, _) in seen.items()}


def _short(value: str) -> str:
    return value[:12] if len(value) == 64 else repr(value)
