"""Pydantic models for the parameters shared by the CLI, the pipeline components and the library."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .search import check_constraint
from .tasks import get_task


class SampleConfig(BaseModel):
    """How the pruning sample is drawn from the task's training data."""

    model_config = ConfigDict(extra="forbid")

    num_samples: int = Field(2048, gt=0, description="examples drawn from the training data")
    seed: int = Field(0, ge=0)
    replace: bool = Field(True, description="draw with replacement, as the reference code does")
    batch_size: int | None = Field(None, gt=0, description="mini-batch size (task default: 32 GLUE, 12 SQuAD)")
    max_length: int | None = Field(None, gt=0, description="max tokens (task default: 128, 64 SST-2, 384 SQuAD)")


class TuningConfig(BaseModel):
    """Mask tuning (layer-wise least squares)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    teacher: Literal["schedule", "dense"] = Field(
        "schedule", description="schedule: the model masked at sqrt(constraint) (the paper); dense: the original"
    )
    policy: Literal["stop", "ridge"] = Field(
        "stop", description="on an out-of-range scale: stop tuning (the paper) or retry with a stronger ridge"
    )
    ridge: float = Field(1e-4, ge=0)
    scale_bound: float = Field(10.0, gt=0)


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
    tuning: TuningConfig = TuningConfig()
    rearrange: bool = True
    device: str = "auto"
    eval_batch_size: int = Field(64, gt=0)
    eval_stages: bool = Field(True, description="also evaluate the masked model after search and rearrangement")
    latency_batch_size: int = Field(32, gt=0, description="batch size of the latency table (latency mode)")
    latency_seq_len: int = Field(128, gt=0, description="sequence length of the latency table (latency mode)")
    text_columns: list[str] | None = None
    label_column: str | None = None
    trust_remote_code: bool = False
    progress: bool = True

    @field_validator("constraint")
    @classmethod
    def _constraint(cls, value: float) -> float:
        return check_constraint(value)

    @field_validator("task")
    @classmethod
    def _task(cls, value: str) -> str:
        return get_task(value).name
