"""Sentence-embedding models pruned by fastprune: STS-B dev Spearman (cosine) against the FLOPs kept, with baselines.

For each model, seed and FLOPs constraint, ``fastprune prune --task embedding`` (the defaults: label-free Fisher over
STS-B train pairs, search, rearrangement, refit tuning with the budget re-split) is run end to end and timed; the
baselines are evaluated at the same constraint on the dense model: random, weight-magnitude and uniform-Fisher masks
(:mod:`fastprune.common.method.baselines`, no tuning) and dropping the top layers (the encoder truncated to its first
``floor(C * L)`` layers, what people do by hand). With ``--speed`` the exported model's latency is measured against
the dense one (batch 32, sequence 128, this machine). Every run is appended to ``results/embedding.jsonl``; a table
is printed and ``results/embedding.md`` rewritten from the JSONL, one table per setting: ``--flags`` (extra prune
flags, recorded) makes another; the runs recorded before the embedding task's refit ridge became ``auto`` carry
``--tuning-ridge 0.01``, their default then.

    .venv/bin/python benchmarks/embedding_bench.py --model minilm --constraints 0.5 --seeds 0 --speed
    .venv/bin/python benchmarks/embedding_bench.py --model mpnet --constraints 0.3 0.4 0.5 0.6 0.7 0.8 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import shlex
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from fastprune.common.method.baselines import magnitude_masks, random_masks, uniform_masks
from fastprune.common.method.fisher import collect_mask_gradients
from fastprune.common.model.arch import _get, adapter_for
from fastprune.common.model.export import load_pruned
from fastprune.common.model.loading import load_model
from fastprune.common.model.masks import pruning_applied
from fastprune.common.tasks.data import sample_dataset
from fastprune.common.tasks.spec import get_task
from suite_tasks import BASES, SHARED

from fastprune.cli import main as cli

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "embedding.jsonl"
DATA = SHARED / "glue" / "STS-B"
MODELS = BASES  # name -> the pretrained sentence-transformers folder (MPNet assembled from its wheels once)
TASK = get_task("embedding")
log = logging.getLogger("embedding_bench")


def drop_top_layers(model: torch.nn.Module, constraint: float) -> torch.nn.Module:
    """The encoder truncated to its first ``floor(constraint * L)`` layers (every layer costs the same)."""
    adapter = adapter_for(model)
    keep = int(constraint * adapter.dims(model.config).num_layers + 1e-9)
    short = copy.deepcopy(model)
    parent_path, _, leaf = adapter.layers.rpartition(".")
    parent = _get(short.base_model, parent_path) if parent_path else short.base_model
    setattr(parent, leaf, torch.nn.ModuleList(list(getattr(parent, leaf))[:keep]))
    return short


def run(args: argparse.Namespace, name: str, work: Path) -> list[dict[str, Any]]:
    source = MODELS[name]()
    model, tokenizer = load_model(source, TASK)
    dev = TASK.load_data(args.dev, "validation")
    records = []
    train = TASK.load_data(args.train)
    earlier = recorded_baselines(name, args.num_samples) if args.reuse_baselines else {}
    for seed in args.seeds:
        sample = sample_dataset(train, args.num_samples, seed)  # as the sample stage draws it
        grads = None
        if any((seed, c) not in earlier for c in args.constraints):  # the uniform baseline needs them
            grads = collect_mask_gradients(model, TASK.batches(sample, tokenizer), progress=False, seed=seed, task=TASK)
        for constraint in args.constraints:
            out = work / f"{name}-s{seed}-c{constraint}"
            start = time.perf_counter()
            code = cli(
                [
                    "prune",
                    "--model",
                    str(source),
                    "--task",
                    "embedding",
                    "--train-data",
                    str(args.train),
                    "--dev-data",
                    str(args.dev),
                    "--constraint",
                    str(constraint),
                    "--num-samples",
                    str(args.num_samples),
                    "--seed",
                    str(seed),
                    "--output",
                    str(out),
                    "--overwrite",
                    "--no-eval-stages",
                    *shlex.split(args.flags),
                ]
            )
            if code != 0:
                raise SystemExit(f"fastprune prune failed for {name} seed {seed} constraint {constraint}")
            wall = time.perf_counter() - start
            summary = json.loads((out / "summary.json").read_text())
            seq_len = summary["seq_len"]
            scores = earlier.get((seed, constraint)) or baseline_scores(
                model, tokenizer, dev, grads, constraint, seq_len, seed
            )
            record = {
                "model": name,
                "seed": seed,
                "constraint": constraint,
                "num_samples": args.num_samples,
                **({"flags": args.flags} if args.flags else {}),
                "dense": summary["metric_before"],
                "fastprune": summary["metric_after"],
                **{
                    k: summary[k] for k in ("metric_search", "metric_rearranged", "metric_tuned_masked") if k in summary
                },
                "flops_ratio": summary["flops_ratio"],
                **{k: summary[k] for k in ("allocation", "allocation_losses") if summary.get(k)},  # auto's choice
                "prune_seconds": summary.get("prune_seconds"),
                "wall_seconds": round(wall, 1),
                **scores,
                "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            if args.compare_objectives:
                record |= compare_objectives(model, tokenizer, sample, dev, constraint, seq_len, seed)
            if args.speed:
                record |= speed(model, out / "model")
            records.append(record)
            RESULTS.parent.mkdir(exist_ok=True)
            with RESULTS.open("a") as f:
                f.write(json.dumps(record) + "\n")
            print(table([record]), flush=True)
            render()
    return records


def baseline_scores(model, tokenizer, dev, grads, constraint: float, seq_len: float, seed: int) -> dict[str, float]:
    """STS-B dev Spearman of each baseline at ``constraint`` (``grads``: the dense model's Fisher on the sample)."""
    dims = adapter_for(model).dims(model.config)
    baselines = {
        "random": random_masks(dims, seq_len, constraint, seed),
        "magnitude": magnitude_masks(model, seq_len, constraint),
        "uniform": uniform_masks(grads.head_importance(), grads.neuron_importance(), dims, seq_len, constraint),
    }
    scores = {}
    for baseline, masks in baselines.items():
        with pruning_applied(model, masks, "cpu"):
            scores[baseline] = TASK.evaluate(model, tokenizer, dev)["spearman_cosine"]
    scores["drop-top-layers"] = TASK.evaluate(drop_top_layers(model, constraint), tokenizer, dev)["spearman_cosine"]
    return scores


def recorded_baselines(name: str, num_samples: int) -> dict[tuple[int, float], dict[str, float]]:
    """The baselines' scores already in the JSONL, by (seed, constraint): they depend on the model, seed, budget and
    sample only, not on the prune flags."""
    found: dict[tuple[int, float], dict[str, float]] = {}
    for line in RESULTS.read_text().splitlines() if RESULTS.exists() else []:
        r = json.loads(line)
        if r["model"] == name and r["num_samples"] == num_samples:
            found[(r["seed"], r["constraint"])] = {m: r[m] for m in METHODS[1:]}
    return found


def compare_objectives(model, tokenizer, sample, dev, constraint: float, seq_len: float, seed: int) -> dict:
    """STS-B dev Spearman after search + rearrangement with the Fisher of each label-free objective."""
    import dataclasses

    from fastprune.common.method.rearrange import rearrange_masks
    from fastprune.common.stages.runners import search_masks

    dims, out = adapter_for(model).dims(model.config), {}
    for objective in ("contrastive", "gaussian"):
        task = dataclasses.replace(TASK, objective=objective)
        grads = collect_mask_gradients(model, task.batches(sample, tokenizer), progress=False, seed=seed, task=task)
        masks = rearrange_masks(search_masks(grads, dims, constraint, seq_len), grads)
        with pruning_applied(model, masks, "cpu"):
            out[f"rearranged_{objective}"] = task.evaluate(model, tokenizer, dev)["spearman_cosine"]
    return out


def speed(dense: torch.nn.Module, folder: Path) -> dict[str, float]:
    from fastprune.common.model.timing import profile_models

    pruned, _ = load_pruned(folder)
    profile = profile_models({"dense": dense, "pruned": pruned}, (32,), (128,), "cpu", ("float32",), 10, 2)
    first, second = profile.entries[:2]
    return {"latency_dense_ms": first.p50_ms, "latency_pruned_ms": second.p50_ms, "speedup": second.speedup}


def table(records: list[dict[str, Any]]) -> str:
    columns: tuple[str, ...] = ("dense", "fastprune", "random", "magnitude", "uniform", "drop-top-layers")
    columns += tuple(c for c in ("rearranged_contrastive", "rearranged_gaussian") if all(c in r for r in records))
    lines = [
        "| model | seed | FLOPs | " + " | ".join(columns) + " | prune s | speed-up |",
        "|---" * (len(columns) + 5) + "|",
    ]
    for r in records:
        cells = " | ".join(f"{r[c]:.2f}" for c in columns)
        speedup = f"{r['speedup']:.2f}x" if "speedup" in r else "-"
        lines.append(
            f"| {r['model']} | {r['seed']} | {r['constraint']} | {cells} | {r['prune_seconds']:.0f} | {speedup} |"
        )
    return "\n".join(lines)


METHODS = ("fastprune", "random", "magnitude", "uniform", "drop-top-layers")


def means(records: list[dict[str, Any]]) -> str:
    """Mean and spread over the seeds of each (model, FLOPs): the table the targets are read from."""
    lines = [
        "| FLOPs | seeds | dense | " + " | ".join(METHODS) + " | best baseline | prune s (median) | speed-up |",
        "|---" * (len(METHODS) + 6) + "|",
    ]
    for constraint in sorted({r["constraint"] for r in records}):
        runs = [r for r in records if r["constraint"] == constraint]
        mean = {m: statistics.fmean(r[m] for r in runs) for m in METHODS}
        spread = {m: (max(r[m] for r in runs) - min(r[m] for r in runs)) / 2 for m in METHODS}
        cells = " | ".join(
            (f"**{mean[m]:.2f}**" if mean[m] == max(mean.values()) else f"{mean[m]:.2f}")
            + (f" ±{spread[m]:.2f}" if len(runs) > 1 else "")
            for m in METHODS
        )
        best = max(METHODS[1:], key=mean.__getitem__)
        speedups = [r["speedup"] for r in runs if "speedup" in r]
        speedup = f"{statistics.median(speedups):.2f}x" if speedups else "-"
        seconds = statistics.median(r["prune_seconds"] for r in runs)
        lines.append(
            f"| {constraint} | {len(runs)} | {runs[0]['dense']:.2f} | {cells} | {best} | {seconds:.0f} | {speedup} |"
        )
    return "\n".join(lines)


def plot(records: list[dict[str, Any]], path: Path) -> None:
    """Spearman against FLOPs kept, one line per method (mean over seeds, bars: min to max), dense as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = sorted({r["constraint"] for r in records})
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method in METHODS:
        values = [[r[method] for r in records if r["constraint"] == c] for c in budgets]
        mid = [statistics.fmean(v) for v in values]
        err = [  # clamped: the mean of equal values can sit an ulp outside them
            [max(0.0, m - min(v)) for m, v in zip(mid, values, strict=True)],
            [max(0.0, max(v) - m) for m, v in zip(mid, values, strict=True)],
        ]
        ax.errorbar(budgets, mid, yerr=err, marker="o", capsize=3, label=method, lw=2 if method == "fastprune" else 1)
    ax.axhline(records[0]["dense"], color="grey", ls="--", lw=1, label="dense")
    ax.set(xlabel="FLOPs kept", ylabel="STS-B dev Spearman (cosine) x100", title=f"{records[0]['model']}: pruned")
    ax.set_ylim(bottom=max(0.0, min(r["drop-top-layers"] for r in records) - 5))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    partial = path.with_name(path.name + ".partial.png")
    fig.savefig(partial, dpi=120)
    plt.close(fig)
    partial.replace(path)


def render() -> None:
    """``results/embedding.md`` (means over seeds, then every run) and one plot per model."""
    records = [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]
    parts = ["# Sentence embeddings: STS-B dev Spearman (cosine, percent) against FLOPs kept", "", __doc__.strip(), ""]
    for name, flags in dict.fromkeys((r["model"], r.get("flags", "")) for r in records):
        mine = [r for r in records if (r["model"], r.get("flags", "")) == (name, flags)]
        suffix = "_" + "_".join(flags.replace("-", " ").split()) if flags else ""
        picture = RESULTS.parent / f"embedding_{name}{suffix}.png"
        plot(mine, picture)
        title = f"## {name}" + (f" (with `{flags}`)" if flags else "")
        parts += [title, "", "Mean over seeds (± half the range):", "", means(mine), ""]
        parts += [f"![{name}]({picture.name})", "", "Every run:", "", table(mine), ""]
    (RESULTS.parent / "embedding.md").write_text("\n".join(parts))


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", nargs="+", choices=list(MODELS), default=["minilm"])
    p.add_argument("--constraints", nargs="+", type=float, default=[0.5])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--num-samples", type=int, default=512)
    p.add_argument("--train", type=Path, default=DATA / "train.tsv")
    p.add_argument("--dev", type=Path, default=DATA / "dev.tsv")
    p.add_argument("--work", type=Path, default=Path.home() / ".cache" / "fastprune" / "embedding_bench")
    p.add_argument("--speed", action="store_true", help="time the exported model against the dense one")
    p.add_argument("--flags", default="", help="extra `fastprune prune` flags (recorded; a table per setting)")
    p.add_argument(
        "--reuse-baselines",
        action="store_true",
        help="take the baselines' scores from an earlier record of the same model, seed, FLOPs and sample size",
    )
    p.add_argument("--render", action="store_true", help="only rewrite results/embedding.md and the plots")
    p.add_argument(
        "--compare-objectives",
        action="store_true",
        help="also evaluate search + rearrangement (no tuning) with each label-free Fisher objective",
    )
    return p.parse_args(argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    arguments = parse()
    if arguments.render:
        raise SystemExit(render())
    torch.set_num_threads(2)
    everything = [r for name in arguments.model for r in run(arguments, name, arguments.work)]
    print(table(everything))
