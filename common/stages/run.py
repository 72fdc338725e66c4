"""The registry of stages and :func:`run_stage`: verified inputs, the output built beside its destination."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from ..errors import ConfigError
from ..folders import STAGE_FILE, STAGE_ORDER, staged_folder, verify_manifest, write_manifest
from .config import (
    EvaluateParams,
    ExportParams,
    FisherParams,
    OnnxParams,
    PrepareParams,
    ProfileParams,
    RearrangeParams,
    RegisterParams,
    SampleParams,
    SearchParams,
    TuneParams,
)
from .lineage import inherited_lineage, own_lineage
from .runners import (
    run_evaluate,
    run_export,
    run_fisher,
    run_onnx,
    run_prepare,
    run_profile,
    run_rearrange,
    run_sample,
    run_search,
    run_tune,
)
from .stage_kinds import check_input_kinds


def _run_register(p: RegisterParams, out: Path, **inputs: Path | None) -> dict:
    """Register the pruned model in MLflow; the alias moves to it only when the accuracy gate passes."""
    from .register import register

    return register(p, out, **{name: folder for name, folder in inputs.items() if folder is not None})


@dataclass(frozen=True)
class Stage:
    func: Callable[..., dict]
    params: type[BaseModel]
    inputs: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()

    @property
    def doc(self) -> str:
        return (self.func.__doc__ or "").strip().splitlines()[0]


STAGES: dict[str, Stage] = {
    "prepare": Stage(run_prepare, PrepareParams),
    "sample": Stage(run_sample, SampleParams),
    "fisher": Stage(run_fisher, FisherParams, ("model", "sample")),
    "search": Stage(run_search, SearchParams, ("model", "grads"), ("sample",)),
    "rearrange": Stage(run_rearrange, RearrangeParams, ("grads", "masks")),
    "tune": Stage(run_tune, TuneParams, ("model", "sample", "grads", "searched", "masks")),
    "export": Stage(run_export, ExportParams, ("model", "masks")),
    "evaluate": Stage(run_evaluate, EvaluateParams, ("model", "pruned"), ("searched", "rearranged", "tuned")),
    "profile": Stage(run_profile, ProfileParams, ("model", "pruned")),
    "onnx": Stage(run_onnx, OnnxParams, ("pruned",)),
    "register": Stage(
        _run_register,
        RegisterParams,
        ("pruned", "tuned", "evaluation"),
        ("model", "sample", "grads", "searched", "rearranged", "profile"),
    ),
}

if tuple(STAGES) != STAGE_ORDER:  # the register stage orders stage folders by STAGE_ORDER
    raise RuntimeError(f"STAGES {tuple(STAGES)} must follow folders.STAGE_ORDER {STAGE_ORDER}")


def run_stage(name: str, out: str | Path, params: BaseModel | dict, **inputs: str | Path | None) -> dict:
    """Run stage ``name`` on verified input folders; write its folder ``out`` completely or not at all.

    Returns the stage's ``stage.json``: ``{"stage", "params", "seconds", **results}``."""
    if name not in STAGES:
        raise ConfigError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    stage = STAGES[name]
    p = params if isinstance(params, stage.params) else stage.params.model_validate(params)
    missing = [k for k in stage.inputs if inputs.get(k) is None]
    unknown = sorted(set(inputs) - set(stage.inputs) - set(stage.optional))
    if missing or unknown:
        raise ConfigError(
            f"stage {name} needs inputs {list(stage.inputs)} (optional {list(stage.optional)}); "
            f"missing {missing}, unknown {unknown}"
        )
    folders = {k: Path(v) if v is not None else None for k, v in inputs.items()}
    for folder in folders.values():
        if folder is not None:
            verify_manifest(folder)
    check_input_kinds(name, folders)
    lineage = inherited_lineage(name, folders)  # inputs of one task, model and sample, or refused
    start = time.perf_counter()
    with staged_folder(Path(out)) as staging:
        result = stage.func(p, staging, **folders)
        info = {
            "stage": name,
            "params": p.model_dump(mode="json"),
            "seconds": round(time.perf_counter() - start, 3),
            **lineage,
            **result,
            **own_lineage(name, staging),
        }
        (staging / STAGE_FILE).write_text(json.dumps(info, indent=2, default=str))
        write_manifest(staging)
    return info
