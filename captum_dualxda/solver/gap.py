"""Solver-independent optimality measures: objectives, duality gap and natural residual.

All quantities are computed in float64 from ``alpha`` alone (``W`` is rebuilt as
``alpha.T @ X``), in row chunks so temporaries stay within 32 MiB
(:func:`~captum_dualxda._utils.chunking.row_chunk`). See ``docs/solver.md`` 1.5:
for feasible ``alpha`` the gap ``P(W(alpha)) + f(alpha)`` is ``>= 0`` and bounds
``||W - W*||_F <= sqrt(2 gap)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch

from .._utils.chunking import row_chunk
from .problem import CrammerSingerProblem
from .projection import project_crammer_singer
from .sparse_dual import DualVariables, dual_rows

__all__ = [
    "OptimalityReport",
    "primal_weights",
    "evaluate_optimality",
    "primal_objective",
]


@dataclass
class OptimalityReport:
    """Optimality of a feasible ``alpha`` (all floats are Python floats).

    Attributes
    ----------
    weight : torch.Tensor
        ``(K, d)`` float64 ``alpha.T @ X``.
    bias_weight : torch.Tensor
        ``(K,)`` float64 weight of the implicit intercept column, ``s * alpha.sum(0)``.
    primal, dual, gap, relative_gap, residual : float
        ``P(W)``, ``-f(alpha)``, ``P - D``, ``(P - D) / |P|`` and ``max_i r_i``.
    """

    weight: torch.Tensor
    bias_weight: torch.Tensor
    primal: float
    dual: float
    gap: float
    relative_gap: float
    residual: float


def primal_weights(problem: CrammerSingerProblem, alpha: DualVariables) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rebuild the primal weights from the dual variables.

    Parameters
    ----------
    problem : CrammerSingerProblem
    alpha : torch.Tensor or RowSparseDual
        ``(n, K)`` float64.

    Returns
    -------
    weight : torch.Tensor
        ``(K, d)`` float64, ``alpha.T @ features``.
    bias_weight : torch.Tensor
        ``(K,)`` float64, ``s * alpha.sum(0)``.
    """
    x = problem.features
    weight = torch.zeros(problem.n_classes, x.shape[1], dtype=torch.float64, device=x.device)
    column_sums = torch.zeros(problem.n_classes, dtype=torch.float64, device=x.device)
    chunk = row_chunk(x.shape[1] + problem.n_classes)
    for start in range(0, x.shape[0], chunk):
        rows = slice(start, start + chunk)
        a = dual_rows(alpha, rows)
        weight += a.T @ x[rows].double()
        column_sums += a.sum(0)
    return weight, problem.intercept_scaling * column_sums


def class_scores(
    features: torch.Tensor, weight: torch.Tensor, bias_weight: torch.Tensor, intercept_scaling: float
) -> torch.Tensor:
    """``(b, K)`` float64 scores ``x_i . w_m + s * b_m`` of a block of ``(b, d)`` features."""
    return features.double() @ weight.T + intercept_scaling * bias_weight


def _margin_matrix(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``G = scores + e`` with ``e_i^m = 1 - [m == y_i]`` (the dual gradient)."""
    grad = scores + 1.0
    grad[torch.arange(labels.shape[0], device=labels.device), labels] -= 1.0
    return grad


def primal_objective(problem: CrammerSingerProblem, weight: torch.Tensor, bias_weight: torch.Tensor) -> float:
    """Primal objective ``1/2 ||W||^2 + C sum_i max_m (e_i^m + w_m.x_i - w_{y_i}.x_i)``.

    Parameters
    ----------
    problem : CrammerSingerProblem
    weight : torch.Tensor
        ``(K, d)`` any float dtype (cast to float64).
    bias_weight : torch.Tensor
        ``(K,)`` weight of the implicit intercept column (``intercept / s``).

    Returns
    -------
    float
    """
    weight = weight.to(problem.features.device, torch.float64)
    bias_weight = bias_weight.to(problem.features.device, torch.float64)
    s = problem.intercept_scaling
    loss = 0.0
    chunk = row_chunk(problem.n_features + problem.n_classes)
    for start in range(0, problem.n_samples, chunk):
        y = problem.labels[start : start + chunk]
        grad = _margin_matrix(class_scores(problem.features[start : start + chunk], weight, bias_weight, s), y)
        own = grad.gather(1, y[:, None]).squeeze(1)
        loss += float((grad.amax(1) - own).sum())
    reg = 0.5 * (float((weight * weight).sum()) + (float((bias_weight * bias_weight).sum()) if s else 0.0))
    return reg + problem.C * loss


def evaluate_optimality(problem: CrammerSingerProblem, alpha: DualVariables) -> OptimalityReport:
    """Primal, dual, duality gap and largest natural residual of a feasible ``alpha``.

    Parameters
    ----------
    problem : CrammerSingerProblem
    alpha : torch.Tensor or RowSparseDual
        ``(n, K)`` float64 feasible dual variables.

    Returns
    -------
    OptimalityReport
    """
    weight, bias_weight = primal_weights(problem, alpha)
    s = problem.intercept_scaling
    sq_norms = problem.squared_norms()
    loss = 0.0
    residual = 0.0
    true_class = 0.0
    chunk = row_chunk(problem.n_features + problem.n_classes)
    for start in range(0, problem.n_samples, chunk):
        stop = start + chunk
        y = problem.labels[start:stop]
        grad = _margin_matrix(class_scores(problem.features[start:stop], weight, bias_weight, s), y)
        own = grad.gather(1, y[:, None]).squeeze(1)
        loss += float((grad.amax(1) - own).sum())
        a = dual_rows(alpha, slice(start, stop))
        true_class += float(a.gather(1, y[:, None]).sum())
        curv = sq_norms[start:stop]
        ok = curv > 0
        if bool(ok.any()):
            a, grad, y, curv = a[ok], grad[ok], y[ok], curv[ok]
            target = project_crammer_singer(a - grad / curv[:, None], y, problem.C)
            r = curv * (a - target).abs().amax(1)
            residual = max(residual, float(r.max()))
    sq_w = float((weight * weight).sum()) + float((bias_weight * bias_weight).sum())
    primal = 0.5 * sq_w + problem.C * loss
    dual = -0.5 * sq_w + true_class
    gap = primal - dual
    return OptimalityReport(
        weight=weight,
        bias_weight=bias_weight,
        primal=primal,
        dual=dual,
        gap=gap,
        relative_gap=gap / max(abs(primal), 1e-300),
        residual=residual,
    )
