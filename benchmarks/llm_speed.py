"""LLM speed of the exported models: SmolLM2-135M-Instruct pruned through the CLI (the README's example settings) at
each FLOPs budget, then each exported folder timed against the dense model for a prefill (batch 1, 512 tokens, the
last position's logits) and for one decoding step (one token over a 512-token key/value cache), with the product's
own profiler (``fastprune profile``'s, ``common/model/timing.py``).

    .venv/bin/python benchmarks/llm_speed.py --constraints 0.9 0.8 0.7 0.6 0.5 --work /tmp/llm_speed
    .venv/bin/python benchmarks/llm_speed.py --work /tmp/llm_speed --device cuda --repeats 50   # on a GPU

A budget whose folder ``<work>/smollm2-<C>`` already holds a finished prune (its ``summary.json``) is not pruned
again. The models are timed interleaved (dense, pruned, dense, ...) after a warm-up; medians are reported, the
speedup is the median of the per-repeat ratios. Writes ``benchmarks/results/llm_speed_smollm2_<device>.md`` and a
JSON beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see latency_bench.py: spinning threads on a shared CPU

import torch  # noqa: E402
from fastprune.common.model.export import load_pruned  # noqa: E402
from fastprune.common.model.timing import device_name, profile_models  # noqa: E402
from llm_latency import REPO, parsed, plain_args, timing_parser, uptime, write_report  # noqa: E402

PRUNE = [  # the README's SmolLM2 example, less --constraint and --output (paths from the repository's root)
    *("--task", "causal-lm", "--train-data", "fastprune/data/text/macbeth_gut.txt"),
    *("--dev-data", "fastprune/data/text/britannica-11th-head.txt", "--num-samples", "128", "--fisher-samples", "64"),
    *("--max-length", "128", "--calib-generate", "16", "--fisher-labels", "model", "--allocation", "block"),
    "--no-tuning-resplit",
]


def prune(model: Path, constraint: float, folder: Path) -> None:
    """``fastprune prune`` at ``constraint`` into ``folder``, in a process of its own."""
    command = [str(Path(sys.executable).parent / "fastprune"), "prune", "--model", str(model), *PRUNE]
    command += ["--constraint", str(constraint), "--output", str(folder.resolve())]
    print(f"pruning at FLOPs {constraint}: {' '.join(command)}", flush=True)
    subprocess.run(command, check=True, cwd=REPO)


def timed(dense: torch.nn.Module, pruned: torch.nn.Module, args: argparse.Namespace, mode: str) -> dict[str, Any]:
    repeats = args.repeats if mode == "prefill" else args.decode_repeats
    result = profile_models(
        {"dense": dense, "pruned": pruned},
        (args.batch_size,),
        (args.seq_len,),
        args.device,
        ("float32",),
        repeats,
        args.warmup,
        vocab_size=dense.config.vocab_size,
        modes=(mode,),
    )
    figures = result.comparison("dense", "pruned")
    return {**figures, "noisy": any(e.noisy for e in result.entries)}


def measure(folder: Path, dense: torch.nn.Module, args: argparse.Namespace) -> dict[str, Any]:
    summary = json.loads((folder / "summary.json").read_text())
    pruned = load_pruned(folder / "model", args.device, with_tokenizer=False)[0]
    row = {
        "constraint": summary["constraint"],
        "flops_kept": summary["flops_ratio"],
        "flops_kept_exported": summary["flops_ratio_exported"],
        "params": [summary["params_before"], summary["params_after"]],
        "kv_bytes_per_token": summary["kv_cache_bytes_per_token"],
        "perplexity": [summary["metric_before"], summary["metric_after"]],
        "prune_seconds": summary["prune_seconds"],
    }
    for mode in ("prefill", "decode"):
        row[mode] = timed(dense, pruned, args, mode)
        print(f"FLOPs {row['constraint']} {mode}: {json.dumps(row[mode])}", flush=True)
    return row


def render(result: dict[str, Any]) -> str:
    a = result["args"]
    lines = [
        f"# LLM speed of the exported models: SmolLM2-135M-Instruct ({result['device']})",
        "",
        f"Each budget pruned through the CLI (`fastprune prune --model M {' '.join(PRUNE)} --constraint C`), the "
        "exported folder loaded as `fastprune profile` loads it and timed "
        f"against the dense model: a prefill of {a['seq_len']} tokens (batch {a['batch_size']}, the last position's "
        f"logits, as generation runs it) and one decoding step (one token over a {a['seq_len']}-token key/value "
        f"cache). Medians of {a['repeats']} (prefill) and {a['decode_repeats']} (decode) interleaved repeats after "
        f"{a['warmup']} warm-up calls; torch threads {a['threads']}.",
        "",
        f"Load before: `{result['uptime_before']}`; after: `{result['uptime_after']}`.",
        "",
        "| FLOPs asked | FLOPs kept (exported) | parameters | KV bytes/token | perplexity (dev) | prune s | "
        "prefill dense / pruned ms | prefill speedup (p10-p90) | decode dense / pruned ms | decode speedup (p10-p90) "
        "| |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in result["rows"]:
        cells = [f"{r['constraint']:g}", f"{r['flops_kept']:.3f} ({r['flops_kept_exported']:.3f})"]
        cells.append(f"{r['params'][0] / 1e6:.1f}M -> {r['params'][1] / 1e6:.1f}M")
        cells.append(f"{r['kv_bytes_per_token']['dense']:,} -> {r['kv_bytes_per_token']['pruned']:,}")
        cells.append(f"{r['perplexity'][0]:.2f} -> {r['perplexity'][1]:.2f}")
        cells.append(f"{r['prune_seconds']:.0f}")
        for mode in ("prefill", "decode"):
            m = r[mode]
            cells.append(f"{m['latency_before_ms']:.1f} / {m['latency_after_ms']:.1f}")
            cells.append(f"**{m['speedup']:.2f}x** ({m['speedup_p10']:.2f}-{m['speedup_p90']:.2f})")
        noisy = r["prefill"]["noisy"] or r["decode"]["noisy"]
        lines.append("| " + " | ".join(cells) + f" | {'noisy' if noisy else ''} |")
    lines += [
        "",
        "FLOPs are the decoder layers' multiply-accumulates per token at the calibration length (128); the exported "
        "model keeps whole key/value groups and pads MLP widths to multiples of 8, hence its own figure. The "
        "embeddings, the final norm and the last position's logits are not pruned. `prune s`: the CLI's own figure "
        "(`summary.json`: Fisher with the generation, search, rearrangement, tuning; not the evaluations).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = timing_parser(__doc__)
    parser.add_argument("--constraints", type=float, nargs="+", default=[0.9, 0.8, 0.7, 0.6, 0.5])
    parser.add_argument("--work", type=Path, required=True, help="the pruned folders, <work>/smollm2-<C>")
    args = parsed(parser)
    bad = [c for c in args.constraints if not 0 < c < 1]
    if bad:
        raise SystemExit(f"--constraints {bad}: each must be a FLOPs fraction between 0 and 1")
    for c in args.constraints:  # all pruning first, so that the timing below runs with no prune beside it
        folder = args.work / f"smollm2-{c:g}"
        if not (folder / "summary.json").is_file():
            prune(args.model, c, folder)
    torch.set_num_threads(args.threads)
    before = uptime()
    dense = load_pruned(args.model, args.device, with_tokenizer=False)[0]
    rows = [measure(args.work / f"smollm2-{c:g}", dense, args) for c in args.constraints]
    device = torch.device(args.device)
    result = {
        "device": device_name(device),
        "args": plain_args(args),
        "uptime_before": before,
        "uptime_after": uptime(),
        "rows": rows,
    }
    write_report(result, render(result), args.out / "llm_speed_smollm2", device)


if __name__ == "__main__":
    main()
