"""The budget sweep's decision: among candidates pruned at several budgets from one Fisher computation, pick the
smallest (fewest parameters) or the fastest (lowest measured latency) that passes the accuracy gate, and draw the
Pareto plot of the task metric against the FLOPs (or latency) kept.

:func:`select_stage` writes a stage folder like :func:`fastprune.common.stages.run.run_stage` does (verified inputs,
``stage.json``, ``MANIFEST.json``, complete or absent), holding ``pareto.png``, ``sweep.md`` and ``sweep.html``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..errors import ConfigError
from ..folders import STAGE_FILE, stage_info, staged_folder, verify_manifest, write_manifest
from ..ops.report import PARETO_PNG, ParetoPoint, Report, pareto_front, pareto_picture
from .lineage import inherited_lineage

CANDIDATE_PARTS = ("searched", "rearranged", "tuned", "pruned", "evaluation", "profile")
"""The folders of one candidate: the outputs of search, rearrange, tune, export, evaluate and profile."""
REQUIRED_PARTS = ("searched", "pruned", "evaluation")


class SelectParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    objective: Literal["smallest", "fastest"] = Field(
        "smallest",
        description="smallest: fewest parameters (then FLOPs); fastest: lowest measured p50 latency "
        "(of the ONNX model when the export made one for every candidate)",
    )
    max_drop: float = Field(1.0, description="the accuracy gate: largest allowed drop of the metric, in points")


@dataclass(frozen=True)
class Candidate:
    index: int
    constraint: float
    constraint_metric: str
    metric: str
    metric_before: float
    metric_after: float
    flops_ratio: float
    params_before: int
    params_after: int
    latency_before_ms: float | None
    latency_after_ms: float | None
    speedup: float | None
    passed: bool
    reason: str
    latency_onnx_ms: float | None = None  # the export's ONNX folder on onnxruntime (CPU), when it made one
    higher_is_better: bool = True  # the metric's direction, as the task states it

    @property
    def quality(self) -> float:
        """The metric after pruning, signed so that larger is better."""
        return self.metric_after if self.higher_is_better else -self.metric_after

    @property
    def drop(self) -> float:
        """How much worse the metric got (positive: worse)."""
        change = self.metric_before - self.metric_after
        return change if self.higher_is_better else -change

    @property
    def label(self) -> str:
        return f"C={self.constraint:g}"

    @property
    def latency_ratio(self) -> float | None:
        if self.latency_before_ms and self.latency_after_ms is not None:
            return self.latency_after_ms / self.latency_before_ms
        return None


def load_candidate(index: int, folders: dict[str, Path], max_drop: float) -> Candidate:
    """A candidate from its stage folders, judged by the accuracy gate."""
    from ..ops.registry import evaluation_gate, higher_is_better

    missing = [part for part in REQUIRED_PARTS if folders.get(part) is None]
    if missing:
        raise ConfigError(f"candidate {index} lacks the folders {missing} (a candidate has {list(CANDIDATE_PARTS)})")
    search, pruned, ev = (stage_info(folders[p]) for p in ("searched", "pruned", "evaluation"))
    profile = stage_info(folders["profile"]) if folders.get("profile") is not None else {}
    passed, reason = evaluation_gate(ev, max_drop)
    return Candidate(
        index,
        search["constraint"],
        search["metric"],
        ev["metric"],
        ev["metric_before"],
        ev["metric_after"],
        pruned["flops_ratio"],
        pruned["params_before"],
        pruned["params_after"],
        profile.get("latency_before_ms"),
        profile.get("latency_after_ms"),
        profile.get("speedup"),
        passed,
        reason,
        profile.get("latency_after_onnx_ms"),
        higher_is_better(ev),
    )


def choose(candidates: list[Candidate], objective: str) -> Candidate | None:
    """The smallest (fewest parameters, then FLOPs) or fastest (lowest p50 latency) candidate that passes the gate;
    ties go to the better metric (higher, or lower where the task says lower is better). ``None`` when none passes."""
    passing = [c for c in candidates if c.passed]
    if not passing:
        return None
    if objective == "fastest":
        unmeasured = [c.label for c in passing if c.latency_after_ms is None]
        if unmeasured:
            raise ConfigError(
                f"objective 'fastest' needs the latency of every candidate; {unmeasured} have no "
                "profile: profile them or use objective 'smallest'"
            )
        if all(c.latency_onnx_ms is not None for c in passing):  # served as ONNX: chosen on ONNX latency
            return min(passing, key=lambda c: (c.latency_onnx_ms, c.params_after, -c.quality))
        return min(passing, key=lambda c: (c.latency_after_ms, c.params_after, -c.quality))
    if objective == "smallest":
        return min(passing, key=lambda c: (c.params_after, c.flops_ratio, -c.quality))
    raise ConfigError(f"unknown objective {objective!r}; objectives: smallest, fastest")


def _costs(candidates: list[Candidate]) -> tuple[str, dict[int, float]]:
    """The x axis of the Pareto plot: latency kept when the sweep searched under latency and every candidate was
    measured, else FLOPs kept."""
    latency = {c.index: c.latency_ratio for c in candidates}
    if all(c.constraint_metric == "latency" for c in candidates) and all(v is not None for v in latency.values()):
        return "latency kept (measured p50, pruned / original)", latency  # type: ignore[return-value]
    return "FLOPs kept (fraction of the original)", {c.index: c.flops_ratio for c in candidates}


def sweep_report(candidates: list[Candidate], chosen: Candidate | None, p: SelectParams, folder: Path) -> Report:
    """The sweep's report: the Pareto plot, every candidate with its gate decision, and the choice."""
    cost_label, costs = _costs(candidates)
    before = candidates[0].metric_before
    points = [ParetoPoint(c.label, costs[c.index], c.metric_after, c.passed) for c in candidates]
    higher = candidates[0].higher_is_better
    threshold = before - p.max_drop if higher else before + p.max_drop  # the worst metric the gate passes
    pareto_picture(
        points,
        cost_label,
        candidates[0].metric,
        before,
        threshold,
        chosen.label if chosen else None,
        folder / PARETO_PNG,
        higher,
    )
    on_front = {q.label for q in pareto_front(points, higher)}
    report = Report(f"Budget sweep: {len(candidates)} budgets, objective {p.objective}")
    if chosen is None:
        change = "a drop" if higher else "a rise"
        report.add(
            "p",
            f"No candidate passed the accuracy gate ({change} of at most {p.max_drop:g} points from "
            f"{before:.2f}): **nothing registered**.",
        )
    else:
        why = (
            "fewest parameters"
            if p.objective == "smallest"
            else "lowest measured latency" + (" of its ONNX model" if chosen.latency_onnx_ms is not None else "")
        )
        report.add(
            "p",
            f"Registered **{chosen.label}** ({why} among the {sum(c.passed for c in candidates)} "
            f"candidates that **passed** the gate): {chosen.reason}.",
        )
    report.add("image", (folder / PARETO_PNG, f"{candidates[0].metric} against {cost_label}"))
    rows = [
        [
            c.label,
            f"{c.flops_ratio:.3f}",
            f"{c.params_after / c.params_before:.1%}",
            "–" if c.latency_after_ms is None else f"{c.latency_after_ms:.2f}",
            "–" if c.speedup is None else f"{c.speedup:.2f}×",
            "–" if c.latency_onnx_ms is None else f"{c.latency_onnx_ms:.2f}",
            f"{c.metric_after:.2f}",
            f"{c.drop:+.2f}",
            "**passed**" if c.passed else "**failed**",
            "yes" if c.label in on_front else "",
            "**registered**" if chosen and c.index == chosen.index else "",
        ]
        for c in candidates
    ]
    report.add(
        "table",
        (
            [
                "budget",
                "FLOPs kept",
                "params kept",
                "latency ms",
                "speedup",
                "ONNX ms",
                candidates[0].metric,
                "drop",
                "gate",
                "Pareto",
                "",
            ],
            rows,
        ),
    )
    report.add("p", f"Original model: {candidates[0].metric} {before:.2f}; gate threshold {threshold:.2f}.")
    return report


def select_stage(out: str | Path, params: SelectParams | dict, candidates: list[dict[str, Path | None]]) -> dict:
    """Judge every candidate (its folders verified first), choose one, write the sweep's folder ``out``; returns
    its ``stage.json``: the choice (``chosen``: index or ``None``) and every candidate's figures."""
    p = params if isinstance(params, SelectParams) else SelectParams.model_validate(params)
    if not candidates:
        raise ConfigError("the sweep has no candidates: give at least one constraint")
    for folders in candidates:
        for folder in folders.values():
            if folder is not None:
                verify_manifest(folder)
    inherited_lineage(
        "select",
        {
            f"{part} of candidate {i}": Path(folder)
            for i, folders in enumerate(candidates)
            for part, folder in folders.items()
            if folder is not None
        },
    )  # one model and task
    start = time.perf_counter()
    judged = [
        load_candidate(i, {k: Path(v) for k, v in f.items() if v is not None}, p.max_drop)
        for i, f in enumerate(candidates)
    ]
    befores = {round(c.metric_before, 6) for c in judged}
    if len(befores) > 1:
        raise ConfigError(f"the candidates were evaluated on different data (metric before pruning: {befores})")
    chosen = choose(judged, p.objective)
    with staged_folder(Path(out)) as staging:
        report = sweep_report(judged, chosen, p, staging)
        report.write(staging, "sweep")
        info = {
            "stage": "select",
            "params": p.model_dump(mode="json"),
            "seconds": round(time.perf_counter() - start, 3),
            "chosen": None if chosen is None else chosen.index,
            "chosen_constraint": None if chosen is None else chosen.constraint,
            "registered": chosen is not None,
            "num_candidates": len(judged),
            "num_passed": sum(c.passed for c in judged),
            "metric_before": judged[0].metric_before,
            "candidates": [{**asdict(c), "label": c.label} for c in judged],
        }
        if chosen is not None:
            info.update(
                metric_after=chosen.metric_after, flops_ratio=chosen.flops_ratio, params_after=chosen.params_after
            )
        (staging / STAGE_FILE).write_text(json.dumps(info, indent=2, default=str))
        write_manifest(staging)
    return info
