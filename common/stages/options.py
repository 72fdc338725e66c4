"""Every option of the method, declared once: its name, type, default and description.

Each option is a field of one small pydantic mixin below. The parameter models of the library
(:class:`~fastprune.common.stages.config.PruneConfig`, the stages' ``*Params``) and of the pipelines
(:mod:`fastprune.pipelines.params`) are built by inheriting the mixins they take, and every other surface derives
from those models: the flags of ``fastprune prune``, ``step``, ``run`` and ``sweep`` are generated from their fields
(:mod:`fastprune.flags`), the pipelines' signatures too (:mod:`fastprune.pipelines.wiring`), and a test checks the
literal signatures of the KFP components against the fields (name, type, default, documented in ``Args:``).

One name per option on every surface. Names an option had before are listed in :data:`RENAMED`: they are still
accepted, with a warning (as keys of a parameter file or a stage's parameters, and as command-line flags).
Where a KFP component cannot carry ``None``, the option's default is an explicit sentinel value (``"by-mode"``).
"""

from __future__ import annotations

import warnings
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from ..errors import ConfigError
from ..method.search import check_constraint
from ..tasks.spec import get_task

Dtype = Literal["float32", "float16", "bfloat16"]
BY_MODE: Final = "by-mode"
"""The sentinel of the tuning options whose default depends on the tuning mode."""
BY_TASK: Final = "by-task"
"""The sentinel of the options whose default is the task's."""


RENAMED: dict[str, str] = {
    "metric": "constraint_metric",
    "latency_dtype": "serving_dtype",
    "dtype": "serving_dtype",
    "source": "model",
    "search_allocation": "allocation",
    "steps": "fisher_steps",
    "labels": "fisher_labels",
    "mode": "tuning_mode",
    "teacher": "tuning_teacher",
    "ridge": "tuning_ridge",
    "policy": "tuning_policy",
    "resplit": "tuning_resplit",
    "scale_bound": "tuning_scale_bound",
    "train_file": "train_data",
    "dev_file": "dev_data",
}
"""Old names of the options (old -> new), accepted by every model that has the new one (with a warning); an old
name that meant different options in different places is declared by the mixin concerned (``renamed``)."""


class Options(BaseModel):
    """The base of every parameter model: unknown keys are refused; the old names in ``renamed`` (old -> new) are
    accepted with a warning."""

    model_config = ConfigDict(extra="forbid")
    renamed: ClassVar[dict[str, str]] = RENAMED

    @classmethod
    def renames(cls) -> dict[str, str]:
        """The old names this model still accepts (old -> new), its mixins' included."""
        merged: dict[str, str] = {}
        for klass in reversed(cls.__mro__):
            merged.update(klass.__dict__.get("renamed", {}))
        return {old: new for old, new in merged.items() if new in cls.model_fields}

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        renames = cls.renames()
        old = [key for key in data if key in renames and key not in cls.model_fields]
        if not old:
            return data
        data = dict(data)
        for key in old:
            new = renames[key]
            if new in data:
                raise ConfigError(f"{key!r} is the old name of {new!r}: give only {new!r}")
            warnings.warn(f"{cls.__name__}: {key!r} is deprecated, use {new!r}", FutureWarning, stacklevel=2)
            data[new] = data.pop(key)
        return data


# ----- the budget ----------------------------------------------------------------------------------------------
class Constraint(Options):
    constraint: Annotated[float, AfterValidator(check_constraint)] = Field(
        0.6, description="fraction of the FLOPs (or latency) to keep, in (0, 1)"
    )


class ConstraintMetric(Options):
    constraint_metric: Literal["flops", "latency"] = Field(
        "flops",
        description="what the constraint limits: flops, or latency (a table fitted to timings on the search's device)",
    )


class CostSeqLen(Options):
    seq_len: float | None = Field(
        None, gt=0, description="sequence length of the FLOPs cost model (default: the sample's mean length)"
    )


class Allocation(Options):
    allocation: Literal["global", "block", "uniform", "auto"] = Field(
        "global",
        description="how the search splits the budget between layers: global (the paper: all units "
        "ranked by diagonal Fisher importance), block (by the block-diagonal Fisher cost of pruning within each "
        "layer), uniform (the same counts in every layer) or auto (of global and uniform, the masks of lowest loss on "
        "the sample's held-out part: needs --holdout); the tuning's budget re-split follows it (FLOPs only)",
    )


# ----- where and how it is measured --------------------------------------------------------------------------
class Device(Options):
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1, ...")
    device_here: ClassVar[bool] = True
    """Whether this machine must have the device (a cluster run's parameters: only the spelling is checked here)."""

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        """An unknown or unavailable device is refused before anything else, naming the devices available here."""
        from ..model.loading import check_device

        return check_device(value, available=cls.device_here)


class ServingDtype(Options):
    serving_dtype: Dtype = Field(
        "float32",
        description="the dtype the model will serve in: the latency table of the search (latency "
        "constraint) and the profile measure it (float16 and bfloat16 on CUDA devices only)",
    )


class LatencyTable(Options):
    latency_mode: Literal["prefill", "decode"] = Field(
        "prefill",
        description="what the latency table times (latency constraint): prefill (whole sequences; encoders always) "
        "or decode (one new token over a key/value cache of latency_seq_len tokens; decoders only)",
    )
    latency_batch_size: int = Field(
        32, gt=0, description="batch size the latency table is timed at (latency constraint)"
    )
    latency_seq_len: int = Field(
        128,
        gt=0,
        description="sequence length the latency table is timed at (latency constraint): the prefill's length, or "
        "the key/value cache length of a decoding step",
    )


class EvalBatchSize(Options):
    eval_batch_size: int = Field(64, gt=0, description="batch size of the evaluation")


class ProfileShape(Options):
    profile_batch_size: int = Field(32, gt=0, description="batch size the profile times both models at")
    profile_seq_len: int = Field(128, gt=0, description="sequence length the profile times both models at")


# ----- the sample ----------------------------------------------------------------------------------------------
class Sampling(Options):
    num_samples: int = Field(2048, gt=0, description="examples drawn from the training data")
    seed: int = Field(0, ge=0, description="seed of the sample (and of the labels drawn from the model)")


class Holdout(Options):
    holdout: float = Field(
        0.0,
        ge=0,
        lt=0.5,
        description="fraction of the sample held out to validate the stages by their loss on it: allocation auto, "
        "rearrangement and tuning are each kept only where they lower it (0: off)",
    )


def check_auto_allocation(allocation: str, holdout: float) -> None:
    """``allocation auto`` needs the sample's held-out part: refused before any compute without one."""
    if allocation == "auto" and not holdout:
        raise ConfigError(
            "allocation 'auto' compares the splits on the held-out part of the sample, and holdout is 0: "
            "set holdout above 0 (e.g. --holdout 0.2), or choose allocation global, block or uniform"
        )


class SampleShape(Options):
    """How the sample's examples are cut and batched (0: the task's default)."""

    batch_size: int = Field(0, ge=0, description="mini-batch size (0: the task's: 32, 12 SQuAD, 4 causal-lm)")
    max_length: int = Field(
        0,
        ge=0,
        description="max tokens of an example (0: the task's: 128, 64 SST-2, 384 SQuAD, 512 causal-lm, whose "
        "calibration windows are this long)",
    )

    @field_validator("batch_size", "max_length", mode="before")
    @classmethod
    def _unset(cls, value: Any) -> Any:
        return 0 if value is None else value  # None: the task's default, as parameter files written before said


# ----- Fisher ----------------------------------------------------------------------------------------------------
class FisherLabels(Options):
    fisher_labels: Literal["data", "model"] = Field(
        "data",
        description="labels of the Fisher loss: data (the sample's, the paper) or model (drawn from the "
        "model's predictions, y ~ p(y|x): the true Fisher)",
    )


class FisherRows(Options):
    fisher_rows: Literal["by-task", "example", "token"] = Field(
        BY_TASK,
        description="one gradient row per example (the paper) or per example and token position (each position's "
        "share of its example's gradient: many more rows for the rearrangement and the block allocation, and the "
        "importance sums the positions' squares); by-task: token for causal LMs (few long calibration windows), "
        "else example",
    )
    fisher_max_rows: int = Field(
        0,
        ge=0,
        description="gradient rows the Fisher pass keeps for rearrangement and the block allocation (0: as many as "
        "fit in 1/8 of the machine's memory); the examples beyond are folded into them (a count-sketch: their Gram "
        "matrix stays an unbiased estimate), the importance every search ranks by stays exact",
    )
    fisher_samples: int = Field(
        0,
        ge=0,
        description="examples the Fisher pass measures: the sample's first ones (0: all); the tuning still reads "
        "every example, so a larger sample steadies the refit without a longer Fisher pass",
    )


class CalibGenerate(Options):
    calib_generate: int = Field(
        0,
        ge=0,
        description="self-generated calibration for causal LMs: each window keeps its first N tokens of the "
        "training text and the rest is sampled from the dense model (nucleus 0.95, seeded); the Fisher pass and "
        "the tuning both read these windows (0: the text as it is)",
    )


def check_calib_generate(prompt: int, task: str, max_length: int = 0) -> None:
    """Self-generated calibration needs a task whose model continues text, and a prompt shorter than a window:
    refused before any compute otherwise."""
    if not prompt:
        return
    spec = get_task(task)
    if not spec.generates:
        raise ConfigError(
            f"calib_generate {prompt}: only a model that continues text can generate its calibration; task "
            f"{task!r} does not (use it with task causal-lm, or leave calib_generate at 0)"
        )
    length = max_length or spec.max_length
    if prompt >= length:
        raise ConfigError(
            f"calib_generate {prompt}: the prompt must be shorter than a calibration window ({length} tokens, "
            f"max_length); give 1 to {length - 1}"
        )


class FisherSteps(Options):
    fisher_steps: int = Field(
        1,
        ge=1,
        le=10,
        description="iterative Fisher: reach the budget in K steps, "
        "re-measuring importance with the units pruned so far removed (1: one-shot; FLOPs "
        "constraint only)",
    )


# ----- mask tuning -----------------------------------------------------------------------------------------------
class TuningChoices(Options):
    """The tuning options the pipelines expose."""

    tuning_mode: Literal["scales", "refit", "reselect"] = Field(
        "refit",
        description="scales: one least-squares scale per kept unit (the paper); refit: refit the kept "
        "output-projection weights and biases by least squares (K-prune style); reselect: sublayer by sublayer, "
        "re-choose the kept units (same per-layer counts) by least-squares error, then refit",
    )
    tuning_teacher: Literal["by-mode", "schedule", "dense"] = Field(
        BY_MODE,
        description="schedule: the model masked at sqrt(constraint) (the paper); dense: the original; "
        "by-mode: schedule for scales, dense for refit and reselect",
    )
    tuning_ridge: float | Literal["by-mode", "auto"] = Field(
        BY_MODE,
        description="damping of the least squares, relative to the mean diagonal of the normal equations; "
        "by-mode: 1e-4 for scales, 1e-2 for refit and reselect (1 for a causal LM, auto for embedding); "
        "auto (refit and reselect): each block's, by two-fold cross-validation of its reconstruction error",
    )
    tuning_inputs: float | Literal["off", "by-task"] = Field(
        BY_TASK,
        description="refit and reselect: also refit each block's input projections (query/key/value, the MLP's "
        "inputs) so that on the pruned model's hidden states they give what they give on the dense model's; the "
        "value is that least squares' ridge, relative to the mean diagonal; off: only the output projections; "
        "by-task: 1 for a causal LM, else off",
    )
    tuning_resplit: bool = Field(
        True,
        description="before tuning each layer, re-split the budget left across it and the layers above by a "
        "search on Fisher importance re-measured on the pruned, tuned layers below (K-prune style; about (L-1)/2 "
        "Fisher passes over the tuning examples)",
    )

    @model_validator(mode="after")
    def _ridge(self) -> TuningChoices:
        if isinstance(self.tuning_ridge, float) and self.tuning_ridge < 0:
            raise ConfigError(f"tuning ridge must be >= 0, 'auto' or 'by-mode', got {self.tuning_ridge}")
        if self.tuning_ridge == "auto" and self.tuning_mode == "scales":
            raise ConfigError("tuning ridge 'auto' (cross-validated) needs mode refit or reselect, not scales")
        if isinstance(self.tuning_inputs, float) and self.tuning_inputs < 0:
            raise ConfigError(f"tuning inputs must be a ridge >= 0, 'off' or 'by-task', got {self.tuning_inputs}")
        if isinstance(self.tuning_inputs, float) and self.tuning_mode == "scales":
            raise ConfigError("tuning inputs (the input projections' refit) needs mode refit or reselect, not scales")
        return self

    def input_ridge(self, task_ridge: float | None) -> float | None:
        """The input projections' ridge for :func:`~fastprune.common.method.tuning.tune_masks` (None: not refit);
        ``task_ridge``: the task's default (``Task.input_ridge``), taken by ``by-task`` in the refit modes."""
        if self.tuning_inputs == BY_TASK:
            return None if self.tuning_mode == "scales" else task_ridge
        return None if self.tuning_inputs == "off" else self.tuning_inputs

    def ridge(self) -> float | Literal["auto"] | None:
        """The ridge for :func:`~fastprune.common.method.tuning.tune_masks` (None: the mode's default)."""
        return None if self.tuning_ridge == BY_MODE else self.tuning_ridge


class TuningExtras(Options):
    """The tuning options of the library and ``fastprune prune`` / ``step tune`` only."""

    tune: bool = Field(True, description="tune the masks (layer-wise least squares); off: keep the searched masks")
    tuning_policy: Literal["stop", "ridge"] = Field(
        "stop", description="on an out-of-range scale: stop tuning (the paper) or retry with a stronger ridge"
    )
    tuning_scale_bound: float = Field(10.0, gt=0, description="largest tuned scale accepted")
    tuning_samples: int = Field(512, ge=0, description="examples of the sample used for tuning (0: all)")

    renamed: ClassVar[dict[str, str]] = {"enabled": "tune", "tuning": "tune", "num_samples": "tuning_samples"}


class Rearrange(Options):
    rearrange: bool = Field(
        True, description="re-choose the pruned units with the block-diagonal Fisher (per-layer counts unchanged)"
    )
    rearrange_shrink: float | Literal["by-task", "auto"] = Field(
        BY_TASK,
        description="how far the rearrangement distrusts the gradients' sampled correlations: 0 (the paper) to 1 "
        "(keep the search's units); auto: Ledoit-Wolf shrinkage toward the diagonal Fisher, per layer and unit "
        "kind; by-task: auto for causal LMs (few long calibration windows, one gradient row each), else 0",
    )

    @field_validator("rearrange_shrink")
    @classmethod
    def _shrink(cls, value: float | str) -> float | str:
        if isinstance(value, float) and not 0.0 <= value <= 1.0:
            raise ConfigError(f"rearrange shrink must be between 0 and 1, 'auto' or 'by-task', got {value}")
        return value

    renamed: ClassVar[dict[str, str]] = {"enabled": "rearrange"}


# ----- where the model and data come from ------------------------------------------------------------------
def _task_name(value: str) -> str:
    return get_task(value).name


class ModelSource(Options):
    model: str = Field(description="the fine-tuned model: s3:// URI, models:/NAME/VERSION, local folder or hub id")


class Task(Options):
    task: Annotated[str, AfterValidator(_task_name)] = Field(
        description="sst2, mrpc, stsb, rte, qnli, mnli, qqp, cola, squad, squad_v2, causal-lm, embedding"
    )


class TrainData(Options):
    train_data: str = Field(
        description="training data (tsv/csv/json/jsonl/parquet; txt for embedding and causal-lm, or a folder of .txt "
        "for causal-lm; s3:// URI) or hub dataset id"
    )


class DevData(Options):
    dev_data: str | None = Field(
        None, description="dev data (tsv/csv/json/jsonl/parquet; s3:// URI) or hub dataset id (none: not evaluated)"
    )


class Columns(Options):
    text_columns: list[str] | None = Field(None, description="the text columns of the data (default: by task)")
    label_column: str | None = Field(None, description="the label column of the data (default: by task)")


class RemoteCode(Options):
    trust_remote_code: bool = Field(False, description="run the model repository's own code (off: refused)")
    allow_pickle: bool = Field(
        False,
        description="also load pickle weights (pytorch_model.bin, *.pt, *.pth) when the "
        "model has no safetensors: only for files you trust (off: refused)",
    )


# ----- a pipeline run: its inputs, the registration and the cluster ----------------------------------------------
class RunOptions(Options):
    """The run parameters of both pipelines (listed first in their signatures: mixins come last-first)."""

    model: str = Field("textattack/bert-base-uncased-SST-2", description=ModelSource.model_fields["model"].description)
    task: str = Field("sst2", description=Task.model_fields["task"].description)
    train_data: str = Field("sst2", description="training data: s3:// URI, file or hub dataset id")
    dev_data: str = Field("sst2", description="dev data: s3:// URI, file or hub dataset id")
    registered_model_name: str = Field(
        "fastprune-pruned", min_length=1, description="MLflow model the result registers as"
    )
    max_metric_drop: float = Field(1.0, description="the accuracy gate: largest drop in metric points")
    alias: str = Field(
        "pruned-candidate", min_length=1, description="MLflow alias moved to a version that passes the gate"
    )
    mlflow_uri: str = Field("", description="MLflow tracking URI the steps use (empty: their MLFLOW_TRACKING_URI)")
    mlflow_experiment: str = Field("fastprune", description="the MLflow experiment of the registration run")
    accelerator_type: str = Field("nvidia.com/gpu", description="accelerator the GPU steps request")
    gpu_limit: int = Field(1, ge=0, description="accelerators per GPU step (0: CPU only)")
    s3_secret: str = Field("fastprune-s3", description="Kubernetes secret with the S3 credentials")


class OnnxExport(Options):
    onnx: Literal["none", "fp32", "int8"] = Field(
        "none",
        description="also write the exported model's ONNX folder (model.onnx, config, tokenizer; its onnx/ "
        "sub-folder), evaluated, profiled and registered with it: fp32, or int8 (onnxruntime dynamic quantization, "
        "per channel)",
    )


class Objective(Options):
    objective: Literal["smallest", "fastest"] = Field(
        "smallest", description="which passing candidate to register: fewest parameters, or lowest measured latency"
    )
