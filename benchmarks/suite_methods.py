"""The methods the benchmark suite compares: each is a set of stage-parameter overrides on top of the paper's
defaults, so adding a method (a new option of a stage) is one entry here."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fastprune.common.stages.run import STAGES

OVERRIDABLE = ("sample", "fisher", "search", "rearrange", "tune", "export")


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # stage -> {parameter: value}

    def params(self, stage: str, base: Mapping[str, Any]) -> dict[str, Any]:
        """The parameters of ``stage`` for this method: the suite's ``base`` with the method's overrides. The
        overrides keep the names the recorded runs were keyed by; the stage gets today's names of the options."""
        return _current({**base, **self.overrides.get(stage, {})}, stage)

    @property
    def fisher_per_constraint(self) -> bool:
        """Iterative Fisher (steps > 1) depends on the constraint: its stage runs once per constraint."""
        return int(self.overrides.get("fisher", {}).get("steps", 1)) > 1

    def fingerprint(self) -> str:
        return json.dumps({k: dict(v) for k, v in self.overrides.items()}, sort_keys=True)

    def unsupported(self) -> str | None:
        """Why this fastprune cannot run the method (a stage lacks one of its parameters), or None."""
        for stage, overrides in self.overrides.items():
            if stage not in OVERRIDABLE:
                return f"stage {stage!r} cannot be overridden (only {', '.join(OVERRIDABLE)})"
            missing = sorted(set(_current(dict(overrides), stage)) - set(STAGES[stage].params.model_fields))
            if missing:
                return f"the {stage} stage has no parameter {', '.join(missing)} in this fastprune"
        return None


def _current(params: dict[str, Any], stage: str) -> dict[str, Any]:
    """``params`` with the old names of options (see ``fastprune.common.stages.options.RENAMED``) renamed."""
    model = STAGES[stage].params
    renames = model.renames() if hasattr(model, "renames") else {}
    return {(k if k in model.model_fields else renames.get(k, k)): v for k, v in params.items()}


# A method's tuning overrides apply on top of TUNE_BASE, which keeps the budget re-split off: the methods (and their
# recorded runs) predate it as the default, so "refit" stays refit alone and "refit-resplit" is fastprune's default.
TUNE_BASE = {"resplit": False}
PAPER = {"mode": "scales", "teacher": "schedule"}  # the paper's mask tuning
REFIT = {"mode": "refit", "teacher": "dense"}
METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "paper",
            "the paper: one-shot Fisher, global search, rearrangement, tuning towards the sqrt(C) teacher",
            {"tune": PAPER},
        ),
        Method(
            "holdout",
            "paper + stage validation on 1/8 of the sample held out",
            {"sample": {"holdout": 0.125}, "tune": PAPER},
        ),
        Method("dense-teacher", "paper, tuning towards the dense model", {"tune": {**PAPER, "teacher": "dense"}}),
        Method(
            "ridge",
            "paper, tuning retries an out-of-range scale with more ridge",
            {"tune": {**PAPER, "policy": "ridge"}},
        ),
        Method(
            "label-free",
            "paper, Fisher with labels drawn from the model",
            {"fisher": {"labels": "model"}, "tune": PAPER},
        ),
        Method(
            "iterative",
            "paper with iterative Fisher (3 steps, a geometric schedule)",
            {"fisher": {"steps": 3}, "tune": PAPER},
        ),
        Method(
            "refit", "paper, but tuning refits the kept output projections towards the dense model", {"tune": REFIT}
        ),
        Method(
            "reselect",
            "refit, re-choosing each block's units by least squares first (high compression)",
            {"tune": {**REFIT, "mode": "reselect"}},
        ),
        Method(
            "refit-label-free",
            "refit, with Fisher labels drawn from the model",
            {"fisher": {"labels": "model"}, "tune": REFIT},
        ),
        Method("refit-ridge0.1", "refit with 10x the default damping", {"tune": {**REFIT, "ridge": 0.1}}),
        Method(
            "refit-1024",
            "refit on 1024 examples of the sample instead of 512",
            {"tune": {**REFIT, "num_samples": 1024}},
        ),
        Method(
            "refit-holdout",
            "refit + stage validation on 1/8 of the sample held out",
            {"sample": {"holdout": 0.125}, "tune": REFIT},
        ),
        Method("refit-iterative", "refit, with iterative Fisher (3 steps)", {"fisher": {"steps": 3}, "tune": REFIT}),
        Method(
            "refit-cv",
            "refit, each block's ridge chosen by two-fold cross-validation of its reconstruction error",
            {"tune": {**REFIT, "ridge": "auto"}},
        ),
        Method(
            "reselect-cv",
            "reselect, each block's ridge chosen by cross-validation",
            {"tune": {**REFIT, "mode": "reselect", "ridge": "auto"}},
        ),
        Method(
            "refit-resplit",
            "refit, re-splitting the budget left before each layer with Fisher re-measured on "
            "the tuned layers below (K-prune style): fastprune's default",
            {"tune": {**REFIT, "resplit": True}},
        ),
        Method(
            "reselect-resplit",
            "reselect with the budget re-split before each layer: K-prune's loop of "
            "measure, split, prune and reconstruct one layer at a time",
            {"tune": {**REFIT, "mode": "reselect", "resplit": True}},
        ),
        Method(
            "refit-resplit-block",
            "refit-resplit, the budget split between layers (search and re-split) by the "
            "block-diagonal Fisher cost of pruning within each layer",
            {"search": {"allocation": "block"}, "tune": {**REFIT, "resplit": True}},
        ),
        Method(
            "refit-resplit-uniform",
            "refit-resplit, every layer keeping the same number of heads and of neurons (search and re-split)",
            {"search": {"allocation": "uniform"}, "tune": {**REFIT, "resplit": True}},
        ),
        Method(
            "refit-resplit-auto",
            "refit-resplit, the split (global or uniform) chosen by the loss on 1/5 of the sample held out, which "
            "also validates the rearrangement and the tuning",
            {"sample": {"holdout": 0.2}, "search": {"allocation": "auto"}, "tune": {**REFIT, "resplit": True}},
        ),
        Method(
            "refit-uniform",
            "refit from uniform per-layer masks (no re-split)",
            {"search": {"allocation": "uniform"}, "tune": REFIT},
        ),
    )
}
DEFAULT_METHODS = ["paper", "refit-resplit"]  # the paper against fastprune's default


def get_methods(names: list[str]) -> list[Method]:
    """The named methods, each checked against this fastprune's stage parameters."""
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise SystemExit(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(METHODS)}")
    problems = [f"{n}: {why}" for n in names if (why := METHODS[n].unsupported())]
    if problems:
        raise SystemExit("cannot run " + "; ".join(problems))
    return [METHODS[n] for n in names]


def describe_methods() -> str:
    lines = []
    for m in METHODS.values():
        why = m.unsupported()
        lines.append(f"{m.name:14} {m.description}" + (f"  [not available: {why}]" if why else ""))
    return "\n".join(lines)
