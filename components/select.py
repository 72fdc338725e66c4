"""Step (budget sweep): judge every candidate by the accuracy gate, choose the smallest or fastest that passes, and
hand its folders on to registration; attach the Pareto plot as an HTML page the Kubeflow UI renders."""

from kfp.dsl import HTML, Artifact, Input, Metrics, Model, Output

from . import component


@component
def select_candidate(
    searched: Input[list[Artifact]],
    rearranged: Input[list[Artifact]],
    tuned: Input[list[Artifact]],
    pruned: Input[list[Model]],
    evaluation: Input[list[Artifact]],
    profile: Input[list[Artifact]],
    sweep: Output[Artifact],
    report: Output[HTML],
    metrics: Output[Metrics],
    chosen_searched: Output[Artifact],
    chosen_rearranged: Output[Artifact],
    chosen_tuned: Output[Artifact],
    chosen_pruned: Output[Model],
    chosen_evaluation: Output[Artifact],
    chosen_profile: Output[Artifact],
    objective: str = "smallest",
    max_metric_drop: float = 1.0,
) -> bool:
    """True when a candidate passed the gate; its folders are then copied to the chosen_* outputs."""
    from fastprune.components.runtime import run_select

    candidates = {
        "searched": searched,
        "rearranged": rearranged,
        "tuned": tuned,
        "pruned": pruned,
        "evaluation": evaluation,
        "profile": profile,
    }
    chosen = {
        "searched": chosen_searched,
        "rearranged": chosen_rearranged,
        "tuned": chosen_tuned,
        "pruned": chosen_pruned,
        "evaluation": chosen_evaluation,
        "profile": chosen_profile,
    }
    return run_select(candidates, chosen, sweep, report, metrics, {"objective": objective, "max_drop": max_metric_drop})
