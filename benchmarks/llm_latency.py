"""LLM latency: SmolLM2-135M-Instruct dense vs sliced (about 0.6 of the MLP neurons and 2 of the 3 key/value groups in
every layer, all query heads of the kept groups) for a prefill (batch 1, 512 tokens) and for one decoding step (one
token over a 512-token key/value cache), and what the latency table predicts for the same cut.

    .venv/bin/python benchmarks/llm_latency.py --threads 2
    .venv/bin/python benchmarks/llm_latency.py --device cuda --repeats 50    # on a GPU

Both models are timed interleaved (dense, sliced, dense, ...) after a warm-up; the medians are reported, and the
speedup is the median of the per-repeat ratios. The table times blocks only (attention and MLP): its predicted
speedup is the ratio of its dense to its sliced blocks. Which units are kept does not matter for speed (this
measures latency, not quality). Writes ``benchmarks/results/llm_latency_smollm2_<device>.md`` and a JSON beside it.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import statistics
import subprocess
from collections.abc import Callable
from pathlib import Path

# On a shared CPU, OpenMP threads that spin-wait lose whole scheduler slices on every small op (see latency_bench.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from fastprune.common.method.latency_search import latency_ratio, masks_latency  # noqa: E402
from fastprune.common.method.latency_table import LatencyTable, build_lut  # noqa: E402
from fastprune.common.model import spread  # noqa: E402
from fastprune.common.model.arch import adapter_for, padded_size  # noqa: E402
from fastprune.common.model.masks import Masks  # noqa: E402
from fastprune.common.model.timing import device_name, model_call, random_inputs, time_interleaved  # noqa: E402
from torch import nn  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SMOLLM2 = Path.home() / ".cache" / "fastprune" / "models" / "smollm2-135m-instruct"


def sliced_copy(model: nn.Module, groups: int, neurons: int) -> tuple[nn.Module, Masks]:
    """The model with the first ``groups`` key/value groups (all their query heads) and ``neurons`` MLP neurons of
    every layer, and the masks that say so."""
    adapter = adapter_for(model)
    dims = adapter.dims(model.config)
    masks = Masks.ones(dims)
    masks.head[:, groups * dims.group_size :] = 0
    masks.neuron[:, neurons:] = 0
    sliced = copy.deepcopy(model)
    for layer in adapter.layer_modules(sliced):
        adapter.slice_layer(layer, torch.arange(groups * dims.group_size), torch.arange(neurons), dims.head_size)
    return sliced.eval(), masks


def measure(calls: list[Callable[[], object]], device: torch.device, repeats: int, warmup: int) -> dict:
    with torch.inference_mode():
        dense, pruned = time_interleaved(calls, device, repeats, warmup)
    speedup = spread.paired_speedup(dense, pruned)
    return {
        "dense_ms": statistics.median(dense),
        "sliced_ms": statistics.median(pruned),
        "speedup": speedup.median,
        "speedup_p10_p90": [speedup.p10, speedup.p90],
        "noisy": speedup.noisy or spread.spread(dense).noisy or spread.spread(pruned).noisy,
    }


def predicted(table: LatencyTable, masks: Masks) -> dict:
    blocks_dense, blocks_sliced = table.dense_ms(), masks_latency(masks, table)
    return {
        "table_blocks_dense_ms": blocks_dense,
        "table_blocks_sliced_ms": blocks_sliced,
        "table_blocks_ratio": latency_ratio(masks, table),
        "table_group_ms": table.group_ms,
        "table_seconds": table.build_seconds,
        "predicted_speedup": blocks_dense / blocks_sliced,
    }


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def plain_args(args: argparse.Namespace) -> dict:
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}


def write_report(result: dict, text: str, prefix: Path, device: torch.device) -> None:
    """Print ``text`` and write it to ``<prefix>_<device>.md``, ``result`` to ``.json`` beside it."""
    print(text)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", ("cpu" if device.type == "cpu" else device_name(device)).lower()).strip("-")
    stem = prefix.with_name(f"{prefix.name}_{slug}")
    stem.with_suffix(".md").write_text(text, encoding="utf-8")
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(f"wrote {stem}.md and .json")


def render(result: dict) -> str:
    a = result["args"]
    lines = [
        f"# LLM latency: SmolLM2-135M-Instruct dense vs sliced ({result['device']})",
        "",
        f"Sliced: {a['groups']} of 3 key/value groups ({result['heads']} of 9 query heads) and {result['neurons']} of "
        f"1536 MLP neurons in every layer. Batch {a['batch_size']}; prefill of {a['seq_len']} tokens; decode = one "
        f"token over a {a['seq_len']}-token cache. Medians of {a['repeats']} (prefill) and {a['decode_repeats']} "
        f"(decode) interleaved repeats after {a['warmup']} warm-up calls; the table: {a['table_repeats']} repeats "
        f"per block. torch threads: {a['threads']}.",
        "",
        f"Load before: `{result['uptime_before']}`; after: `{result['uptime_after']}`.",
        "",
        "| mode | dense ms | sliced ms | measured speedup (p10-p90) | table: blocks dense / sliced ms | "
        "table: group ms | predicted speedup | |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for mode, r in result["modes"].items():
        p10, p90 = r["speedup_p10_p90"]
        lines.append(
            f"| {mode} | {r['dense_ms']:.1f} | {r['sliced_ms']:.1f} | {r['speedup']:.2f}x ({p10:.2f}-{p90:.2f}) | "
            f"{r['table_blocks_dense_ms']:.1f} / {r['table_blocks_sliced_ms']:.1f} | {r['table_group_ms']:.2f} | "
            f"{r['predicted_speedup']:.2f}x | {'noisy' if r['noisy'] else ''} |"
        )
    lines += [
        "",
        "The table times blocks only (attention and MLP, per layer, summed over the 30 layers); the predicted "
        "speedup is its dense blocks over its sliced blocks. The table is timed after the models, so on a shared "
        "machine its absolute milliseconds follow the load of that moment: compare ratios. The rest of the model "
        "(embeddings, rotary, masks, the last position's logits) is not pruned.",
    ]
    return "\n".join(lines) + "\n"


def timing_parser(doc: str) -> argparse.ArgumentParser:
    """The options of the SmolLM2 timing benchmarks (this one and ``llm_speed.py``)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=SMOLLM2, help="an HF Llama folder (default: SmolLM2-135M)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=512, help="prefill length and decode cache length")
    parser.add_argument("--repeats", type=int, default=9, help="prefill repeats")
    parser.add_argument("--decode-repeats", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    return parser


def parsed(parser: argparse.ArgumentParser) -> argparse.Namespace:
    args = parser.parse_args()
    if not args.model.is_dir():
        raise SystemExit(f"no model folder at {args.model}: see ../shared/data/README.md for SmolLM2")
    return args


def main() -> None:
    parser = timing_parser(__doc__)
    parser.add_argument("--groups", type=int, default=2, help="key/value groups kept per layer")
    parser.add_argument("--neuron-fraction", type=float, default=0.6, help="MLP neurons kept per layer")
    parser.add_argument("--table-repeats", type=int, default=5)
    args = parsed(parser)
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    before = uptime()
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).to(device).eval()
    dims = adapter_for(model).dims(model.config)
    neurons = padded_size(round(args.neuron_fraction * dims.intermediate_size), dims.intermediate_size)
    sliced, masks = sliced_copy(model, args.groups, neurons)
    inputs = random_inputs(args.batch_size, args.seq_len, model.config.vocab_size, device)
    modes: dict[str, dict] = {}
    for mode in ("prefill", "decode"):
        with torch.inference_mode():
            calls = [model_call(m, inputs, mode) for m in (model, sliced)]
        timed = measure(calls, device, args.repeats if mode == "prefill" else args.decode_repeats, args.warmup)
        table = build_lut(
            model.config, device, args.batch_size, args.seq_len, mode=mode, repeats=args.table_repeats, warmup=1
        )
        modes[mode] = {**timed, **predicted(table, masks)}
        print(mode, json.dumps(modes[mode]), flush=True)
    result = {
        "device": device_name(device),
        "args": plain_args(args),
        "heads": args.groups * dims.group_size,
        "neurons": neurons,
        "uptime_before": before,
        "uptime_after": uptime(),
        "modes": modes,
    }
    write_report(result, render(result), args.out / "llm_latency_smollm2", device)


if __name__ == "__main__":
    main()
