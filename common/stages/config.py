"""Pydantic models for the parameters shared by the CLI, the pipeline components and the library, composed of the
options declared once in :mod:`.options`."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field, field_validator, model_validator

from ..errors import ConfigError
from ..model.arch import NEURON_MULTIPLE
from .options import (
    Allocation,
    CalibGenerate,
    Columns,
    Constraint,
    ConstraintMetric,
    CostSeqLen,
    DevData,
    Device,
    EvalBatchSize,
    FisherLabels,
    FisherRows,
    FisherSteps,
    Holdout,
    LatencyTable,
    ModelSource,
    OnnxExport,
    Options,
    ProfileShape,
    Rearrange,
    RemoteCode,
    SampleShape,
    Sampling,
    ServingDtype,
    Task,
    TrainData,
    TuningChoices,
    TuningExtras,
    check_auto_allocation,
    check_calib_generate,
)


class SampleConfig(SampleShape, Holdout, Sampling):
    """How the pruning sample is drawn from the task's training data."""

    replace: bool = Field(True, description="draw with replacement, as the reference code does")


class FisherConfig(FisherLabels, FisherRows, CalibGenerate, FisherSteps):
    """How the mask gradients are measured."""


class TuningConfig(TuningChoices, TuningExtras):
    """Mask tuning (layer-wise least squares)."""


class PruneConfig(
    RemoteCode,
    Columns,
    EvalBatchSize,
    Rearrange,
    ServingDtype,
    LatencyTable,
    Device,
    Allocation,
    CostSeqLen,
    ConstraintMetric,
    Constraint,
    DevData,
    TrainData,
    Task,
    ModelSource,
):
    """Everything ``fastprune prune`` needs: the options of every stage (sample, fisher and tuning nested)."""

    sample: SampleConfig = SampleConfig()
    fisher: FisherConfig = FisherConfig()
    tuning: TuningConfig = TuningConfig()
    eval_stages: bool = Field(True, description="also evaluate the masked model after search and rearrangement")
    progress: bool = Field(True, description="show progress bars")

    @model_validator(mode="after")
    def _iterative_flops_only(self) -> PruneConfig:
        _check_iterative(self.fisher.fisher_steps, self.constraint_metric)
        _check_allocation(self.allocation, self.constraint_metric)
        check_auto_allocation(self.allocation, self.sample.holdout)
        check_calib_generate(self.fisher.calib_generate, self.task, self.sample.max_length)
        _check_latency_dtype(self.constraint_metric, self.serving_dtype, self.device)
        _check_latency_mode(self.constraint_metric, self.latency_mode, self.task)
        return self


def _check_latency_mode(metric: str, mode: str, task: str) -> None:
    """Decoding steps are timed for decoders only: a task whose models are not causal LMs is refused with
    ``latency_mode decode`` before any compute (the search stage checks the model's family itself)."""
    from ..tasks.spec import get_task

    if metric != "latency" or mode != "decode":
        return
    if get_task(task).auto_model_class().__name__ != "AutoModelForCausalLM":
        raise ConfigError(
            f"latency_mode 'decode' times one-token decoding over a key/value cache, which the encoder models of "
            f"task {task!r} do not do: use latency_mode 'prefill' (decode needs a decoder, task causal-lm)"
        )


def _check_allocation(allocation: str, metric: str) -> None:
    if allocation != "global" and metric != "flops":
        raise ConfigError(
            f"allocation {allocation!r} supports the FLOPs constraint only; use allocation 'global' "
            f"with metric {metric!r}"
        )


def _check_latency_dtype(metric: str, dtype: str, device: str) -> None:
    """A half-precision latency table is timed on a GPU only (the latency mode times the search's device)."""
    if metric != "latency" or dtype == "float32":
        return
    where = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    if where.type != "cuda":
        raise ConfigError(
            f"serving_dtype {dtype} is measured on CUDA devices only, not on {where}: use float32 "
            "there, or run the search on a GPU"
        )


def _check_iterative(steps: int, metric: str) -> None:
    if steps > 1 and metric != "flops":
        raise ConfigError(
            f"iterative Fisher (fisher_steps={steps}) works with the FLOPs constraint only, not "
            f"{metric!r}; use fisher_steps=1 with a latency constraint"
        )


# ----- the parameters of each pipeline stage (common/stages/run.py); flat, so the CLI and KFP can map them -----
class StageParams(Options):
    """The parameters of one stage."""


def _optional(value: str | None) -> str | None:
    """KFP passes unset string parameters as ``""``."""
    return value or None


class PrepareParams(StageParams, RemoteCode, DevData, Task, ModelSource):
    """Fetch the fine-tuned model and save it as a checked, self-contained folder (the dev data and the MLflow
    server, when given, are checked too: bad settings fail before any compute)."""

    tracking_uri: str | None = Field(None, description="MLflow tracking URI to check before any compute")

    _uri = field_validator("tracking_uri", "dev_data")(_optional)


class SampleParams(StageParams, Columns, SampleConfig, TrainData, Task):
    """Draw the pruning sample from the training data (batch size and max length travel with it)."""

    _label = field_validator("label_column")(_optional)


class FisherParams(FisherConfig, Device, Constraint, ConstraintMetric, CostSeqLen, StageParams):
    """With ``fisher_steps > 1`` the Fisher pass depends on the budget: ``constraint`` (and the search's
    ``constraint_metric`` and ``seq_len``) must be those of the search stage."""

    progress: bool = Field(False, description="show progress bars")

    @model_validator(mode="after")
    def _constraint_for_steps(self) -> FisherParams:
        _check_iterative(self.fisher_steps, self.constraint_metric)
        if self.fisher_steps > 1 and "constraint" not in self.model_fields_set:
            raise ConfigError(f"iterative Fisher (fisher_steps={self.fisher_steps}) needs the search's constraint")
        return self


class SearchParams(
    Constraint, ConstraintMetric, CostSeqLen, Device, LatencyTable, ServingDtype, Allocation, StageParams
):
    """Search the masks within the budget."""

    @model_validator(mode="after")
    def _consistent(self) -> SearchParams:
        _check_allocation(self.allocation, self.constraint_metric)
        _check_latency_dtype(self.constraint_metric, self.serving_dtype, self.device)
        return self


class RearrangeParams(Rearrange, StageParams):
    """Rearrange the masks with the block-diagonal Fisher."""


class TuneParams(TuningConfig, Device, StageParams):
    """Tune the masks by layer-wise least squares."""

    progress: bool = Field(False, description="show progress bars")


class ExportParams(OnnxExport, StageParams):
    neuron_multiple: int = Field(
        NEURON_MULTIPLE,
        ge=1,
        description="pad each layer's FFN with zero neurons to a multiple of this (fast fp16 "
        "kernels on GPUs need multiples of 8); 1: no padding. Exact: the outputs do not change",
    )


class OnnxParams(StageParams):
    """The ONNX folder of an exported model (``fastprune onnx``)."""

    quantize: Literal["none", "int8"] = Field(
        "none", description="none: fp32; int8: onnxruntime dynamic quantization (per channel)"
    )
    opset: int = Field(17, ge=14, description="ONNX opset")


class EvaluateParams(StageParams, Columns, Device, EvalBatchSize):
    dev_data: str = Field(description="dev data: s3:// URI, local file or hub dataset id")

    renamed: ClassVar[dict[str, str]] = {"batch_size": "eval_batch_size"}
    _label = field_validator("label_column")(_optional)


class ProfileParams(Device, ProfileShape, ServingDtype, StageParams):
    repeats: int = Field(20, gt=0, description="timed repeats per model")
    warmup: int = Field(5, ge=0, description="untimed warm-up repeats per model")

    renamed: ClassVar[dict[str, str]] = {"batch_size": "profile_batch_size", "seq_len": "profile_seq_len"}


class RegisterParams(StageParams):
    """Register the pruned model in MLflow; the alias moves only when the accuracy gate passes."""

    model_name: str = Field("fastprune-pruned", min_length=1, description="the registered MLflow model")
    max_drop: float = Field(1.0, description="largest allowed drop of the task metric, in metric points")
    alias: str = Field("pruned-candidate", min_length=1, description="moved to the new version if the gate passes")
    tracking_uri: str | None = Field(None, description="MLflow tracking URI (default: MLFLOW_TRACKING_URI)")
    experiment: str = Field("fastprune", description="the MLflow experiment of the run")
    pipeline_run: str | None = Field(None, description="the pipeline run that made the model (a tag)")

    _uri = field_validator("tracking_uri", "pipeline_run")(_optional)
