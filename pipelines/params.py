"""The parameters of a pipeline run, validated before anything is sent to a cluster or run locally.

Every field is optional: an unset one keeps the pipeline's default. They come from a YAML or JSON file
(``--params run.yaml``), from command-line flags (which override the file) or both::

    model: s3://models/bert-sst2
    task: sst2
    train_data: s3://data/sst2/train.tsv
    dev_data: s3://data/sst2/dev.tsv
    constraint: 0.6
    max_metric_drop: 1.0
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator

from ..common.errors import ConfigError
from ..common.search import check_constraint
from ..common.tasks import get_task


class PipelineParams(BaseModel):
    """Parameters shared by the pruning pipeline and the budget sweep."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="fine-tuned model: s3:// URI, models:/NAME/VERSION, folder or hub id")
    task: str | None = Field(None, description="sst2, mrpc, stsb, rte, qnli, mnli, qqp, cola, squad, squad_v2")
    train_data: str | None = Field(None, description="training data: s3:// URI, file or hub dataset id")
    dev_data: str | None = Field(None, description="dev data: s3:// URI, file or hub dataset id")
    constraint_metric: Literal["flops", "latency"] | None = None
    num_samples: int | None = Field(None, gt=0, description="examples in the pruning sample")
    seed: int | None = Field(None, ge=0)
    registered_model_name: str | None = Field(None, min_length=1, description="MLflow model the result registers as")
    max_metric_drop: float | None = Field(None, description="the accuracy gate: largest drop in metric points")
    alias: str | None = Field(None, min_length=1, description="MLflow alias moved to a version that passes the gate")
    mlflow_uri: str | None = Field(None, description="MLflow tracking URI the steps use (empty: their environment)")
    mlflow_experiment: str | None = None
    device: str | None = Field(None, description="auto, cpu, cuda, ...")
    accelerator_type: str | None = None
    gpu_limit: int | None = Field(None, ge=0, description="accelerators per GPU step (0: CPU only)")
    s3_secret: str | None = Field(None, description="Kubernetes secret with the S3 credentials")
    profile_batch_size: int | None = Field(None, gt=0)
    profile_seq_len: int | None = Field(None, gt=0)
    serving_dtype: Literal["float32", "float16", "bfloat16"] | None = Field(
        None, description="the dtype the model will serve in: the latency search's table and the profile step measure "
        "it (float16/bfloat16 need GPU steps)")

    @field_validator("task")
    @classmethod
    def _task(cls, value: str | None) -> str | None:
        return None if value is None else get_task(value).name

    @field_validator("device")
    @classmethod
    def _device(cls, value: str | None) -> str | None:
        """The spelling only: whether the steps' machines have the device is checked by each step (and here,
        before a local run, by :func:`fastprune.common.preflight.check_pipeline_inputs`)."""
        if value is None:
            return None
        from ..common.models import check_device

        return check_device(value, available=False)

    def arguments(self) -> dict[str, Any]:
        """The pipeline's arguments: only the parameters that were set."""
        return self.model_dump(exclude_none=True)


class PruneRunParams(PipelineParams):
    """A run of the pruning pipeline (``pipelines/prune_pipeline.py``)."""

    constraint: float | None = Field(None, description="fraction of FLOPs (or latency) to keep, in (0, 1)")

    @field_validator("constraint")
    @classmethod
    def _constraint(cls, value: float | None) -> float | None:
        return None if value is None else check_constraint(value)


class SweepRunParams(PipelineParams):
    """A run of the budget sweep (``pipelines/sweep_pipeline.py``)."""

    constraints: list[float] | None = Field(None, description="the budgets to try, each in (0, 1)")
    objective: Literal["smallest", "fastest"] | None = Field(
        None, description="which passing candidate to register: fewest parameters, or lowest measured latency"
    )

    @field_validator("constraints")
    @classmethod
    def _constraints(cls, value: list[float] | None) -> list[float] | None:
        if value is None:
            return None
        if not value:
            raise ConfigError("constraints must list at least one budget, e.g. [0.4, 0.5, 0.6]")
        checked = [check_constraint(c) for c in value]
        if len(set(checked)) != len(checked):
            raise ConfigError(f"constraints must be distinct, got {value}")
        return checked


_KFP_TYPES: dict[str, type] = {"String": str, "Integer": int, "Float": float, "Boolean": bool, "List": list,
                                "Dict": dict}


def params_model(base: type[PipelineParams], inputs: dict[str, str]) -> type[PipelineParams]:
    """``base`` with an optional field (of the input's KFP type) for every pipeline input that ``base`` does not
    declare, so that a parameter added to a pipeline can be set at once (its range checked by its step)."""
    stale = sorted(set(base.model_fields) - set(inputs))
    if stale:
        raise ConfigError(f"{base.__name__} declares {stale}, which the pipeline does not take")
    extra: dict[str, Any] = {name: (_KFP_TYPES.get(kind, str) | None, Field(None, description=f"({kind})"))
                             for name, kind in inputs.items() if name not in base.model_fields}
    return create_model(base.__name__, __base__=base, **extra) if extra else base


def load_params(path: str | Path, model: type[PipelineParams], overrides: dict[str, Any] | None = None):
    """The parameters in a YAML or JSON file, with ``overrides`` (the flags that were given) on top."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"parameter file {str(path)!r} does not exist")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"parameter file {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: "
                          f"{e}") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"parameter file {path} must hold a mapping of parameter names to values, "
                          f"got a {type(data).__name__}")
    return validate_params(model, {**data, **(overrides or {})}, origin=str(path))


def validate_params(model: type[PipelineParams], values: dict[str, Any], origin: str = "the parameters"):
    """``values`` checked against ``model``; a :class:`ConfigError` that names each bad parameter and what is
    valid otherwise."""
    try:
        return model.model_validate(values)
    except ValidationError as e:
        problems = []
        for error in e.errors():
            name = ".".join(str(p) for p in error["loc"]) or "(top level)"
            if error["type"] == "extra_forbidden":
                problems.append(f"unknown parameter {name!r} (valid: {', '.join(model.model_fields)})")
            else:
                problems.append(f"{name}: {error['msg']} (got {error.get('input')!r})")
        raise ConfigError(f"{origin}: " + "; ".join(problems)) from None
