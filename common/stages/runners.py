"""The method as stages over folders: prepare -> sample -> fisher -> search -> rearrange -> tune -> export ->
evaluate / profile -> register.

Each stage reads the folders of earlier stages and writes one folder of plain files (safetensors, parquet,
a model folder) plus ``stage.json`` (its parameters, results and seconds) and ``MANIFEST.json`` (sha256 of
every file). :func:`run_stage` verifies every input's manifest before use and builds the output beside its
destination, renaming it into place only when complete, so a corrupted or partial folder is never accepted.
``prune()`` (the one-shot CLI), ``fastprune step`` and the pipeline components all call :func:`run_stage`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from transformers import AutoConfig

from ..errors import ConfigError
from ..folders import (
    CALIBRATION_FILE,
    GRADS_FILE,
    HOLDOUT_FILE,
    LATENCY_TABLE_FILE,
    MASKS_FILE,
    PROFILE_FILE,
    SAMPLE_FILE,
    sha256_file,
    stage_info,
)
from ..method.allocate import choose_allocation, search_masks, teacher_masks
from ..method.fisher import MaskGradients
from ..method.iterative import iterative_fisher
from ..method.rearrange import head_block, rearrange_masks
from ..method.resplit import BudgetResplit
from ..method.tuning import DEFAULT_TEACHER, spread_batches, tune_masks
from ..method.validation import StageValidator
from ..model.arch import ModelDims, adapter_for
from ..model.cost import dense_macs, flops_ratio, structure_macs
from ..model.export import cache_summary, export_pruned, parameter_count, save_pruned
from ..model.loading import load_model, resolve_device
from ..model.masks import Masks, pruning_applied
from ..tasks.causal_lm import generated_batches, load_batches, save_batches
from ..tasks.spec import Task, get_task
from .config import (
    EvaluateParams,
    ExportParams,
    FisherParams,
    OnnxParams,
    PrepareParams,
    ProfileParams,
    RearrangeParams,
    SampleParams,
    SearchParams,
    TuneParams,
)
from .options import BY_MODE, BY_TASK, check_calib_generate
from .sanity import budget_warnings, chance_warning, sampling_warning
from .sources import resolve_source

log = logging.getLogger(__name__)

# The data and evaluation modules (datasets, scipy) are imported by the stages that use them: every pipeline step
# is a fresh process, and these imports cost seconds.


# ----- reading stage folders -----------------------------------------------------------------------


def _task(folder: Path) -> Task:
    return get_task(stage_info(folder)["task"])


def _sample_batches(sample: Path, tokenizer, task: Task, file: str = SAMPLE_FILE) -> list[dict]:
    """The pruning sample (or its held-out part) of a sample folder, tokenized and batched as its stage says."""
    import pyarrow.parquet as pq
    from datasets import Dataset
    from datasets.table import InMemoryTable

    params = stage_info(sample)["params"]
    ds = Dataset(InMemoryTable(pq.read_table(sample / file)))
    return task.batches(ds, tokenizer, params["batch_size"], params["max_length"])


def _calibration(sample: Path, grads: Path, tokenizer, task: Task) -> list[dict]:
    """The windows the tuning reads, all of them (the Fisher pass may have measured the first ``fisher_samples``):
    the Fisher stage's self-generated ones where it made them, else the sample's."""
    if (grads / CALIBRATION_FILE).exists():
        return load_batches(grads / CALIBRATION_FILE)
    return _sample_batches(sample, tokenizer, task)


def _model(folder: Path, device: torch.device) -> tuple[nn.Module, object, Task]:
    task = _task(folder)
    model, tokenizer = load_model(folder, task, device)
    return model, tokenizer, task


def _validator(sample: Path, net: nn.Module, tokenizer, task: Task, device: torch.device) -> StageValidator:
    """Compares masks by their loss on the sample's held-out part (``--holdout``)."""
    return StageValidator(net, _sample_batches(sample, tokenizer, task, HOLDOUT_FILE), device, task)


def _dims(model_folder: Path) -> ModelDims:
    config = AutoConfig.from_pretrained(model_folder)
    return adapter_for(config).dims(config)


def _masks_summary(masks: Masks, dims: ModelDims | None = None, seq_len: float | None = None) -> dict:
    summary: dict[str, Any] = {
        "heads_per_layer": masks.heads_per_layer(),
        "neurons_per_layer": masks.neurons_per_layer(),
    }
    if dims is not None and seq_len is not None:
        summary["flops_ratio"] = flops_ratio(masks, dims, seq_len)
    return summary


# ----- the method's building blocks ----------------------------------------------------------------
def evaluate_masked(model: nn.Module, masks: Masks | None, tokenizer, task: Task, dev, device, batch_size) -> dict:
    with pruning_applied(model, masks, device):
        return task.evaluate(model, tokenizer, dev, device, batch_size)


# ----- the stages: each writes its files into ``out`` and returns its results --------------------------
def run_prepare(p: PrepareParams, out: Path) -> dict:
    """Fetch the model, check it fits the task, and save it in fastprune's format (safetensors + tokenizer)."""
    if p.tracking_uri:
        from ..ops.registry import check_tracking_uri

        check_tracking_uri(p.tracking_uri)
    task = get_task(p.task)
    if p.dev_data:  # read and its labels parsed before the model is loaded
        task.load_data(resolve_source(p.dev_data)[0], "validation")
    local, source = resolve_source(p.model, p.tracking_uri)
    model, tokenizer = load_model(local, task, "cpu", p.trust_remote_code, allow_pickle=p.allow_pickle)
    save_pruned(model, out, tokenizer, metadata={"source": source, "task": task.name})
    dims = adapter_for(model).dims(model.config)
    return {
        "task": task.name,
        "source": source,
        "architecture": type(model).__name__,
        "parameters": parameter_count(model),
        "num_layers": dims.num_layers,
        "num_heads": dims.num_heads,
        "intermediate_size": dims.intermediate_size,
    }


def run_sample(p: SampleParams, out: Path) -> dict:
    """Draw the pruning sample from the training data; record the data's sha256."""
    from ..tasks.data import split_holdout

    task = get_task(p.task)
    local, source = resolve_source(p.train_data)
    train = task.load_data(local, "train", p.text_columns, p.label_column)
    sample, available = task.draw_sample(train, p.num_samples, p.seed, p.replace, p.max_length)
    warnings = [w for w in [sampling_warning(p.num_samples, available, p.replace, task.sample_unit)] if w]
    holdout = p.holdout
    if holdout:
        sample, held_out = split_holdout(sample, holdout, p.seed)
        if len(held_out):
            held_out.to_parquet(str(out / HOLDOUT_FILE))
        else:
            small = f"a sample of {len(sample)} {task.sample_unit} is too small to hold out {holdout:g} of it"
            warnings.append(f"{small}: the stages are not validated")
            holdout = 0.0
    sample.to_parquet(str(out / SAMPLE_FILE))
    checksum = sha256_file(local) if isinstance(local, Path) and local.is_file() else None
    return {
        "task": task.name,
        "train_file": source,
        "train_sha256": checksum,
        "train_examples": len(train),
        "num_examples": len(sample),
        "holdout": holdout,
        **({"warnings": warnings} if warnings else {}),
    }


def run_fisher(p: FisherParams, out: Path, model: Path, sample: Path) -> dict:
    """Per-batch gradients of the task loss w.r.t. every head and neuron mask over the sample."""
    from ..tasks.data import average_length, first_examples

    device = resolve_device(p.device)
    net, tokenizer, task = _model(model, device)
    if _task(sample).name != task.name:
        raise ConfigError(f"the sample is for task {_task(sample).name} but the model for {task.name}")
    batches = _sample_batches(sample, tokenizer, task)
    drawn = stage_info(sample)["params"]
    seed = drawn["seed"]
    if p.calib_generate:
        check_calib_generate(p.calib_generate, task.name, drawn["max_length"])
        start = time.perf_counter()
        batches = generated_batches(net, batches, p.calib_generate, seed, p.progress)
        save_batches(batches, out / CALIBRATION_FILE)
        log.info("calibration: %d windows self-generated in %.0f s", sum(len(b["input_ids"]) for b in batches),
                 time.perf_counter() - start)  # fmt: skip
    batches = first_examples(batches, p.fisher_samples)  # the tuning reads them all
    seq_len, dims = p.seq_len or average_length(batches), adapter_for(net).dims(net.config)

    def search(g: MaskGradients, constraint: float) -> Masks:
        return search_masks(g, dims, constraint, seq_len)

    rows = task.fisher_rows if p.fisher_rows == BY_TASK else p.fisher_rows
    grads = iterative_fisher(
        net,
        batches,
        p.constraint,
        p.fisher_steps,
        search,
        device,
        p.progress,
        p.fisher_labels,
        seed,
        task,
        p.fisher_max_rows,
        rows == "token",
    )
    grads.save(out / GRADS_FILE)
    result = {"task": task.name, "seq_len": seq_len, "num_batches": len(batches), "device": str(device)}
    result |= {"rows": rows, "num_rows": len(grads.head), "calibration": "generated" if p.calib_generate else "sample"}
    if grads.available is not None:
        result["available"] = _masks_summary(grads.available)
    return result


def run_search(p: SearchParams, out: Path, model: Path, grads: Path, sample: Path | None = None) -> dict:
    """The masks of largest Fisher importance within the FLOPs (or latency) budget (``allocation auto``: the split
    of lowest loss on the ``sample``'s held-out part)."""
    if p.allocation == "auto" and (sample is None or not (sample / HOLDOUT_FILE).exists()):
        raise ConfigError(
            "allocation 'auto' compares the splits on the held-out part of the sample: give the search --sample, "
            "the folder of a sample stage run with --holdout above 0 (e.g. 0.2), or choose global, block or uniform"
        )
    dims, seq_len = _dims(model), p.seq_len or stage_info(grads)["seq_len"]
    result: dict = {"constraint": p.constraint, "metric": p.constraint_metric, "seq_len": seq_len}
    result["head_block"] = head_block(dims)  # what the rearrangement keeps together (a key/value group's heads)
    table = None
    if p.constraint_metric == "latency":
        from ..method.latency_search import latency_ratio
        from ..method.latency_table import build_lut

        start = time.perf_counter()
        table = build_lut(
            AutoConfig.from_pretrained(model),
            resolve_device(p.device),
            p.latency_batch_size,
            p.latency_seq_len,
            dtype=p.serving_dtype,
            mode=p.latency_mode,
        )
        table.save(out / LATENCY_TABLE_FILE)
        result["latency_table_seconds"] = round(time.perf_counter() - start, 3)
    gradients, allocation = MaskGradients.load(grads / GRADS_FILE), str(p.allocation)
    if allocation == "auto" and sample is not None:  # (a sample with a held-out part: checked above)
        device = resolve_device(p.device)
        validator = _validator(sample, *_model(model, device), device)
        allocation, masks, result["allocation_losses"] = choose_allocation(
            gradients, dims, p.constraint, seq_len, validator.loss
        )
    else:
        masks = search_masks(gradients, dims, p.constraint, seq_len, table, allocation)
    result["allocation"] = allocation  # the split used, which the tuning's teacher and re-split follow
    masks.save(out / MASKS_FILE)
    if table is not None:
        result["latency_ratio_fitted"] = latency_ratio(masks, table)
    warnings = budget_warnings(
        p.constraint,
        p.constraint_metric,
        masks.heads_per_layer(),
        masks.neurons_per_layer(),
        dims.num_layers * dims.num_heads,
        dims.num_layers * dims.intermediate_size,
    )
    return {**result, **_masks_summary(masks, dims, seq_len), **({"warnings": warnings} if warnings else {})}


def run_rearrange(p: RearrangeParams, out: Path, grads: Path, masks: Path) -> dict:
    """Re-choose which units each layer prunes with the block-diagonal Fisher (per-layer counts unchanged)."""
    searched, gradients = Masks.load(masks / MASKS_FILE), MaskGradients.load(grads / GRADS_FILE)
    shrink = _task(grads).rearrange_shrink if p.rearrange_shrink == BY_TASK else p.rearrange_shrink
    info = stage_info(masks)
    block = info.get("head_block")  # a key/value group's query heads: rearranged together
    new = rearrange_masks(searched, gradients, block, shrink) if p.rearrange else searched.clone()
    new.save(out / MASKS_FILE)
    moved = int((new.head != searched.head).sum() + (new.neuron != searched.neuron).sum()) // 2
    return {"seq_len": info["seq_len"], "units_moved": moved, "shrink": shrink, **_masks_summary(new)}


def run_tune(p: TuneParams, out: Path, model: Path, sample: Path, grads: Path, searched: Path, masks: Path) -> dict:
    """Layer-wise least squares: real-valued scales for the kept units that reproduce the teacher. With a
    held-out part of the sample, rearrangement and tuning are each kept only where they lower its loss."""
    search = stage_info(searched)
    chosen = Masks.load(masks / MASKS_FILE)
    reports: list = []
    validation, validator, resplit = {}, None, None
    holdout = (sample / HOLDOUT_FILE).exists()
    calibration = "generated" if (grads / CALIBRATION_FILE).exists() else "sample"
    if p.tune or holdout:
        device = resolve_device(p.device)
        net, tokenizer, task = _model(model, device)
        if holdout:
            validator = _validator(sample, net, tokenizer, task, device)
            chosen = validator.choose("rearrange", Masks.load(searched / MASKS_FILE), chosen)
    if p.tune:
        table_file = searched / LATENCY_TABLE_FILE
        table = None
        if table_file.exists():
            from ..method.latency_table import LatencyTable

            table = LatencyTable.load(table_file)
        fisher = MaskGradients.load(grads / GRADS_FILE)
        dims = adapter_for(net).dims(net.config)
        kind = DEFAULT_TEACHER[p.tuning_mode] if p.tuning_teacher == BY_MODE else p.tuning_teacher
        allocation = search.get("allocation", search["params"].get("allocation", "global"))  # the split searched
        arranged = stage_info(masks)  # the rearrangement stage's: whether it ran, and its shrinkage
        shrink = arranged.get("shrink", 0.0)
        teacher = teacher_masks(fisher, dims, search["constraint"], search["seq_len"], kind, table, allocation, shrink)
        batches = spread_batches(_calibration(sample, grads, tokenizer, task), p.tuning_samples or None)
        input_ridge = p.input_ridge(task.input_ridge)
        if p.tuning_resplit:
            measured = stage_info(grads)  # the Fisher stage's: its label source and rows, which the re-split keeps
            made = measured["params"]
            labels = made.get("fisher_labels", made.get("labels", "data"))
            kept = validator is None or validator.report["rearrange"]["accepted"]  # not rejected on the held-out part
            rearranged = kept and task.resplit_rearranges and arranged["params"].get("rearrange", False)
            resplit = BudgetResplit(
                net,
                chosen,
                search["seq_len"],
                device,
                labels,
                fisher.available,
                table,
                allocation,
                task,
                rearrange=rearranged,
                head_block=search.get("head_block"),
                shrink=shrink,
                per_token=measured.get("rows") == "token",
            )
        tuned, reports = tune_masks(
            net,
            chosen,
            teacher,
            batches,
            device,
            p.ridge(),
            p.tuning_scale_bound,
            p.tuning_policy,
            progress=p.progress,
            mode=p.tuning_mode,
            resplit=resplit,
            task=task,
            input_ridge=input_ridge,
        )
        chosen = validator.choose("tune", chosen, tuned) if validator else tuned
    if validator:
        validation = validator.report
    chosen.save(out / MASKS_FILE)
    return {
        "seq_len": search["seq_len"],
        "tuning": [r.as_dict() for r in reports],
        "blocks": len(reports),
        "layers_tuned": sum(r.tuned for r in reports),
        "validation": validation,
        **({"resplit": resplit.log} if resplit else {}),
        **(
            {
                "calibration": calibration,
                "input_ridge": input_ridge,
                "examples": sum(len(b["input_ids"]) for b in batches),
            }
            if p.tune
            else {}
        ),
        **_masks_summary(chosen),
    }


def run_export(p: ExportParams, out: Path, model: Path, masks: Path) -> dict:
    """Fold the scales into the weights and slice the pruned units away: a physically smaller model."""
    net, tokenizer, task = _model(model, torch.device("cpu"))
    tuned = Masks.load(masks / MASKS_FILE)
    pruned = export_pruned(net, tuned, p.neuron_multiple)
    save_pruned(pruned, out, tokenizer, metadata={"source": stage_info(model)["source"], "task": task.name})
    before, after = parameter_count(net), parameter_count(pruned)
    dims, seq_len = adapter_for(net).dims(net.config), stage_info(masks)["seq_len"]
    shape = adapter_for(pruned).structure(pruned)  # with the padding neurons
    exported = structure_macs(shape, dims, seq_len)
    onnx = {}
    if p.onnx != "none":
        from ..model.onnx_folder import ONNX_SUBFOLDER, build_onnx_folder

        onnx = {"onnx": build_onnx_folder(out, out / ONNX_SUBFOLDER, "int8" if p.onnx == "int8" else "none")}
    return {
        "task": task.name,
        "source": stage_info(model)["source"],
        "params_before": before,
        "params_after": after,
        **onnx,
        "params_ratio": after / before,
        **_masks_summary(tuned, dims, seq_len),
        "neurons_per_layer_exported": shape["intermediate_size"],
        "flops_ratio_exported": exported / dense_macs(dims, seq_len),
        **cache_summary(net, pruned),
    }


_MASKED_METRICS = {"searched": "metric_search", "rearranged": "metric_rearranged", "tuned": "metric_tuned_masked"}


def run_evaluate(p: EvaluateParams, out: Path, model: Path, pruned: Path, **masks: Path | None) -> dict:
    """The task metric on the dev set: original, masked (after search / rearrangement / tuning) and pruned."""
    device, task = resolve_device(p.device), _task(model)
    dev = task.load_data(resolve_source(p.dev_data)[0], "validation", p.text_columns, p.label_column)
    net, tokenizer, _ = _model(model, device)  # after the dev data: a bad file fails before the model loads

    def run(m: nn.Module, mask: Masks | None = None) -> dict:
        return evaluate_masked(m, mask, tokenizer, task, dev, device, p.eval_batch_size)

    before = run(net)
    result = {
        "task": task.name,
        "metric": task.metric,
        "higher_is_better": task.higher_is_better,
        "dev_examples": len(dev),
        "metric_before": before[task.metric],
    }
    chance = chance_warning(task, list(dev["label"]) if "label" in dev.column_names else [], before)
    if chance:
        result["warnings"] = [chance]
    for name, folder in masks.items():
        if folder is not None:
            result[_MASKED_METRICS[name]] = run(net, Masks.load(folder / MASKS_FILE))[task.metric]
    pruned_net, pruned_tokenizer, _ = _model(pruned, device)
    after = evaluate_masked(pruned_net, None, pruned_tokenizer, task, dev, device, p.eval_batch_size)
    result["metric_after"] = after[task.metric]
    result["metric_drop"] = task.metric_drop(result["metric_before"], result["metric_after"])
    if (pruned / "onnx" / "model.onnx").is_file():  # the export step's ONNX folder, on onnxruntime (CPU)
        from ..model.onnx_folder import OrtModel

        onnx = evaluate_masked(OrtModel(pruned / "onnx"), None, pruned_tokenizer, task, dev, "cpu", p.eval_batch_size)
        result["metric_after_onnx"] = onnx[task.metric]
    return {**result, "metrics_before": before, "metrics_after": after, "device": str(device)}


def run_onnx(p: OnnxParams, out: Path, pruned: Path) -> dict:
    """The ONNX folder of an exported model: model.onnx, config.json and the tokenizer (fp32 or int8)."""
    from ..model.onnx_folder import build_onnx_folder, check_model_folder

    return build_onnx_folder(check_model_folder(pruned), out, p.quantize, opset=p.opset)


def run_profile(p: ProfileParams, out: Path, model: Path, pruned: Path) -> dict:
    """End-to-end latency of the original and the pruned model on this step's device, same inputs; a causal LM's
    for a prefill and for one decoding step (``timing.MODES``)."""
    from ..model.onnx_folder import onnx_candidate
    from ..model.timing import default_modes, profile_models

    device = resolve_device(p.device)
    original, _, _ = _model(model, device)
    small, _, _ = _model(pruned, device)
    models = {"original": original, "pruned": small}
    modes = default_modes(original)
    onnx = onnx_candidate(pruned, device, p.serving_dtype)  # the export step's ONNX folder, on onnxruntime (CPU)
    if onnx is not None and modes == ("forward",):
        models[onnx[0]] = onnx[1]
    profile = profile_models(
        models,
        (p.profile_batch_size,),
        (p.profile_seq_len,),
        device,
        (p.serving_dtype,),
        p.repeats,
        p.warmup,
        vocab_size=cast(Any, original.config).vocab_size,
        modes=modes,
    )
    if not profile.entries:
        raise ConfigError(f"serving_dtype {p.serving_dtype} is measured on CUDA devices only, not on {device}")
    (out / PROFILE_FILE).write_text(profile.to_markdown())
    result = {
        "device": profile.device,
        **profile.comparison("original", "pruned"),
        "noisy": any(e.noisy for e in profile.entries),
        "repeats": p.repeats,
    }
    if len(models) > 2:
        third = profile.entries[2]
        result.update(latency_after_onnx_ms=third.p50_ms, speedup_onnx=third.speedup, onnx_model=third.model)
    return {**result, "profile": profile.to_dict()}


# ----- the registry of stages, and running one ---------------------------------------------------------
