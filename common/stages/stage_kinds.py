"""Which stage's folder each stage input must be, checked before a stage runs: a sample folder passed as
``--grads`` is refused naming both, instead of failing later on a missing key."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ConfigError, IntegrityError

_MASKS = ("search", "rearrange", "tune")
_MODELS = ("prepare", "export")
EXPECTED: dict[str, tuple[str, ...]] = {
    "model": _MODELS,
    "pruned": _MODELS,
    "sample": ("sample",),
    "grads": ("fisher",),
    "masks": _MASKS,
    "searched": _MASKS,
    "rearranged": _MASKS,
    "tuned": _MASKS,
    "evaluation": ("evaluate",),
    "profile": ("profile",),
}


def check_input_kinds(stage: str, folders: dict[str, Path | None]) -> None:
    """Each input folder of ``stage`` must be the output of a stage that writes that kind of input."""
    for name, folder in folders.items():
        if folder is None or name not in EXPECTED:
            continue
        try:
            written_by = json.loads((folder / "stage.json").read_text()).get("stage")
        except (OSError, ValueError, AttributeError) as e:
            raise IntegrityError(
                f"--{name} {folder}: no readable stage.json ({type(e).__name__}): not the output of a fastprune stage"
            ) from None
        allowed = EXPECTED[name]
        if written_by not in allowed:
            raise ConfigError(
                f"--{name} {folder} is the output of stage {written_by!r}, but stage {stage} needs "
                f"the output of stage {' or '.join(allowed)} there (fastprune step "
                f"{allowed[0]} ... --out FOLDER)"
            )
