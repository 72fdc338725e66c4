"""The method as stages over folders: prepare -> sample -> fisher -> search -> rearrange -> tune -> export ->
evaluate / profile -> register.

Each stage reads the folders of earlier stages and writes one folder of plain files (safetensors, parquet,
a model folder) plus ``stage.json`` (its parameters, results and seconds) and ``MANIFEST.json`` (sha256 of
every file). :func:`run_stage` verifies every input's manifest before use and builds the output beside its
destination, renaming it into place only when complete, so a corrupted or partial folder is never accepted.
``prune()`` (the one-shot CLI), ``fastprune step`` and the pipeline components all call :func:`run_stage`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import BaseModel
from torch import nn
from transformers import AutoConfig

from .allocate import search_by
from .arch import ModelDims, adapter_for
from .config import (
    EvaluateParams,
    ExportParams,
    FisherParams,
    PrepareParams,
    ProfileParams,
    RearrangeParams,
    RegisterParams,
    SampleParams,
    SearchParams,
    TuneParams,
)
from .errors import ConfigError, IntegrityError
from .export import export_pruned, parameter_count, save_pruned
from .fisher import MaskGradients
from .iterative import iterative_fisher
from .lineage import inherited_lineage, own_lineage
from .masks import Masks, dense_macs, flops_ratio, pruning_applied, units_macs
from .models import load_model, resolve_device
from .outputs import staging
from .rearrange import rearrange_masks
from .resplit import BudgetResplit
from .sanity import budget_warnings, chance_warning, sampling_warning
from .storage import _sha256, fetch, is_remote, verify_manifest, write_manifest
from .tasks import TaskSpec, get_task
from .tuning import DEFAULT_TEACHER, tune_masks
from .validation import StageValidator

# The data and evaluation modules (datasets, scipy) are imported by the stages that use them: every pipeline step
# is a fresh process, and these imports cost seconds.

STAGE_FILE = "stage.json"
SAMPLE_FILE = "sample.parquet"
HOLDOUT_FILE = "holdout.parquet"
GRADS_FILE = "grads.safetensors"
MASKS_FILE = "masks.safetensors"
LATENCY_TABLE_FILE = "latency_table.json"
PROFILE_FILE = "profile.md"


# ----- reading stage folders -----------------------------------------------------------------------
def stage_info(folder: str | Path) -> dict:
    """The ``stage.json`` of a stage's output folder."""
    path = Path(folder) / STAGE_FILE
    if not path.is_file():
        raise IntegrityError(f"{folder} has no {STAGE_FILE}: not the output of a fastprune stage")
    return json.loads(path.read_text())


def numeric_results(info: dict) -> dict[str, float]:
    """The numbers among a stage's results (for metrics), without its seconds."""
    return {k: v for k, v in info.items() if isinstance(v, int | float) and not isinstance(v, bool) and k != "seconds"}


def _task(folder: Path) -> TaskSpec:
    return get_task(stage_info(folder)["task"])


def _sources_cache() -> Path:
    from ..defaults import cache_dir

    return cache_dir() / "downloads"


def resolve_source(source: str, tracking_uri: str | None = None) -> tuple[str | Path, str]:
    """Where to read ``source`` from (a local path, downloaded, checked and cached for an ``s3://`` URI or a
    registered model ``models:/NAME/VERSION`` of the MLflow at ``tracking_uri``; a hub id as it is) and how to
    name it (the URI, ``models:/NAME/VERSION`` with an alias resolved, an absolute path or the hub id)."""
    if source.startswith("models:/"):
        from .registry import fetch_registered_model

        return fetch_registered_model(source, _sources_cache(), tracking_uri)
    path = Path(source).expanduser()
    if is_remote(source):
        return fetch(source, _sources_cache()), source
    if source.startswith(("/", ".", "~")) or source.count("/") > 1 or path.exists():
        local = fetch(source, _sources_cache())
        return local, str(local.resolve())
    return source, source


def _sample_batches(sample: Path, tokenizer, task: TaskSpec, file: str = SAMPLE_FILE) -> list[dict]:
    """The pruning sample (or its held-out part) of a sample folder, tokenized and batched as its stage says."""
    import pyarrow.parquet as pq
    from datasets import Dataset
    from datasets.table import InMemoryTable

    from .data import task_batches

    params = stage_info(sample)["params"]
    ds = Dataset(InMemoryTable(pq.read_table(sample / file)))
    return task_batches(ds, tokenizer, task, params["batch_size"], params["max_length"])


def _model(folder: Path, device: torch.device) -> tuple[nn.Module, object, TaskSpec]:
    task = _task(folder)
    model, tokenizer = load_model(folder, task, device)
    return model, tokenizer, task


def _dims(model_folder: Path) -> ModelDims:
    config = AutoConfig.from_pretrained(model_folder)
    return adapter_for(config).dims(config)


def _masks_summary(masks: Masks, dims: ModelDims | None = None, seq_len: float | None = None) -> dict:
    summary = {"heads_per_layer": masks.heads_per_layer(), "neurons_per_layer": masks.neurons_per_layer()}
    if dims is not None and seq_len is not None:
        summary["flops_ratio"] = flops_ratio(masks, dims, seq_len)
    return summary


# ----- the method's building blocks ----------------------------------------------------------------
def search_masks(grads: MaskGradients, dims: ModelDims, constraint: float, seq_len: float, latency_table=None,
                 allocation: str = "global") -> Masks:  # fmt: skip
    """FLOPs-constrained search (``allocation``: see :class:`~fastprune.common.config.SearchParams`), or
    latency-constrained when a latency table is given."""
    if latency_table is not None:
        from .latency import search_latency

        return search_latency(grads.head_importance(), grads.neuron_importance(), latency_table, constraint)
    return search_by(allocation, grads, dims, seq_len, constraint)


def teacher_masks(
    grads: MaskGradients, dims: ModelDims, constraint: float, seq_len: float, kind: str, latency_table=None,
    allocation: str = "global",
) -> Masks | None:
    """The tuning teacher: the model masked at the looser constraint sqrt(C) (the paper's schedule),
    or ``None`` for the dense model."""
    if kind == "dense":
        return None
    loose = search_masks(grads, dims, math.sqrt(constraint), seq_len, latency_table, allocation)
    return rearrange_masks(loose, grads)


def evaluate_masked(model: nn.Module, masks: Masks | None, tokenizer, task, dev, device, batch_size) -> dict:
    from .evaluate import evaluate

    with pruning_applied(model, masks, device):
        return evaluate(model, tokenizer, task, dev, device, batch_size)


# ----- the stages: each writes its files into ``out`` and returns its results --------------------------
def run_prepare(p: PrepareParams, out: Path) -> dict:
    """Fetch the model, check it fits the task, and save it in fastprune's format (safetensors + tokenizer)."""
    if p.tracking_uri:
        from .registry import check_tracking_uri

        check_tracking_uri(p.tracking_uri)
    task = get_task(p.task)
    if p.dev_file:  # read and its labels parsed before the model is loaded
        from .data import load_task_data

        load_task_data(resolve_source(p.dev_file)[0], task, "validation")
    local, source = resolve_source(p.source, p.tracking_uri)
    model, tokenizer = load_model(local, task, "cpu", p.trust_remote_code)
    save_pruned(model, out, tokenizer, metadata={"source": source, "task": task.name})
    dims = adapter_for(model).dims(model.config)
    return {"task": task.name, "source": source, "architecture": type(model).__name__,
            "parameters": parameter_count(model), "num_layers": dims.num_layers, "num_heads": dims.num_heads,
            "intermediate_size": dims.intermediate_size}


def run_sample(p: SampleParams, out: Path) -> dict:
    """Draw the pruning sample from the training data; record the data's sha256."""
    from .data import load_task_data, sample_dataset, split_holdout

    task = get_task(p.task)
    local, source = resolve_source(p.train_file)
    train = load_task_data(local, task, "train", p.text_columns, p.label_column)
    sample = sample_dataset(train, p.num_samples, p.seed, p.replace)
    warnings = [w for w in [sampling_warning(p.num_samples, len(train), p.replace)] if w]
    if p.holdout:
        sample, held_out = split_holdout(sample, p.holdout, p.seed)
        held_out.to_parquet(str(out / HOLDOUT_FILE))
    sample.to_parquet(str(out / SAMPLE_FILE))
    checksum = _sha256(local) if isinstance(local, Path) and local.is_file() else None
    return {"task": task.name, "train_file": source, "train_sha256": checksum, "train_examples": len(train),
            "num_examples": len(sample), **({"warnings": warnings} if warnings else {})}


def run_fisher(p: FisherParams, out: Path, model: Path, sample: Path) -> dict:
    """Per-batch gradients of the task loss w.r.t. every head and neuron mask over the sample."""
    from .data import average_length

    device = resolve_device(p.device)
    net, tokenizer, task = _model(model, device)
    if _task(sample).name != task.name:
        raise ConfigError(f"the sample is for task {_task(sample).name} but the model for {task.name}")
    batches = _sample_batches(sample, tokenizer, task)
    seq_len, dims = p.seq_len or average_length(batches), adapter_for(net).dims(net.config)

    def search(g: MaskGradients, constraint: float) -> Masks:
        return search_masks(g, dims, constraint, seq_len)

    seed = stage_info(sample)["params"]["seed"]
    grads = iterative_fisher(net, batches, p.constraint or 1.0, p.steps, search, device, p.progress, p.labels, seed)
    grads.save(out / GRADS_FILE)
    result = {"task": task.name, "seq_len": seq_len, "num_batches": len(batches), "device": str(device)}
    if grads.available is not None:
        result["available"] = _masks_summary(grads.available)
    return result


def run_search(p: SearchParams, out: Path, model: Path, grads: Path) -> dict:
    """The masks of largest Fisher importance within the FLOPs (or latency) budget."""
    dims, seq_len = _dims(model), p.seq_len or stage_info(grads)["seq_len"]
    result: dict = {"constraint": p.constraint, "metric": p.metric, "seq_len": seq_len}
    table = None
    if p.metric == "latency":
        from .latency import build_lut, latency_ratio

        start = time.perf_counter()
        table = build_lut(AutoConfig.from_pretrained(model), resolve_device(p.device), p.latency_batch_size,
                          p.latency_seq_len, dtype=p.latency_dtype)
        table.save(out / LATENCY_TABLE_FILE)
        result["latency_table_seconds"] = round(time.perf_counter() - start, 3)
    masks = search_masks(MaskGradients.load(grads / GRADS_FILE), dims, p.constraint, seq_len, table, p.allocation)
    masks.save(out / MASKS_FILE)
    if table is not None:
        result["latency_ratio_fitted"] = latency_ratio(masks, table)
    warnings = budget_warnings(p.constraint, p.metric, masks.heads_per_layer(), masks.neurons_per_layer(),
                               dims.num_layers * dims.num_heads, dims.num_layers * dims.intermediate_size)
    return {**result, **_masks_summary(masks, dims, seq_len), **({"warnings": warnings} if warnings else {})}


def run_rearrange(p: RearrangeParams, out: Path, grads: Path, masks: Path) -> dict:
    """Re-choose which units each layer prunes with the block-diagonal Fisher (per-layer counts unchanged)."""
    searched = Masks.load(masks / MASKS_FILE)
    new = rearrange_masks(searched, MaskGradients.load(grads / GRADS_FILE)) if p.enabled else searched.clone()
    new.save(out / MASKS_FILE)
    moved = int((new.head != searched.head).sum() + (new.neuron != searched.neuron).sum()) // 2
    return {"seq_len": stage_info(masks)["seq_len"], "units_moved": moved, **_masks_summary(new)}


def run_tune(p: TuneParams, out: Path, model: Path, sample: Path, grads: Path, searched: Path, masks: Path) -> dict:
    """Layer-wise least squares: real-valued scales for the kept units that reproduce the teacher. With a
    held-out part of the sample, rearrangement and tuning are each kept only where they lower its loss."""
    search = stage_info(searched)
    chosen = Masks.load(masks / MASKS_FILE)
    reports, validation, validator, resplit = [], {}, None, None
    holdout = (sample / HOLDOUT_FILE).exists()
    if p.enabled or holdout:
        device = resolve_device(p.device)
        net, tokenizer, task = _model(model, device)
        if holdout:
            validator = StageValidator(net, _sample_batches(sample, tokenizer, task, HOLDOUT_FILE), device)
            chosen = validator.choose("rearrange", Masks.load(searched / MASKS_FILE), chosen)
    if p.enabled:
        table_file = searched / LATENCY_TABLE_FILE
        table = None
        if table_file.exists():
            from .latency import LatencyTable

            table = LatencyTable.load(table_file)
        fisher = MaskGradients.load(grads / GRADS_FILE)
        dims = adapter_for(net).dims(net.config)
        kind = p.teacher or DEFAULT_TEACHER[p.mode]
        allocation = search["params"].get("allocation", "global")  # the search stage's, for the teacher and re-split
        teacher = teacher_masks(fisher, dims, search["constraint"], search["seq_len"], kind, table, allocation)
        batches = _sample_batches(sample, tokenizer, task)
        if p.resplit:
            labels = stage_info(grads)["params"].get("labels", "data")  # the Fisher stage's label source
            resplit = BudgetResplit(net, chosen, search["seq_len"], device, labels, fisher.available, table,
                                    allocation)  # fmt: skip
        tuned, reports = tune_masks(net, chosen, teacher, batches, device, p.ridge, p.scale_bound, p.policy,
                                    progress=p.progress, num_samples=p.num_samples, mode=p.mode, resplit=resplit)
        chosen = validator.choose("tune", chosen, tuned) if validator else tuned
    if validator:
        validation = validator.report
    chosen.save(out / MASKS_FILE)
    return {"seq_len": search["seq_len"], "tuning": [r.as_dict() for r in reports], "blocks": len(reports),
            "layers_tuned": sum(r.tuned for r in reports), "validation": validation,
            **({"resplit": resplit.log} if resplit else {}), **_masks_summary(chosen)}


def run_export(p: ExportParams, out: Path, model: Path, masks: Path) -> dict:
    """Fold the scales into the weights and slice the pruned units away: a physically smaller model."""
    net, tokenizer, task = _model(model, torch.device("cpu"))
    tuned = Masks.load(masks / MASKS_FILE)
    pruned = export_pruned(net, tuned, p.neuron_multiple)
    save_pruned(pruned, out, tokenizer, metadata={"source": stage_info(model)["source"], "task": task.name})
    before, after = parameter_count(net), parameter_count(pruned)
    dims, seq_len = adapter_for(net).dims(net.config), stage_info(masks)["seq_len"]
    shape = adapter_for(pruned).structure(pruned)  # with the padding neurons
    exported = units_macs(sum(shape["num_heads"]), sum(shape["intermediate_size"]), dims, seq_len)
    return {"task": task.name, "source": stage_info(model)["source"], "params_before": before, "params_after": after,
            "params_ratio": after / before, **_masks_summary(tuned, dims, seq_len),
            "neurons_per_layer_exported": shape["intermediate_size"],
            "flops_ratio_exported": exported / dense_macs(dims, seq_len)}


_MASKED_METRICS = {"searched": "metric_search", "rearranged": "metric_rearranged", "tuned": "metric_tuned_masked"}


def run_evaluate(p: EvaluateParams, out: Path, model: Path, pruned: Path, **masks: Path | None) -> dict:
    """The task metric on the dev set: original, masked (after search / rearrangement / tuning) and pruned."""
    from .data import load_task_data

    device, task = resolve_device(p.device), _task(model)
    dev = load_task_data(resolve_source(p.dev_file)[0], task, "validation", p.text_columns, p.label_column)
    net, tokenizer, _ = _model(model, device)  # after the dev data: a bad file fails before the model loads

    def run(m: nn.Module, mask: Masks | None = None) -> dict:
        return evaluate_masked(m, mask, tokenizer, task, dev, device, p.batch_size)

    before = run(net)
    result = {"task": task.name, "metric": task.metric, "dev_examples": len(dev), "metric_before": before[task.metric]}
    chance = chance_warning(task, [] if task.is_qa else list(dev["label"]), before)
    if chance:
        result["warnings"] = [chance]
    for name, folder in masks.items():
        if folder is not None:
            result[_MASKED_METRICS[name]] = run(net, Masks.load(folder / MASKS_FILE))[task.metric]
    pruned_net, pruned_tokenizer, _ = _model(pruned, device)
    after = evaluate_masked(pruned_net, None, pruned_tokenizer, task, dev, device, p.batch_size)
    result["metric_after"] = after[task.metric]
    result["metric_drop"] = result["metric_before"] - result["metric_after"]
    return {**result, "metrics_before": before, "metrics_after": after, "device": str(device)}


def run_profile(p: ProfileParams, out: Path, model: Path, pruned: Path) -> dict:
    """End-to-end latency of the original and the pruned model on this step's device, same inputs."""
    from .latency import profile_models

    device = resolve_device(p.device)
    original, _, _ = _model(model, device)
    small, _, _ = _model(pruned, device)
    profile = profile_models({"original": original, "pruned": small}, (p.batch_size,), (p.seq_len,), device,
                             (p.dtype,), p.repeats, p.warmup, vocab_size=original.config.vocab_size)
    if not profile.entries:
        raise ConfigError(f"dtype {p.dtype} is measured on CUDA devices only, not on {device}")
    (out / PROFILE_FILE).write_text(profile.to_markdown())
    first, second = profile.entries
    return {"device": profile.device, "latency_before_ms": first.p50_ms, "latency_after_ms": second.p50_ms,
            "speedup": second.speedup, "profile": profile.to_dict()}


def _run_register(p: RegisterParams, out: Path, **inputs: Path | None) -> dict:
    """Register the pruned model in MLflow; the alias moves to it only when the accuracy gate passes."""
    from .registry import register

    return register(p, out, **inputs)


# ----- the registry of stages, and running one ---------------------------------------------------------
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
    "search": Stage(run_search, SearchParams, ("model", "grads")),
    "rearrange": Stage(run_rearrange, RearrangeParams, ("grads", "masks")),
    "tune": Stage(run_tune, TuneParams, ("model", "sample", "grads", "searched", "masks")),
    "export": Stage(run_export, ExportParams, ("model", "masks")),
    "evaluate": Stage(run_evaluate, EvaluateParams, ("model", "pruned"), ("searched", "rearranged", "tuned")),
    "profile": Stage(run_profile, ProfileParams, ("model", "pruned")),
    "register": Stage(_run_register, RegisterParams, ("pruned", "tuned", "evaluation"),
                      ("model", "sample", "grads", "searched", "rearranged", "profile")),
}


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
        raise ConfigError(f"stage {name} needs inputs {list(stage.inputs)} (optional {list(stage.optional)}); "
                          f"missing {missing}, unknown {unknown}")
    folders = {k: Path(v) if v is not None else None for k, v in inputs.items()}
    for folder in folders.values():
        if folder is not None:
            verify_manifest(folder)
    lineage = inherited_lineage(name, folders)  # inputs of one task, model and sample, or refused
    start = time.perf_counter()
    with staging(Path(out)) as staged:
        result = stage.func(p, staged, **folders)
        info = {"stage": name, "params": p.model_dump(mode="json"), "seconds": round(time.perf_counter() - start, 3),
                **lineage, **result, **own_lineage(name, staged)}
        (staged / STAGE_FILE).write_text(json.dumps(info, indent=2, default=str))
        write_manifest(staged)
    return info
