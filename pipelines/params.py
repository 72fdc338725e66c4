"""The parameters of a pipeline run, validated before anything is sent to a cluster or run locally. They are the
pipelines' declaration: both pipelines' signatures are generated from these models.

Every field has a default: an unset one keeps it (and is not sent). They come from a YAML or JSON file
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
from types import UnionType
from typing import Any, ClassVar, Literal, Union, get_args, get_origin

import yaml
from pydantic import Field, ValidationError, create_model, field_validator, model_validator
from pydantic.fields import FieldInfo

from ..common.errors import ConfigError
from ..common.method.search import check_constraint
from ..common.stages.options import (
    Allocation,
    CalibGenerate,
    Constraint,
    ConstraintMetric,
    Device,
    FisherLabels,
    FisherRows,
    FisherSteps,
    Holdout,
    Objective,
    OnnxExport,
    ProfileShape,
    RunOptions,
    SampleShape,
    Sampling,
    ServingDtype,
    TuningChoices,
    check_auto_allocation,
    check_calib_generate,
)
from ..common.tasks.spec import get_task

KFP_TYPES: dict[str, type] = {
    "String": str,
    "Integer": int,
    "Float": float,
    "Boolean": bool,
    "List": list,
    "Dict": dict,
}
"""The Python type of each KFP parameter type (``component_spec.inputs[name].type``)."""


def kfp_annotation(field: FieldInfo) -> type:
    """The type a KFP signature gives a field: ``bool``, ``int``, ``float``, ``list``, ``dict`` or ``str`` (a
    ``Literal`` of strings, or a union of a number and strings, travels as a string; an optional string as a
    string, empty for None)."""
    annotation = field.annotation
    if annotation == str | None:
        return str
    if annotation in (bool, int, float, str, list, dict):
        return annotation  # type: ignore[return-value]
    origin = get_origin(annotation)
    if origin in (list, dict):
        return origin  # type: ignore[return-value]
    if origin is Literal and all(isinstance(a, str) for a in get_args(annotation)):
        return str
    if origin in (Union, UnionType) and type(None) not in get_args(annotation):
        return str
    raise TypeError(f"{annotation} has no KFP parameter type")


class PipelineParams(
    TuningChoices,
    FisherLabels,
    FisherRows,
    CalibGenerate,
    Allocation,
    ServingDtype,
    ProfileShape,
    Device,
    SampleShape,
    Sampling,
    Holdout,
    ConstraintMetric,
    OnnxExport,
    RunOptions,
):
    """Parameters shared by the pruning pipeline and the budget sweep: the pipelines' signatures are generated from
    these fields (:mod:`fastprune.pipelines.wiring`). A parameter that is not set keeps its default."""

    device_here: ClassVar[bool] = False  # the steps' machines have the device (checked by each step)

    @field_validator("task")
    @classmethod
    def _task(cls, value: str) -> str:
        return get_task(value).name

    @model_validator(mode="after")
    def _auto_allocation(self) -> PipelineParams:
        check_auto_allocation(self.allocation, self.holdout)
        check_calib_generate(self.calib_generate, self.task, self.max_length)
        return self

    def arguments(self) -> dict[str, Any]:
        """The pipeline's arguments: only the parameters that were set, each of its KFP type."""
        values = self.model_dump(exclude_unset=True)
        for name, value in values.items():
            if kfp_annotation(type(self).model_fields[name]) is str and not isinstance(value, str):
                values[name] = str(value)
        return values


class PruneRunParams(FisherSteps, Constraint, PipelineParams):
    """A run of the pruning pipeline (``pipelines/prune_pipeline.py``)."""


class SweepRunParams(Objective, PipelineParams):
    """A run of the budget sweep (``pipelines/sweep_pipeline.py``)."""

    constraints: list[float] = Field([0.4, 0.5, 0.6, 0.7], description="the budgets to try, each in (0, 1)")

    @field_validator("constraints")
    @classmethod
    def _constraints(cls, value: list[float]) -> list[float]:
        if not value:
            raise ConfigError("constraints must list at least one budget, e.g. [0.4, 0.5, 0.6]")
        checked = [check_constraint(c) for c in value]
        if len(set(checked)) != len(checked):
            raise ConfigError(f"constraints must be distinct, got {value}")
        return checked


def params_model(base: type[PipelineParams], inputs: dict[str, str]) -> type[PipelineParams]:
    """``base`` with an optional field (of the input's KFP type) for every pipeline input that ``base`` does not
    declare, so that a parameter added to a pipeline can be set at once (its range checked by its step)."""
    stale = sorted(set(base.model_fields) - set(inputs))
    if stale:
        raise ConfigError(f"{base.__name__} declares {stale}, which the pipeline does not take")
    extra: dict[str, Any] = {
        name: (KFP_TYPES.get(kind, str) | None, Field(None, description=f"({kind})"))
        for name, kind in inputs.items()
        if name not in base.model_fields
    }
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
        raise ConfigError(
            f"parameter file {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {e}"
        ) from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(
            f"parameter file {path} must hold a mapping of parameter names to values, got a {type(data).__name__}"
        )
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
