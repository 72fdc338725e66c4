"""Pydantic models for the parameters shared by the CLI, the pipeline components and the library."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .arch import NEURON_MULTIPLE
from .errors import ConfigError
from .search import check_constraint
from .tasks import get_task


def _task_name(value: str) -> str:
    return get_task(value).name


def _device_here(value: str) -> str:
    """An unknown or unavailable device is refused before anything else, naming the devices available here."""
    from .models import check_device

    return check_device(value)


class SampleConfig(BaseModel):
    """How the pruning sample is drawn from the task's training data."""

    model_config = ConfigDict(extra="forbid")

    num_samples: int = Field(2048, gt=0, description="examples drawn from the training data")
    seed: int = Field(0, ge=0)
    replace: bool = Field(True, description="draw with replacement, as the reference code does")
    batch_size: int | None = Field(None, gt=0, description="mini-batch size (task default: 32 GLUE, 12 SQuAD)")
    max_length: int | None = Field(None, gt=0, description="max tokens (task default: 128, 64 SST-2, 384 SQuAD)")
    holdout: float = Field(
        0.0, ge=0, lt=0.5, description="fraction of the sample held out to validate rearrangement and tuning (0: off)"
    )


class FisherConfig(BaseModel):
    """How the mask gradients are measured."""

    model_config = ConfigDict(extra="forbid")

    labels: Literal["data", "model"] = Field(
        "data", description="data: the sample's labels (the paper); model: labels drawn from the model, y ~ p(y|x)"
    )
    steps: int = Field(1, ge=1, le=10, description="iterative Fisher: reach the budget in K steps (1: one-shot)")


class TuningConfig(BaseModel):
    """Mask tuning (layer-wise least squares)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    teacher: Literal["schedule", "dense"] | None = Field(
        None, description="schedule: the model masked at sqrt(constraint) (the paper); dense: the original "
        "(default: schedule for scales, dense for refit and reselect)"
    )
    policy: Literal["stop", "ridge"] = Field(
        "stop", description="on an out-of-range scale: stop tuning (the paper) or retry with a stronger ridge"
    )
    mode: Literal["scales", "refit", "reselect"] = Field(
        "refit", description="scales: one least-squares scale per kept unit (the paper); refit: refit the kept "
        "output-projection weights and biases by least squares (K-prune style); reselect: sublayer by sublayer, "
        "re-choose the kept units (same per-layer counts) by least-squares error, then refit"
    )
    ridge: float | Literal["auto"] | None = Field(
        None, description="damping, relative to the mean diagonal of the normal equations (default: 1e-4 for scales, "
        "1e-2 for refit); 'auto' (refit and reselect): each block's, by two-fold cross-validation of its "
        "reconstruction error"
    )

    @field_validator("ridge")
    @classmethod
    def _ridge(cls, value: float | str | None) -> float | str | None:
        if isinstance(value, float) and value < 0:
            raise ConfigError(f"tuning ridge must be >= 0 or 'auto', got {value}")
        return value

    @model_validator(mode="after")
    def _auto_ridge_refits(self) -> TuningConfig:
        if self.ridge == "auto" and self.mode == "scales":
            raise ConfigError("tuning ridge 'auto' (cross-validated) needs mode refit or reselect, not scales")
        return self
    scale_bound: float = Field(10.0, gt=0)
    num_samples: int | None = Field(512, gt=0, description="examples of the sample used for tuning (None: all)")
    resplit: bool = Field(True, description="before tuning each layer, re-split the budget left across it and the "
                          "layers above by a search on Fisher importance re-measured on the pruned, tuned layers "
                          "below (K-prune style; about (L-1)/2 Fisher passes over the tuning examples in all)")


class PruneConfig(BaseModel):
    """Everything ``fastprune prune`` needs."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="fine-tuned model folder (or hub id when a hub is reachable)")
    task: str
    train_file: str = Field(description="training data: file path or hub dataset id")
    dev_file: str | None = Field(None, description="dev data for evaluation (None: no evaluation)")
    constraint: float = Field(description="fraction of FLOPs (or latency) to keep, in (0, 1)")
    metric: Literal["flops", "latency"] = "flops"
    seq_len: float | None = Field(None, gt=0, description="sequence length of the cost model (default: sample mean)")
    sample: SampleConfig = SampleConfig()
    fisher: FisherConfig = FisherConfig()
    tuning: TuningConfig = TuningConfig()
    rearrange: bool = True
    device: str = "auto"
    _device = field_validator("device")(_device_here)
    eval_batch_size: int = Field(64, gt=0)
    eval_stages: bool = Field(True, description="also evaluate the masked model after search and rearrangement")
    latency_batch_size: int = Field(32, gt=0, description="batch size of the latency table (latency mode)")
    latency_seq_len: int = Field(128, gt=0, description="sequence length of the latency table (latency mode)")
    latency_dtype: Literal["float32", "float16", "bfloat16"] = Field(
        "float32", description="dtype of the latency table (latency mode): the one the model will serve in")
    allocation: Literal["global", "block", "uniform"] = Field(
        "global", description="how the search splits the budget between layers (see SearchParams)")
    text_columns: list[str] | None = None
    label_column: str | None = None
    trust_remote_code: bool = False
    progress: bool = True

    _constraint = field_validator("constraint")(check_constraint)
    _task = field_validator("task")(_task_name)

    @model_validator(mode="after")
    def _iterative_flops_only(self) -> PruneConfig:
        _check_iterative(self.fisher.steps, self.metric)
        _check_allocation(self.allocation, self.metric)
        _check_latency_dtype(self.metric, self.latency_dtype, self.device)
        return self


def _check_allocation(allocation: str, metric: str) -> None:
    if allocation != "global" and metric != "flops":
        raise ConfigError(f"allocation {allocation!r} supports the FLOPs constraint only; use allocation 'global' "
                          f"with metric {metric!r}")


def _check_latency_dtype(metric: str, dtype: str, device: str) -> None:
    """A half-precision latency table is timed on a GPU only (the latency mode times the search's device)."""
    if metric != "latency" or dtype == "float32":
        return
    where = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    if where.type != "cuda":
        raise ConfigError(f"latency_dtype {dtype} is measured on CUDA devices only, not on {where}: use float32 "
                          "there, or run the search on a GPU")


def _check_iterative(steps: int, metric: str) -> None:
    if steps > 1 and metric != "flops":
        raise ConfigError(f"iterative Fisher (steps={steps}) works with the FLOPs constraint only, not {metric!r}; "
                          "use steps=1 with a latency constraint")  # fmt: skip


# ----- the parameters of each pipeline stage (common/stages.py); flat, so the CLI and KFP can map them -----
class StageParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _optional(value: str | None) -> str | None:
    """KFP passes unset string parameters as ``""``."""
    return value or None


class PrepareParams(StageParams):
    """Fetch the fine-tuned model and save it as a checked, self-contained folder."""

    source: str = Field(description="the fine-tuned model: s3:// URI, local folder or hub id")
    task: str
    trust_remote_code: bool = False
    tracking_uri: str | None = Field(None, description="MLflow tracking URI to check before any compute")
    dev_file: str | None = Field(None, description="dev data to check before any compute (read, columns found)")

    _task = field_validator("task")(_task_name)
    _uri = field_validator("tracking_uri", "dev_file")(_optional)


class SampleParams(SampleConfig, StageParams):
    """Draw the pruning sample from the training data (batch size and max length travel with it)."""

    train_file: str = Field(description="training data: s3:// URI, local file or hub dataset id")
    task: str
    text_columns: list[str] | None = None
    label_column: str | None = None

    _task = field_validator("task")(_task_name)
    _label = field_validator("label_column")(_optional)


class FisherParams(FisherConfig, StageParams):
    """With ``steps > 1`` the Fisher pass depends on the budget: ``constraint`` (and the search's ``metric`` and
    ``seq_len``) must be those of the search stage."""

    device: str = "auto"
    _device = field_validator("device")(_device_here)
    progress: bool = False
    constraint: float | None = Field(None, description="the search's constraint (needed when steps > 1)")
    metric: Literal["flops", "latency"] = "flops"
    seq_len: float | None = Field(None, gt=0, description="the search's cost-model sequence length")

    @model_validator(mode="after")
    def _constraint_for_steps(self) -> FisherParams:
        _check_iterative(self.steps, self.metric)
        if self.steps > 1:
            if self.constraint is None:
                raise ConfigError(f"iterative Fisher (steps={self.steps}) needs the search's constraint")
            check_constraint(self.constraint)
        return self


class SearchParams(StageParams):
    constraint: float = Field(description="fraction of FLOPs (or latency) to keep, in (0, 1)")
    metric: Literal["flops", "latency"] = "flops"
    seq_len: float | None = Field(None, gt=0, description="sequence length of the cost model (default: sample mean)")
    device: str = Field("auto", description="device of the latency table (latency mode)")
    _device = field_validator("device")(_device_here)
    latency_batch_size: int = Field(32, gt=0)
    latency_seq_len: int = Field(128, gt=0)
    latency_dtype: Literal["float32", "float16", "bfloat16"] = Field(
        "float32", description="the dtype the model will serve in, which the latency table measures (latency mode; "
        "float16 and bfloat16 on CUDA only)")
    allocation: Literal["global", "block", "uniform"] = Field(
        "global", description="global: rank all units by diagonal Fisher importance (the paper); uniform: the same "
        "counts in every layer; block: split the budget between layers by the block-diagonal Fisher cost of pruning "
        "within each layer. The tuning's budget re-split follows the same choice (FLOPs constraint only)")

    _constraint = field_validator("constraint")(check_constraint)

    @model_validator(mode="after")
    def _consistent(self) -> SearchParams:
        _check_allocation(self.allocation, self.metric)
        _check_latency_dtype(self.metric, self.latency_dtype, self.device)
        return self


class RearrangeParams(StageParams):
    enabled: bool = True


class TuneParams(TuningConfig, StageParams):
    device: str = "auto"
    _device = field_validator("device")(_device_here)
    progress: bool = False


class ExportParams(StageParams):
    neuron_multiple: int = Field(
        NEURON_MULTIPLE, ge=1, description="pad each layer's FFN with zero neurons to a multiple of this (fast fp16 "
        "kernels on GPUs need multiples of 8); 1: no padding. Exact: the outputs do not change")


class EvaluateParams(StageParams):
    dev_file: str = Field(description="dev data: s3:// URI, local file or hub dataset id")
    batch_size: int = Field(64, gt=0)
    device: str = "auto"
    _device = field_validator("device")(_device_here)
    text_columns: list[str] | None = None
    label_column: str | None = None

    _label = field_validator("label_column")(_optional)


class ProfileParams(StageParams):
    device: str = "auto"
    _device = field_validator("device")(_device_here)
    batch_size: int = Field(32, gt=0)
    seq_len: int = Field(128, gt=0)
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    repeats: int = Field(20, gt=0)
    warmup: int = Field(5, ge=0)


class RegisterParams(StageParams):
    """Register the pruned model in MLflow; the alias moves only when the accuracy gate passes."""

    model_name: str = Field("fastprune-pruned", min_length=1)
    max_drop: float = Field(1.0, description="largest allowed drop of the task metric, in metric points")
    alias: str = Field("pruned-candidate", min_length=1)
    tracking_uri: str | None = Field(None, description="MLflow tracking URI (default: MLFLOW_TRACKING_URI)")
    experiment: str = "fastprune"
    pipeline_run: str | None = Field(None, description="the pipeline run that made the model (a tag)")

    _uri = field_validator("tracking_uri", "pipeline_run")(_optional)
