"""The whole method end to end: sample -> Fisher -> search -> rearrange -> tune -> export -> evaluate.

Each stage is a function of the modules beside this one; :func:`prune` strings them together for
the CLI, and the pipeline components call the same functions one by one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path

from torch import nn

from .arch import ModelDims, adapter_for
from .config import PruneConfig
from .data import average_length, load_task_data, sample_dataset, task_batches
from .evaluate import evaluate
from .export import export_pruned, parameter_count, save_pruned
from .fisher import MaskGradients, collect_mask_gradients
from .masks import Masks, flops_ratio, masks_applied
from .models import load_model, resolve_device
from .rearrange import rearrange_masks
from .search import search_flops
from .tasks import get_task
from .tuning import tune_masks

log = logging.getLogger(__name__)


class StageTimer:
    """Seconds spent per stage, in order."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        log.info("stage %s ...", stage)
        start = time.perf_counter()
        yield
        self.seconds[stage] = round(self.seconds.get(stage, 0.0) + time.perf_counter() - start, 3)
        log.info("stage %s done in %.1f s", stage, self.seconds[stage])


def search_masks(
    grads: MaskGradients,
    dims: ModelDims,
    constraint: float,
    seq_len: float,
    latency_table=None,
) -> Masks:
    """FLOPs-constrained search, or latency-constrained when a latency table is given."""
    if latency_table is not None:
        from .latency import search_latency

        return search_latency(grads.head_importance(), grads.neuron_importance(), latency_table, constraint)
    return search_flops(grads.head_importance(), grads.neuron_importance(), dims, seq_len, constraint)


def teacher_masks(
    grads: MaskGradients, dims: ModelDims, constraint: float, seq_len: float, kind: str, latency_table=None
) -> Masks | None:
    """The tuning teacher: the model masked at the looser constraint sqrt(C) (the paper's schedule),
    or ``None`` for the dense model."""
    if kind == "dense":
        return None
    loose = search_masks(grads, dims, math.sqrt(constraint), seq_len, latency_table)
    return rearrange_masks(loose, grads)


def evaluate_masked(model: nn.Module, masks: Masks | None, tokenizer, task, dev, device, batch_size) -> dict:
    head, neuron = (masks.head.to(device), masks.neuron.to(device)) if masks is not None else (None, None)
    with masks_applied(model, head, neuron):
        return evaluate(model, tokenizer, task, dev, device, batch_size)


def prune(cfg: PruneConfig, output: str | Path) -> dict:
    """Prune ``cfg.model`` end to end; write ``output/model`` and ``output/summary.json``."""
    output = Path(output)
    task = get_task(cfg.task)
    device = resolve_device(cfg.device)
    timer = StageTimer()
    with timer("load"):
        model, tokenizer = load_model(cfg.model, task, device, cfg.trust_remote_code)
        train = load_task_data(cfg.train_file, task, "train", cfg.text_columns, cfg.label_column)
        dev = (
            load_task_data(cfg.dev_file, task, "validation", cfg.text_columns, cfg.label_column)
            if cfg.dev_file
            else None
        )
    dims = adapter_for(model).dims(model.config)
    with timer("sample"):
        sample = sample_dataset(train, cfg.sample.num_samples, cfg.sample.seed, cfg.sample.replace)
        batches = task_batches(sample, tokenizer, task, cfg.sample.batch_size, cfg.sample.max_length)
        seq_len = cfg.seq_len or average_length(batches)
    table = None
    if cfg.metric == "latency":
        with timer("latency_table"):
            from .latency import build_lut

            table = build_lut(model.config, device, cfg.latency_batch_size, cfg.latency_seq_len)
    with timer("fisher"):
        grads = collect_mask_gradients(model, batches, device=device, progress=cfg.progress)
    with timer("search"):
        searched = search_masks(grads, dims, cfg.constraint, seq_len, table)
    with timer("rearrange"):
        rearranged = rearrange_masks(searched, grads) if cfg.rearrange else searched.clone()
    reports = []
    tuned = rearranged
    if cfg.tuning.enabled:
        with timer("tune"):
            teacher = teacher_masks(grads, dims, cfg.constraint, seq_len, cfg.tuning.teacher, table)
            tuned, reports = tune_masks(
                model,
                rearranged,
                teacher,
                batches,
                device,
                cfg.tuning.ridge,
                cfg.tuning.scale_bound,
                cfg.tuning.policy,
                progress=cfg.progress,
            )
    with timer("export"):
        pruned = export_pruned(model, tuned)
        save_pruned(pruned, output / "model", tokenizer, metadata={"config": cfg.model_dump()})
        tuned.save(output / "masks.safetensors")
    prune_seconds = sum(timer.seconds.get(s, 0.0) for s in ("fisher", "search", "rearrange", "tune", "export"))
    metrics: dict[str, float | None] = {}
    if dev is not None:
        with timer("evaluate"):

            def run(m: nn.Module, masks: Masks | None = None) -> float:
                return evaluate_masked(m, masks, tokenizer, task, dev, device, cfg.eval_batch_size)[task.metric]

            metrics["metric_before"] = run(model)
            if cfg.eval_stages:
                metrics["metric_search"] = run(model, searched)
                metrics["metric_rearranged"] = run(model, rearranged)
            metrics["metric_tuned_masked"] = run(model, tuned)
            metrics["metric_after"] = run(pruned)
    summary = {
        "model": cfg.model,
        "task": task.name,
        "metric": task.metric,
        **metrics,
        "constraint": cfg.constraint,
        "constraint_metric": cfg.metric,
        "flops_ratio": flops_ratio(tuned, dims, seq_len),
        "seq_len": seq_len,
        "params_before": parameter_count(model),
        "params_after": parameter_count(pruned),
        "heads_per_layer": tuned.heads_per_layer(),
        "neurons_per_layer": tuned.neurons_per_layer(),
        "tuning": [r.as_dict() for r in reports],
        "layers_tuned": sum(r.tuned for r in reports),
        "device": str(device),
        "seconds": timer.seconds,
        "prune_seconds": round(prune_seconds, 3),
    }
    if table is not None:
        from .latency import masks_latency

        summary["latency_ratio_fitted"] = masks_latency(tuned, table) / masks_latency(Masks.ones(dims), table)
    (output / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def format_summary(summary: dict) -> str:
    """A short human summary of a prune run."""
    lines = [
        f"fastprune: {summary['model']} on {summary['task']} at {summary['constraint_metric']} "
        f"constraint {summary['constraint']}",
        f"  FLOPs kept {summary['flops_ratio']:.3f}; parameters {summary['params_before']:,} -> "
        f"{summary['params_after']:,}; heads/layer {summary['heads_per_layer']}",
        f"  blocks tuned {summary['layers_tuned']} of {len(summary['tuning'])}; "
        f"prune time {summary['prune_seconds']:.1f} s on {summary['device']}",
    ]
    if summary.get("metric_before") is not None:
        stages = [
            ("before", "metric_before"),
            ("search", "metric_search"),
            ("rearranged", "metric_rearranged"),
            ("after (exported)", "metric_after"),
        ]
        parts = [f"{name} {summary[key]:.2f}" for name, key in stages if summary.get(key) is not None]
        lines.append(f"  {summary['metric']}: " + ", ".join(parts))
    return "\n".join(lines)
