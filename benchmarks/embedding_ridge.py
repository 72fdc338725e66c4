"""The embedding task's refit ridge: STS-B dev Spearman of ``fastprune prune --task embedding`` per ridge.

Each run is the embedding benchmark's prune (all-MiniLM-L6-v2 or all-mpnet-base-v2, 512 STS-B train pairs, the
defaults) with one ``--tuning-ridge`` (or any extra flags) changed; every run is appended to
``results/embedding_ridge.jsonl`` and a table of the mean over seeds per (variant, FLOPs) printed.

    .venv/bin/python benchmarks/embedding_ridge.py --model minilm --constraints 0.3 0.5 0.8 --seeds 0 1 \
        --variants "--tuning-ridge 0.01" "--tuning-ridge 1" "--tuning-ridge auto"
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from embedding_bench import DATA, METHODS, MODELS

from fastprune.cli import main as cli

RESULTS = Path(__file__).resolve().parent / "results" / "embedding_ridge.jsonl"
BENCH = RESULTS.with_name("embedding.jsonl")
BASELINES = METHODS[1:]


def run_one(name: str, seed: int, constraint: float, variant: str, work: Path, num_samples: int) -> dict:
    out = work / f"ridge-{name}-s{seed}-c{constraint}"
    start = time.perf_counter()
    flags = ["prune", "--model", str(MODELS[name]()), "--task", "embedding"]
    flags += ["--train-data", str(DATA / "train.tsv"), "--dev-data", str(DATA / "dev.tsv")]
    flags += ["--constraint", str(constraint), "--num-samples", str(num_samples), "--seed", str(seed)]
    flags += ["--output", str(out), "--overwrite", "--no-eval-stages", *shlex.split(variant)]
    if cli(flags) != 0:
        raise SystemExit(f"fastprune prune failed: {flags}")
    summary = json.loads((out / "summary.json").read_text())
    return {
        "model": name,
        "variant": variant or "default",
        "seed": seed,
        "constraint": constraint,
        "dense": summary["metric_before"],
        "fastprune": summary["metric_after"],
        "prune_seconds": summary["prune_seconds"],
        "wall_seconds": round(time.perf_counter() - start, 1),
        "load": Path("/proc/loadavg").read_text().split()[0],
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def table(records: list[dict], bench: list[dict]) -> str:
    """Mean STS-B Spearman over the seeds run, one row per (model, variant), one column per FLOPs kept; the last row
    of each model: the best baseline of the embedding benchmark (no tuning, so any ridge) over the same seeds."""
    budgets = sorted({r["constraint"] for r in records})
    lines = [
        "| model | variant | " + " | ".join(f"FLOPs {c}" for c in budgets) + " |",
        "|---" * (len(budgets) + 2) + "|",
    ]

    def mean(values: list[float]) -> str:
        return f"{statistics.fmean(values):.2f} (n={len(values)})" if values else "-"

    for model in dict.fromkeys(r["model"] for r in records):
        seeds = {c: {r["seed"] for r in records if (r["model"], r["constraint"]) == (model, c)} for c in budgets}
        for variant in dict.fromkeys(r["variant"] for r in records if r["model"] == model):
            runs = [r for r in records if (r["model"], r["variant"]) == (model, variant)]
            cells = [mean([r["fastprune"] for r in runs if r["constraint"] == c]) for c in budgets]
            lines.append(f"| {model} | {variant} | " + " | ".join(cells) + " |")
        old, baseline = [], []
        for c in budgets:
            same = [r for r in bench if (r["model"], r["constraint"]) == (model, c) and r["seed"] in seeds[c]]
            best = max(BASELINES, key=lambda b: statistics.fmean(r[b] for r in same)) if same else None
            old.append(mean([r["fastprune"] for r in same]))
            baseline.append(f"{mean([r[best] for r in same])} {best}" if best else "-")
        lines.append(f"| {model} | ridge 0.01 (embedding.jsonl) | " + " | ".join(old) + " |")
        lines.append(f"| {model} | best baseline (embedding.jsonl) | " + " | ".join(baseline) + " |")
    return "\n".join(lines)


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=list(MODELS), default="minilm")
    p.add_argument("--constraints", nargs="+", type=float, default=[0.3, 0.5, 0.8])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--variants", nargs="+", default=["--tuning-ridge 1", "--tuning-ridge auto"])
    p.add_argument("--num-samples", type=int, default=512)
    p.add_argument("--work", type=Path, default=Path.home() / ".cache" / "fastprune" / "embedding_bench")
    p.add_argument("--table", action="store_true", help="only print the table of the recorded runs")
    args = p.parse_args()
    if not args.table:
        torch.set_num_threads(2)
        for seed in args.seeds:
            for constraint in args.constraints:
                for variant in args.variants:
                    record = run_one(args.model, seed, constraint, variant, args.work, args.num_samples)
                    with RESULTS.open("a") as f:
                        f.write(json.dumps(record) + "\n")
                    print(json.dumps(record), flush=True)
    print(table(_read(RESULTS), _read(BENCH)))


if __name__ == "__main__":
    main()
