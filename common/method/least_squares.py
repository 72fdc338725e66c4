"""Least-squares solvers of mask tuning: normal equations, ridge damping, refit, reselection."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

OutOfRangePolicy = Literal["stop", "ridge"]


class NormalEquations:
    def __init__(self, n: int, device):
        self.ata = torch.zeros(n, n, dtype=torch.float64, device=device)
        self.atb = torch.zeros(n, dtype=torch.float64, device=device)
        self.btb = 0.0

    def error(self, m: torch.Tensor) -> float:
        return float(m @ self.ata @ m - 2 * m @ self.atb + self.btb)


def solve(
    eq: NormalEquations, m0: torch.Tensor, ridge: float, bound: float, policy: OutOfRangePolicy
) -> tuple[torch.Tensor | None, str]:
    """Least squares for the kept units (m0 != 0) around m0. Returns (scales or None, note)."""
    kept = (m0 != 0).nonzero().flatten()
    if kept.numel() == 0:
        return None, "no units kept"
    ata = eq.ata[kept][:, kept]
    rhs = eq.atb[kept] - ata @ m0[kept]
    scale = float(ata.diagonal().mean().clamp(min=1e-12))
    for attempt in range(6):
        lam = ridge * scale * 10**attempt
        try:
            delta = torch.linalg.solve(ata + lam * torch.eye(len(kept), dtype=ata.dtype, device=ata.device), rhs)
        except RuntimeError:
            return None, "solver failed"
        x = m0[kept] + delta
        if not torch.isfinite(x).all():
            return None, "solver failed"
        if x.abs().max() <= bound:
            m = torch.zeros_like(m0)
            m[kept] = x
            return m, "" if attempt == 0 else f"ridge x{10**attempt}"
        if policy == "stop":
            return None, f"a scale reached {float(x.abs().max()):.3g} > {bound}"
    return None, f"scales stay beyond {bound}"


@dataclass
class Columns:
    """Some input columns of a projection (``weight`` [out, cols] and the ``bias``), refit in its stead."""

    weight: torch.Tensor
    bias: torch.Tensor | None


def current_map(proj: nn.Linear | Columns, mask_row: torch.Tensor, unit_size: int) -> torch.Tensor:
    """The block's current output map [in + 1, out]: masked weights (pruned columns 0) and the bias (0 when the
    projection has none)."""
    scale = mask_row.float().repeat_interleave(unit_size)
    bias = proj.bias if proj.bias is not None else proj.weight.new_zeros(proj.weight.shape[0])
    return torch.cat([(proj.weight * scale).T, bias[None]]).double()


def refit(stats, proj, mask_row, unit_size, ridge) -> tuple[torch.Tensor, float] | None:
    """The kept columns and bias refit by ridge least squares around the current map; (full map, its error). A
    projection without a bias keeps none (its bias row stays 0)."""
    full = current_map(proj, mask_row, unit_size)
    bias = proj.bias is not None
    cols = (mask_row != 0).repeat_interleave(unit_size)
    cols = torch.cat([cols, cols.new_full((1,), bias)]).nonzero().flatten()
    gram, cross, theta0 = stats.gram[cols][:, cols], stats.cross[cols], full[cols]
    try:
        theta = theta0 + torch.linalg.solve(gram + _damping(gram, ridge, bias), cross - gram @ theta0)
    except RuntimeError:
        return None
    if not torch.isfinite(theta).all():
        return None
    result = torch.zeros_like(full)
    result[cols] = theta
    return result, stats.error(result)


def _damping(gram: torch.Tensor, ridge: float, bias: bool = True) -> torch.Tensor:
    """The ridge term of a system over weight columns with a bias column last (``bias``; else weight columns only):
    ``ridge`` times the mean diagonal of the weight columns, and nothing on the bias (it is not pulled back)."""
    weights = gram.diagonal()[:-1] if bias else gram.diagonal()
    damp = torch.full(
        (len(gram),), ridge * float(weights.mean().clamp(min=1e-12)), dtype=gram.dtype, device=gram.device
    )
    if bias:
        damp[-1] = 0.0
    return torch.diag(damp)


class LeastSquares:
    """``G = X^T X``, ``C = X^T r`` and ``r^T r`` over the tokens, with ``X = [act, 1]`` (every input column of the
    projection and a bias column last): the least-squares error of any map ``theta`` [in + 1, out] follows."""

    def __init__(self, n_in: int, n_out: int, device):
        self.gram = torch.zeros(n_in + 1, n_in + 1, dtype=torch.float64, device=device)
        self.cross = torch.zeros(n_in + 1, n_out, dtype=torch.float64, device=device)
        self.btb = 0.0

    @classmethod
    def collect(
        cls, data, n_in: int, n_out: int, device, folds: int = 1, columns: torch.Tensor | None = None
    ) -> list[LeastSquares]:
        """The statistics of ``data``'s batches, dealt round-robin into ``folds`` parts; of the input ``columns``
        only, when given."""
        parts = [cls(n_in, n_out, device) for _ in range(folds)]
        for k, (act, r) in enumerate(data):
            act = act if columns is None else act[:, columns]
            x = torch.cat([act, act.new_ones(len(act), 1)], dim=1)
            part = parts[k % folds]
            part.gram += (x.T @ x).double()
            part.cross += (x.T @ r).double()
            part.btb += float(r.double().pow(2).sum())
        return parts

    def __add__(self, other: LeastSquares) -> LeastSquares:
        total = LeastSquares.__new__(LeastSquares)
        total.gram, total.cross, total.btb = self.gram + other.gram, self.cross + other.cross, self.btb + other.btb
        return total

    def error(self, theta: torch.Tensor) -> float:
        return float((theta * (self.gram @ theta)).sum() - 2 * (theta * self.cross).sum() + self.btb)


RIDGE_GRID = (1e-3, 1e-2, 1e-1, 1.0)


def cross_validated_ridge(
    folds: list[LeastSquares],
    proj: nn.Linear | Columns,
    mask_row: torch.Tensor,
    unit_size: int,
    grid: tuple[float, ...] = RIDGE_GRID,
) -> float:
    """The ridge of ``grid`` whose refit, fit on one fold of the tuning batches, reconstructs the other fold best
    (two-fold cross-validation of the block's reconstruction error)."""
    a, b = folds

    def held_out(ridge: float) -> float:
        errors = [
            other.error(fit[0])
            for fold, other in ((a, b), (b, a))
            if (fit := refit(fold, proj, mask_row, unit_size, ridge)) is not None
        ]
        return sum(errors) if len(errors) == 2 else float("inf")

    return min(grid, key=held_out)


def reselect_units(
    stats: LeastSquares,
    unit_size: int,
    keep: int,
    ridge: float,
    bias: bool = True,
    group_keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """Which ``keep`` units of a block to keep (bool [units]): start from the ridge least-squares fit with every
    unit, then repeatedly remove the units whose removal (with the others refit, an optimal-brain-surgeon update
    of the inverse Gram matrix) raises the error least. Units leave in chunks of up to 1/64 of those to remove.
    Without a ``bias`` the fits have none. ``group_keep`` (int [groups], summing to ``keep``): the units form
    equal groups of consecutive units (query heads sharing a key/value group) and group ``g`` keeps exactly
    ``group_keep[g]`` of them."""
    gram, cross = (stats.gram, stats.cross) if bias else (stats.gram[:-1, :-1], stats.cross[:-1])
    units = (stats.gram.shape[0] - 1) // unit_size
    inv = torch.linalg.inv(gram + _damping(gram, ridge, bias))
    theta = inv @ cross
    alive = torch.ones(units, dtype=torch.bool, device=stats.gram.device)
    group = None if group_keep is None else torch.arange(units, device=alive.device) // (units // len(group_keep))
    chunk = max(1, (units - keep) // 64)
    while int(alive.sum()) > keep:
        cost = _removal_costs(inv, theta, unit_size, units)
        cost[~alive] = torch.inf
        if group is None or group_keep is None:
            gone = torch.topk(cost, min(chunk, int(alive.sum()) - keep), largest=False).indices
        else:
            gone = _cheapest_within_groups(cost, alive, group, group_keep.to(alive.device), chunk)
        idx = (gone[:, None] * unit_size + torch.arange(unit_size, device=gone.device)).flatten()
        block_inv = torch.linalg.pinv(inv[idx][:, idx])
        theta = theta - inv[:, idx] @ block_inv @ theta[idx]
        inv = inv - inv[:, idx] @ block_inv @ inv[idx]
        alive[gone] = False
    return alive


def _cheapest_within_groups(
    cost: torch.Tensor, alive: torch.Tensor, group: torch.Tensor, group_keep: torch.Tensor, chunk: int
) -> torch.Tensor:
    """Up to ``chunk`` alive units, cheapest first, none from a group already down to its ``group_keep``."""
    spare = torch.bincount(group[alive], minlength=len(group_keep)) - group_keep
    gone: list[int] = []
    for u in torch.argsort(cost).tolist():
        if len(gone) == chunk or not torch.isfinite(cost[u]):
            break
        if spare[group[u]] > 0:
            spare[group[u]] -= 1
            gone.append(u)
    return torch.tensor(gone, dtype=torch.long, device=cost.device)


def _removal_costs(inv: torch.Tensor, theta: torch.Tensor, unit_size: int, units: int) -> torch.Tensor:
    """The error increase of removing each unit alone: ``tr(theta_u^T inv_uu^-1 theta_u)``."""
    n = units * unit_size
    if unit_size == 1:
        return theta[:n].pow(2).sum(1) / inv.diagonal()[:n].clamp(min=1e-30)
    blocks = torch.stack(
        [inv[u * unit_size : (u + 1) * unit_size, u * unit_size : (u + 1) * unit_size] for u in range(units)]
    )
    t = theta[:n].view(units, unit_size, -1)
    return torch.einsum("uik,uij,ujk->u", t, torch.linalg.pinv(blocks), t)
