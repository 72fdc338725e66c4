"""Deployment benchmark: the fine-tuned SST-2 MiniLM (the demo's, ``fastprune.defaults.finetuned_minilm``), dense and
pruned at FLOPs 0.5 and 0.7 (fastprune's defaults), each in torch, as ONNX fp32 and as ONNX int8 (onnxruntime dynamic
quantization, per channel and per tensor): accuracy on the SST-2 dev set and latency at batch 1 and 32 on this CPU.

    .venv/bin/python benchmarks/onnx_bench.py                      # about 15 minutes on 2 busy cores
    .venv/bin/python benchmarks/onnx_bench.py --threads 2 --repeats 40 12

All variants of one batch size are timed interleaved (one call of each in turn, repeated): medians, the p10-p90
range over the repeats, and speedups as the median of per-repeat ratios to the dense torch model. The ONNX folders are
the ones ``fastprune onnx`` writes (``common/model/onnx_folder.py``), run through onnxruntime's CPU provider.
Pruned models and ONNX folders are cached under ``--workdir``. Writes ``benchmarks/results/onnx_minilm_cpu.md`` and a
JSON beside it.
Targets: pruned + int8 at least 3x faster than dense torch, at most 1 point of accuracy lost.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see latency_bench.py: sleeping idle threads on a shared CPU
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from fastprune.common.model import spread as timing  # noqa: E402
from fastprune.common.model.export import load_pruned  # noqa: E402
from fastprune.common.model.onnx_folder import OrtModel, build_onnx_folder  # noqa: E402
from fastprune.common.model.timing import device_name, random_inputs  # noqa: E402
from fastprune.common.tasks.data import load_task_data  # noqa: E402
from fastprune.common.tasks.evaluate import evaluate  # noqa: E402
from fastprune.common.tasks.spec import get_task  # noqa: E402

from fastprune.defaults import SST2_TRAIN, finetuned_minilm  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEV = REPO.parent / "shared" / "data" / "glue" / "SST-2" / "dev.tsv"
RUNTIMES = {
    "torch": None,
    "onnx fp32": ("none", True),
    "onnx int8 per-channel": ("int8", True),
    "onnx int8 per-tensor": ("int8", False),
}
TARGET_SPEEDUP, TARGET_DROP = 3.0, 1.0


def pruned_models(model: Path, constraints: list[float], work: Path, num_samples: int) -> dict[str, Path]:
    from fastprune.common.stages.config import PruneConfig, SampleConfig
    from fastprune.common.stages.prune import prune

    folders = {"dense": model}
    for c in constraints:
        out = work / f"pruned-{c:g}"
        if not (out / "summary.json").is_file():
            start = time.perf_counter()
            prune(
                PruneConfig(
                    model=str(model),
                    task="sst2",
                    train_file=str(SST2_TRAIN),
                    constraint=c,
                    sample=SampleConfig(num_samples=num_samples),
                    device="cpu",
                    progress=False,
                ),
                out,
            )
            print(f"pruned at FLOPs {c:g} in {time.perf_counter() - start:.0f} s", flush=True)
        folders[f"pruned {c:g}"] = out / "model"
    return folders


def onnx_folder(name: str, model: Path, quantize: str, per_channel: bool, work: Path) -> Path:
    out = work / "onnx" / f"{name.replace(' ', '-')}-{quantize}{'-pc' if per_channel else '-pt'}"
    if not (out / "fastprune_onnx.json").is_file():
        tmp = out.with_name(out.name + ".tmp")
        build_onnx_folder(model, tmp, quantize, per_channel)
        tmp.rename(out)
    return out


def variants(folders: dict[str, Path], work: Path, threads: int) -> dict[str, tuple[torch.nn.Module, dict]]:
    """Every (model, runtime) pair: the module to call and what it is."""
    out = {}
    for name, folder in folders.items():
        for runtime, spec in RUNTIMES.items():
            if spec is None:
                module = load_pruned(folder, with_tokenizer=False)[0].eval()
                params = sum(p.numel() for p in module.parameters())
                out[f"{name}, {runtime}"] = (module, {"model": name, "runtime": runtime, "parameters": params})
            else:
                onnx = onnx_folder(name, folder, *spec, work)
                size = (onnx / "model.onnx").stat().st_size
                out[f"{name}, {runtime}"] = (
                    OrtModel(onnx, threads),
                    {"model": name, "runtime": runtime, "onnx_mb": round(size / 2**20, 1)},
                )
    return out


def accuracy(runs: dict, tokenizer, dev) -> dict[str, float]:
    task = get_task("sst2")
    result = {}
    for key, (module, _) in runs.items():
        start = time.perf_counter()
        result[key] = evaluate(module, tokenizer, task, dev, "cpu", batch_size=64)["accuracy"]
        print(f"  {key}: accuracy {result[key]:.2f} ({time.perf_counter() - start:.0f} s)", flush=True)
    return result


def latency(runs: dict, batch: int, seq_len: int, repeats: int, warmup: int, vocab: int) -> list[timing.Timed]:
    inputs = random_inputs(batch, seq_len, vocab)
    inputs["token_type_ids"] = torch.zeros_like(inputs["input_ids"])
    calls = {key: (lambda m=module: m(**inputs)) for key, (module, _) in runs.items()}
    with torch.inference_mode():
        return timing.time_interleaved(calls, repeats, warmup)


def table(runs: dict, acc: dict, timed: dict[int, list[timing.Timed]]) -> list[str]:
    base = acc["dense, torch"]
    batches = sorted(timed)
    head = (
        ["model", "runtime", "accuracy", "drop"]
        + [f"b{b} p50 ms (p10-p90)" for b in batches]
        + [f"b{b} speedup (p10-p90)" for b in batches]
    )
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for key, (_, info) in runs.items():
        row = [info["model"], info["runtime"], f"{acc[key]:.2f}", f"{base - acc[key]:+.2f}"]
        found = {b: next(t for t in timed[b] if t.name == key) for b in batches}
        row += [found[b].latency_ms.text(2) for b in batches]
        row += [found[b].speedup.text(2, "x") for b in batches]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def targets(runs: dict, acc: dict, timed: dict[int, list[timing.Timed]]) -> list[str]:
    lines = []
    for key, (_, info) in runs.items():
        if info["model"] == "dense" or "int8" not in info["runtime"]:
            continue
        drop = acc["dense, torch"] - acc[key]
        speed = {b: next(t for t in timed[b] if t.name == key).speedup.median for b in sorted(timed)}
        ok = all(s >= TARGET_SPEEDUP for s in speed.values()) and drop <= TARGET_DROP
        lines.append(
            f"- {key}: "
            + ", ".join(f"batch {b} {s:.2f}x" for b, s in speed.items())
            + f", {drop:+.2f} points: **{'met' if ok else 'missed'}**"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--constraints", type=float, nargs="+", default=[0.5, 0.7])
    ap.add_argument("--threads", type=int, default=1, help="torch and onnxruntime intra-op threads")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--repeats", type=int, nargs="+", default=[40, 10], help="repeats per batch size")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--dev", type=Path, default=DEV)
    ap.add_argument("--model", type=Path, help="a fine-tuned SST-2 model folder (default: the demo's MiniLM)")
    ap.add_argument("--num-samples", type=int, default=2048, help="the pruning sample (fastprune's default)")
    ap.add_argument("--workdir", type=Path, default=REPO / "benchmarks" / "results" / "runs" / "onnx_bench")
    ap.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "onnx_minilm_cpu.md")
    args = ap.parse_args(argv)
    if len(args.repeats) != len(args.batch_sizes):
        ap.error("--repeats needs one value per batch size")
    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    model = args.model or finetuned_minilm()
    folders = pruned_models(model, args.constraints, args.workdir, args.num_samples)
    runs = variants(folders, args.workdir, args.threads)
    tokenizer = load_pruned(model)[1]
    dev = load_task_data(args.dev, get_task("sst2"), "validation")
    print(f"accuracy on {len(dev)} dev examples of {args.dev}", flush=True)
    acc = accuracy(runs, tokenizer, dev)
    timed = {}
    for batch, repeats in zip(args.batch_sizes, args.repeats, strict=True):
        start = time.perf_counter()
        timed[batch] = latency(runs, batch, args.seq_len, repeats, args.warmup, len(tokenizer))
        print(f"batch {batch}: {repeats} interleaved repeats in {time.perf_counter() - start:.0f} s", flush=True)
    load_after = os.getloadavg()
    rows = table(runs, acc, timed)
    lines = [
        f"# ONNX deployment: MiniLM on SST-2, {device_name('cpu')}",
        "",
        f"Model `{model}` (fine-tuned by `fastprune.defaults.finetuned_minilm`), pruned by `fastprune prune` "
        f"defaults ({args.num_samples} sample examples) at FLOPs "
        f"{', '.join(f'{c:g}' for c in args.constraints)}; accuracy on the {len(dev)} SST-2 dev examples; "
        f"latency of random token ids, sequence length {args.seq_len}, "
        f"{args.threads} thread(s) for torch and onnxruntime, all variants interleaved, repeats "
        f"{dict(zip(args.batch_sizes, args.repeats, strict=True))} per batch size, medians with p10-p90; "
        "speedups against dense torch (median of per-repeat ratios).",
        "",
        f"Load average (1, 5, 15 min) before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, after: "
        f"{load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f} on {os.cpu_count()} cores: "
        + ("measured under load from other processes." if max(load[0], load_after[0]) > 1.0 else "a quiet machine."),
        "",
        *rows,
        "",
        f"Targets (pruned + int8 at least {TARGET_SPEEDUP:g}x faster than dense torch at every batch size, at "
        f"most {TARGET_DROP:g} point lost):",
        "",
        *targets(runs, acc, timed),
        "",
    ]
    text = "\n".join(lines)
    print("\n" + text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    record = {
        "load_before": load,
        "load_after": load_after,
        "threads": args.threads,
        "seq_len": args.seq_len,
        "accuracy": acc,
        "variants": {k: info for k, (_, info) in runs.items()},
        "latency": {b: [t.model_dump() for t in ts] for b, ts in timed.items()},
    }
    args.output.with_suffix(".json").write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
