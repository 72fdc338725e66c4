"""The whole method end to end: sample -> Fisher -> search -> rearrange -> tune -> export -> evaluate.

:func:`prune` runs the stages of :mod:`stages` one by one in a scratch folder, as the pipeline's steps do, and
collects their results into ``summary.json``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..folders import MASKS_FILE, scratch_dir, staged_folder
from ..model.loading import resolve_device
from ..tasks.spec import get_task
from .config import (
    EvaluateParams,
    ExportParams,
    FisherParams,
    PrepareParams,
    PruneConfig,
    RearrangeParams,
    SampleParams,
    SearchParams,
    StageParams,
    TuneParams,
)
from .preflight import check_prune_inputs
from .run import run_stage

_PRUNE_STAGES = ("fisher", "search", "rearrange", "tune", "export")
_METRICS = ("metric_before", "metric_search", "metric_rearranged", "metric_tuned_masked", "metric_after")


def prune(cfg: PruneConfig, output: str | Path, overwrite: bool = False) -> dict:
    """Prune ``cfg.model`` end to end; write ``output/model``, ``output/masks.safetensors``, ``output/summary.json``.

    Every input and the output are checked first (:func:`check_prune_inputs`): a non-empty ``output`` is refused
    unless ``overwrite``. The result is built in a staging folder beside ``output`` and renamed into place whole
    once complete (replacing an earlier result only then); scratch and staging are removed on every exit path."""
    output = check_prune_inputs(cfg, output, overwrite)
    task = get_task(cfg.task)
    with scratch_dir() as work, staged_folder(output) as result:
        model, sample, grads = work / "model", work / "sample", work / "grads"
        searched, rearranged, tuned = work / "searched", work / "rearranged", work / "tuned"
        flat = _flat(cfg)
        stages = {  # the sample first: a bad training file fails before the model is loaded
            "sample": run_stage("sample", sample, _params(SampleParams, flat)),
            "load": run_stage("prepare", model, _params(PrepareParams, flat, skip=("dev_data",))),
            "fisher": run_stage("fisher", grads, _params(FisherParams, flat), model=model, sample=sample),
            "search": run_stage(
                "search", searched, _params(SearchParams, flat), model=model, grads=grads, sample=sample
            ),
            "rearrange": run_stage(
                "rearrange", rearranged, _params(RearrangeParams, flat), grads=grads, masks=searched
            ),
        }
        if cfg.tuning.tune:
            stages["tune"] = run_stage(
                "tune",
                tuned,
                _params(TuneParams, flat),
                model=model,
                sample=sample,
                grads=grads,
                searched=searched,
                masks=rearranged,
            )
        else:
            tuned = rearranged
        stages["export"] = run_stage("export", result / "model", ExportParams(), model=model, masks=tuned)
        shutil.copyfile(tuned / MASKS_FILE, result / "masks.safetensors")
        if cfg.dev_data:
            masked = {"searched": searched, "rearranged": rearranged} if cfg.eval_stages else {}
            stages["evaluate"] = run_stage(
                "evaluate",
                work / "evaluation",
                _params(EvaluateParams, flat),
                model=model,
                pruned=result / "model",
                tuned=tuned,
                **masked,
            )
        summary = _summary(cfg, task, stages)
        (result / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _flat(cfg: PruneConfig) -> dict:
    """The options of ``cfg``, the nested sample, Fisher and tuning ones included (their names are distinct)."""
    nested = {"sample": cfg.sample, "fisher": cfg.fisher, "tuning": cfg.tuning}
    flat = {name: getattr(cfg, name) for name in PruneConfig.model_fields if name not in nested}
    for options in nested.values():
        flat.update({name: getattr(options, name) for name in type(options).model_fields})
    return flat


def _params(model: type[StageParams], flat: dict, skip: tuple[str, ...] = ()) -> StageParams:
    """A stage's parameters: the options of the one-shot prune that the stage takes (the same names)."""
    return model.model_validate({name: flat[name] for name in model.model_fields if name in flat and name not in skip})


def _summary(cfg: PruneConfig, task, stages: dict[str, dict]) -> dict:
    seconds = {name: info["seconds"] for name, info in stages.items()}
    search, export, tune = stages["search"], stages["export"], stages.get("tune", {})
    if "latency_table_seconds" in search:
        seconds = {"latency_table": search["latency_table_seconds"], **seconds}
        seconds["search"] = round(seconds["search"] - search["latency_table_seconds"], 3)
    evaluation = stages.get("evaluate", {})
    summary = {
        "model": cfg.model,
        "task": task.name,
        "metric": task.metric,
        **{key: evaluation[key] for key in _METRICS if key in evaluation},
        "constraint": cfg.constraint,
        "constraint_metric": cfg.constraint_metric,
        "flops_ratio": export["flops_ratio"],
        "flops_ratio_exported": export.get("flops_ratio_exported", export["flops_ratio"]),  # with the FFN padding
        "seq_len": search["seq_len"],
        "allocation": search.get("allocation"),
        **{k: search[k] for k in ("allocation_losses",) if k in search},  # allocation auto
        "params_before": export["params_before"],
        "params_after": export["params_after"],
        "heads_per_layer": export["heads_per_layer"],
        "neurons_per_layer": export["neurons_per_layer"],
        **{k: export[k] for k in ("kv_cache_bytes_per_token",) if k in export},  # decoders
        "fisher_rows": {k: stages["fisher"].get(k) for k in ("rows", "num_rows")},
        "calibration": stages["fisher"].get("calibration", "sample"),  # or generated (calib_generate)
        "rearrangement": {k: stages["rearrange"].get(k) for k in ("units_moved", "shrink")},
        "tuning": tune.get("tuning", []),
        "layers_tuned": tune.get("layers_tuned", 0),
        "tuning_inputs": tune.get("input_ridge"),  # the input projections' ridge (None: not refit)
        "tuning_examples": tune.get("examples", 0),  # the Fisher pass's may be fewer (fisher_samples)
        "validation": tune.get("validation", {}),
        **({"resplit": tune["resplit"]} if "resplit" in tune else {}),
        "device": str(resolve_device(cfg.device)),
        "seconds": seconds,
        "prune_seconds": round(sum(seconds.get(s, 0.0) for s in _PRUNE_STAGES), 3),
    }
    if "latency_ratio_fitted" in search:
        summary["latency_ratio_fitted"] = search["latency_ratio_fitted"]
    summary["warnings"] = [w for info in stages.values() for w in info.get("warnings", [])]
    return summary


def format_summary(summary: dict) -> str:
    """A short human summary of a prune run."""
    checks = "".join(
        f", {stage} {'kept' if check['accepted'] else 'rejected'} on held-out loss"
        for stage, check in summary["validation"].items()
    )
    exported = summary.get("flops_ratio_exported", summary["flops_ratio"])
    padded = f" ({exported:.3f} with the FFN padding)" if f"{exported:.3f}" != f"{summary['flops_ratio']:.3f}" else ""
    ridge = summary.get("tuning_inputs")
    inputs = f", input projections too (ridge {ridge:g})" if ridge is not None else ""
    lines = [
        f"fastprune: {summary['model']} on {summary['task']} at {summary['constraint_metric']} "
        f"constraint {summary['constraint']}",
        f"  FLOPs kept {summary['flops_ratio']:.3f}{padded}; parameters {summary['params_before']:,} -> "
        f"{summary['params_after']:,}; heads/layer {summary['heads_per_layer']}",
        f"  blocks tuned {summary['layers_tuned']} of {len(summary['tuning'])}{inputs}{checks}; "
        f"prune time {summary['prune_seconds']:.1f} s on {summary['device']}",
    ]
    tuned = [r for r in summary["tuning"] if r["tuned"]]
    if tuned:
        lines.append(
            "  reconstruction error fell: "
            + ", ".join(
                f"L{r['layer']} {'attn' if r['block'] == 'attention' else 'ffn'} "
                f"-{max(0.0, 100 * (1 - r['error_after'] / r['error_before'])) if r['error_before'] else 0:.0f}%"
                for r in tuned
            )
        )
    if summary.get("metric_before") is not None:
        stages = [
            ("before", "metric_before"),
            ("search", "metric_search"),
            ("rearranged", "metric_rearranged"),
            ("after (exported)", "metric_after"),
        ]
        parts = [f"{name} {summary[key]:.2f}" for name, key in stages if summary.get(key) is not None]
        lines.append(f"  {summary['metric']}: " + ", ".join(parts))
    lines += [f"  WARNING: {w}" for w in summary.get("warnings", [])]
    return "\n".join(lines)
