"""Readable reports: the run report of a registered model (what was pruned, metrics before and after, speedup,
seconds per stage, the gate decision) and the budget sweep's Pareto report.

A report is built once as a list of blocks and written twice: Markdown (MLflow, the repository, a terminal) with
its pictures as files beside it, and one self-contained HTML page with the pictures embedded, which the Kubeflow
UI renders for an ``HTML`` output artifact.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KEPT_UNITS_PNG = "kept_units.png"
PARETO_PNG = "pareto.png"

_CSS = """body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:1.5em;max-width:60em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}code{background:#f4f4f4;padding:0 .2em}
.passed{color:#1a7f37;font-weight:bold}.failed{color:#cf222e;font-weight:bold}img{max-width:100%}
pre{background:#f6f8fa;padding:.6em;overflow-x:auto}"""


@dataclass
class Report:
    """Blocks of a report: ``("h2", text)``, ``("p", text)``, ``("list", [text])``, ``("table", (header, rows))``,
    ``("image", (path, caption))``, ``("pre", text)``. Text may use ``**bold**`` and ```code```."""

    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def add(self, kind: str, content: Any) -> Report:
        self.blocks.append((kind, content))
        return self

    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for kind, content in self.blocks:
            if kind == "h2":
                out += [f"## {content}", ""]
            elif kind == "p":
                out += [str(content), ""]
            elif kind == "list":
                out += [f"- {item}" for item in content] + [""]
            elif kind == "table":
                header, rows = content
                out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows] + [""]
            elif kind == "image":  # embedded: the Kubeflow UI's Markdown view cannot follow a link to a file
                path, caption = content
                data = base64.b64encode(Path(path).read_bytes()).decode()
                out += [f"![{caption}](data:image/png;base64,{data})", ""]
            elif kind == "pre":
                out += [str(content).rstrip(), ""]
        return "\n".join(out).rstrip() + "\n"

    def html(self) -> str:
        body = [f"<h1>{_inline(self.title)}</h1>"]
        for kind, content in self.blocks:
            if kind == "h2":
                body.append(f"<h2>{_inline(str(content))}</h2>")
            elif kind == "p":
                body.append(f"<p>{_inline(str(content))}</p>")
            elif kind == "list":
                body.append("<ul>" + "".join(f"<li>{_inline(str(i))}</li>" for i in content) + "</ul>")
            elif kind == "table":
                header, rows = content
                head = "".join(f"<th>{_inline(str(h))}</th>" for h in header)
                cells = "".join("<tr>" + "".join(f"<td>{_inline(str(c))}</td>" for c in row) + "</tr>" for row in rows)
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>")
            elif kind == "image":
                path, caption = content
                data = base64.b64encode(Path(path).read_bytes()).decode()
                body.append(
                    f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                    f"<figcaption>{_inline(caption)}</figcaption></figure>"
                )
            elif kind == "pre":
                body.append(f"<pre>{html.escape(str(content))}</pre>")
        return (
            f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(self.title)}</title>'
            f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n"
        )

    def write(self, folder: Path, stem: str = "report") -> tuple[Path, Path]:
        """``<stem>.md`` and ``<stem>.html`` in ``folder`` (the pictures are expected there already)."""
        md, page = folder / f"{stem}.md", folder / f"{stem}.html"
        md.write_text(self.markdown())
        page.write_text(self.html())
        return md, page


def _inline(text: str) -> str:
    """Escape, then render ``**bold**``, ```code``` and the words passed/failed in colour."""
    text = html.escape(text)
    text = re.sub(r"\*\*(passed|failed)\*\*", r'<span class="\1">\1</span>', text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


# ----- pictures ------------------------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def kept_units_picture(
    heads: Sequence[int], num_heads: int, neurons: Sequence[int], intermediate_size: int, path: Path
) -> Path:
    """Bars of the attention heads (left) and FFN neurons (right) kept in each layer, against the total."""
    plt = _pyplot()
    layers = list(range(len(heads)))
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 0.9 + 0.32 * len(layers)), sharey=True)
    for axis, kept, total, what in (
        (left, heads, num_heads, "heads"),
        (right, neurons, intermediate_size, "FFN neurons"),
    ):
        axis.barh(layers, [total] * len(layers), color="#e8e8e8")
        axis.barh(layers, kept, color="#1f77b4")
        for y, k in zip(layers, kept, strict=True):
            axis.text(total * 1.01, y, f"{k}/{total}", va="center", fontsize=8)
        axis.set_xlim(0, total * 1.18)
        axis.set_title(f"{what} kept per layer ({sum(kept)}/{total * len(layers)}; grey: pruned)", fontsize=10)
        axis.set_xlabel(what)
    left.set_yticks(layers, [f"layer {i}" for i in layers], fontsize=8)
    left.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


@dataclass(frozen=True)
class ParetoPoint:
    label: str  # e.g. "C=0.5"
    cost: float  # fraction of the FLOPs (or latency) kept
    metric: float
    passed: bool


def pareto_front(points: Sequence[ParetoPoint], higher_is_better: bool = True) -> list[ParetoPoint]:
    """The points no other point beats on both axes (lower cost, better metric: higher unless ``higher_is_better``
    is False), by increasing cost."""
    sign = 1.0 if higher_is_better else -1.0
    front: list[ParetoPoint] = []
    for p in sorted(points, key=lambda p: (p.cost, -sign * p.metric)):
        if not front or sign * p.metric > sign * front[-1].metric:
            front.append(p)
    return front


def pareto_picture(
    points: Sequence[ParetoPoint],
    cost_label: str,
    metric_label: str,
    metric_before: float,
    gate: float,
    chosen: str | None,
    path: Path,
    higher_is_better: bool = True,
) -> Path:
    """The task metric against the cost kept: every candidate, the Pareto front, the original model, the gate's
    threshold and the chosen candidate."""
    plt = _pyplot()
    fig, axis = plt.subplots(figsize=(7, 4.5))
    front = pareto_front(points, higher_is_better)
    axis.plot([p.cost for p in front], [p.metric for p in front], "-", color="#999", zorder=1, label="Pareto front")
    for passed, colour, name in ((True, "#1a7f37", "passes the gate"), (False, "#cf222e", "fails the gate")):
        chosen_set = [p for p in points if p.passed == passed]
        if chosen_set:
            axis.scatter(
                [p.cost for p in chosen_set], [p.metric for p in chosen_set], color=colour, zorder=2, label=name
            )
    for p in points:
        axis.annotate(p.label, (p.cost, p.metric), textcoords="offset points", xytext=(5, 5), fontsize=8)
        if p.label == chosen:
            axis.scatter(
                [p.cost],
                [p.metric],
                s=260,
                facecolors="none",
                edgecolors="black",
                zorder=3,
                label=f"registered ({p.label})",
            )
    axis.scatter([1.0], [metric_before], marker="*", s=160, color="black", zorder=2, label="original")
    axis.axhline(gate, linestyle="--", color="#cf222e", linewidth=1, label=f"gate ({gate:.2f})")
    axis.set_xlabel(cost_label)
    axis.set_ylabel(metric_label)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# ----- the run report --------------------------------------------------------------------------------------------
def _f(value, digits: int = 2, suffix: str = "") -> str:
    return "–" if value is None else f"{value:,.{digits}f}{suffix}"


def _range(low, high) -> str:
    return "" if low is None or high is None else f" (p10-p90 {low:.2f}-{high:.2f})"


def run_report(
    stages: dict[str, dict], gate: dict, picture: Path | None, title: str, alias: str | None = None
) -> Report:
    """The report of one pruning run from its stages' ``stage.json`` (keys: pruned, evaluation, and where present
    model, sample, profile, ...) and the gate decision (``passed``, ``reason``)."""
    ev, pruned = stages["evaluation"], stages["pruned"]
    profile, sample = stages.get("profile", {}), stages.get("sample", {})
    verdict = "passed" if gate["passed"] else "failed"
    report = Report(title)
    moved = "moved to this version" if gate["passed"] else "left where it was"
    report.add("p", f"Accuracy gate **{verdict}**: {gate['reason']}." + (f" Alias `{alias}` {moved}." if alias else ""))
    facts = [f"source model `{pruned['source']}`, task {pruned['task']}"]
    if sample:
        facts.append(
            f"pruning sample: {sample.get('num_examples')} examples of `{sample.get('train_file')}` "
            f"(sha256 `{str(sample.get('train_sha256'))[:16]}…`)"
        )
    if gate.get("pipeline_run"):
        facts.append(f"pipeline run `{gate['pipeline_run']}`")
    report.add("list", facts)

    report.add("h2", "Before and after")
    metric = ev["metric"]
    rows = [
        [
            metric,
            _f(ev["metric_before"]),
            _f(ev["metric_after"]),
            f"{ev['metric_after'] - ev['metric_before']:+.2f} points",
        ],
        [
            "FLOPs kept",
            "1.000",
            _f(pruned.get("flops_ratio"), 3),
            f"{_f(pruned.get('flops_ratio_exported'), 3)} as exported (FFNs padded with zero neurons)"
            if "flops_ratio_exported" in pruned
            else "",
        ],
        [
            "parameters",
            f"{pruned['params_before']:,}",
            f"{pruned['params_after']:,}",
            f"{pruned['params_after'] / pruned['params_before']:.1%} kept",
        ],
    ]
    if profile:
        rows.append(
            [
                f"latency p50 ({profile.get('device', '?')})",
                _f(profile.get("latency_before_ms"), 2, " ms"),
                _f(profile.get("latency_after_ms"), 2, " ms"),
                f"speedup {_f(profile.get('speedup'), 2, '×')}"
                + _range(profile.get("speedup_p10"), profile.get("speedup_p90"))
                + (" **noisy**" if profile.get("noisy") else ""),
            ]
        )
        if profile.get("latency_after_onnx_ms") is not None:
            rows.append(
                [
                    f"latency p50, {profile.get('onnx_model', 'ONNX')} (onnxruntime)",
                    _f(profile.get("latency_before_ms"), 2, " ms"),
                    _f(profile.get("latency_after_onnx_ms"), 2, " ms"),
                    f"speedup {_f(profile.get('speedup_onnx'), 2, '×')} over the original in torch",
                ]
            )
    if ev.get("metric_after_onnx") is not None:
        rows.append(
            [
                f"{metric}, ONNX (onnxruntime)",
                _f(ev["metric_before"]),
                _f(ev["metric_after_onnx"]),
                f"{ev['metric_after_onnx'] - ev['metric_before']:+.2f} points",
            ]
        )
    report.add("table", (["", "before", "after", "change"], rows))
    if profile.get("noisy"):
        report.add(
            "p",
            f"**The latency measurement was noisy**: over {profile.get('repeats', 'its')} interleaved "
            "repeats the p10-p90 range of a latency or of the speedup exceeded 20% of its median (a busy "
            "machine). Re-measure on a quiet one: `fastprune profile --model ORIGINAL --pruned PRUNED`.",
        )
    masked = [
        (name, ev[key])
        for name, key in (
            ("after search", "metric_search"),
            ("after rearrangement", "metric_rearranged"),
            ("after tuning (masked)", "metric_tuned_masked"),
        )
        if key in ev
    ]
    if masked:
        report.add(
            "p",
            f"{metric} of the masked model along the way: "
            + ", ".join(f"{name} {value:.2f}" for name, value in masked)
            + f"; exported model {ev['metric_after']:.2f} ({ev['dev_examples']} dev examples).",
        )

    report.add("h2", "What was pruned")
    if picture is not None:
        report.add("image", (picture, "attention heads and FFN neurons kept per layer"))
    report.add(
        "p",
        f"heads kept per layer: `{pruned.get('heads_per_layer')}`; "
        f"neurons kept per layer: `{pruned.get('neurons_per_layer')}`",
    )

    report.add("h2", "Time per stage")
    seconds = [[info["stage"], _f(info["seconds"], 1)] for info in stages.values() if "seconds" in info]
    report.add(
        "table",
        (
            ["stage", "seconds"],
            seconds + [["total", _f(sum(i["seconds"] for i in stages.values() if "seconds" in i), 1)]],
        ),
    )
    entries = profile.get("profile", {}).get("entries", [])
    if entries:
        report.add("h2", f"Latency on {profile.get('device', '?')}")
        report.add(
            "p",
            "Timed interleaved (one call of each model in turn, repeated); medians, with the p10-p90 "
            "range over the repeats; each speedup is the median of the per-repeat ratios.",
        )
        report.add(
            "table",
            (
                ["model", "dtype", "batch", "seq", "p50 ms", "p10-p90 ms", "seq/s", "speedup", "speedup p10-p90", ""],
                [
                    [
                        e["model"],
                        e["dtype"],
                        e["batch_size"],
                        e["seq_len"],
                        _f(e["p50_ms"]),
                        f"{_f(e.get('p10_ms'))}-{_f(e['p90_ms'])}",
                        _f(e["throughput"], 1),
                        _f(e["speedup"], 2, "×"),
                        f"{_f(e.get('speedup_p10'))}-{_f(e.get('speedup_p90'))}",
                        "**noisy**" if e.get("noisy") else "",
                    ]
                    for e in entries
                ],
            ),
        )
    return report
