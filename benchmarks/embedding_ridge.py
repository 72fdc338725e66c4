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
from embedding_bench import DATA, MODELS

from fastprune.cli import main as cli

RESULTS = Path(__file__).resolve().parent / "results" / "embedding_ridge.jsonl"


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


def table(records: list[dict]) -> str:
    """Mean STS-B Spearman over the seeds run, one row per (model, variant), one column per FLOPs kept."""
    budgets = sorted({r["constraint"] for r in records})
    lines = ["| model | variant | " + " | ".join(f"FLOPs {c}" for c in budgets) + " |", "|---" * (len(budgets) + 2) + "|"]
    for model, variant in dict.fromkeys((r["model"], r["variant"]) for r in records):
        cells = []
        for c in budgets:
            got = [r["fastprune"] for r in records if (r["model"], r["variant"], r["constraint"]) == (model, variant, c)]
            cells.append(f"{statistics.fmean(got):.2f} (n={len(got)})" if got else "-")
        lines.append(f"| {model} | {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
    print(table([json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]))


if __name__ == "__main__":
    main()
