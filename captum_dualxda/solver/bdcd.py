"""Batched block dual coordinate descent (BDCD) in PyTorch: the GPU backend.

Each block of ``b`` samples is updated at once: every row takes its exact per-sample step (the
projection of :mod:`.projection`, i.e. LIBLINEAR's subproblem), and the summed step is scaled by
the exact line search ``t = clip(-<G, D> / ||D^T X||^2, 0, 1)`` (the dual is quadratic), which
keeps the iterate feasible and the dual monotonically decreasing. Blocks are Gauss-Seidel,
rows inside a block Jacobi. With ``b = 1`` this is LIBLINEAR's update without shrinking.

Precision: features stay in their dtype (float32 features -> float32 matmuls), the state
(``alpha``, ``W``, curvatures, gradients) is float64. An all-float32 state stalls above
``tol = 1e-4`` (docs/solver.md 4a), float32 matmuls with float64 accumulation of the state do not.
TF32 is switched off for the duration of the solve.

Row-sparse dual (``sparse=True``): ``alpha`` lives in a
:class:`~.sparse_dual.RowSparseDual` with ``m`` slots per row; each block is expanded to dense
``(b, K)`` rows, updated, and compressed back. A row whose exact step would need more than ``m``
non-zeros takes the step restricted to ``m`` classes instead (its current non-zeros, its label,
then the classes its projection favours most): the restricted subproblem contains the current
point, so this is still a descent step, and the exact optimality check at the end still runs over
every class. If a row is restricted in a pass after the second, ``m`` doubles (the first pass
starts from ``W = 0``, where every class ties and the first block's rows fill all their slots;
the second pass still carries those rows). Memory: ``12 n m`` bytes instead of ``8 n K``.

Acceleration (``acceleration=True``, the default; docs/solver.md 4b): every pass starts from an
extrapolated point ``Proj(x_k + beta_k (x_k - x_{k-1}))`` (``x_k`` the point after pass ``k``,
``beta_k = (j - 1) / (j + 2)`` with ``j`` the passes since the last restart, FISTA's sequence,
``Proj`` the projection of the rows that the extrapolation made infeasible). When a pass ends
with a larger dual objective than the previous pass, the solver returns to ``x_{k}`` and
restarts the momentum (``j = 1``), so the objective of the accepted points never increases and
a pass after a restart is a plain pass. Cost per pass: one extrapolation over ``alpha`` and one
``W = alpha^T X`` (which also removes the drift); memory: one more ``alpha``. At large ``C``
(many bounded and free support vectors, slow coordinate descent) this cut the passes several
fold (benchmarks/README.md, *Block solver*); the stopping rule is unchanged.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator, Optional

import torch
from tqdm import tqdm

from .._utils.validation import check_flag, check_integer
from .backend import BackendOutput
from .gap import evaluate_optimality, primal_weights
from .problem import CrammerSingerProblem
from .projection import project_crammer_singer
from .sparse_dual import DualVariables, RowSparseDual, dual_row_slices, dual_rows, dual_to_dense, set_dual_rows

__all__ = ["BackendOutput", "solve_bdcd"]


def default_block_size(device: torch.device, n: int) -> int:
    """Block size: 4096 rows on accelerators (few kernel launches), 256 on CPU (t close to 1)."""
    return max(1, min(n, 4096 if device.type != "cpu" else 256))


@contextlib.contextmanager
def _exact_matmul() -> Iterator[None]:
    if not torch.cuda.is_available():
        yield
        return
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def solve_bdcd(
    problem: CrammerSingerProblem,
    *,
    tol: float,
    max_iter: int,
    seed: int,
    alpha0: Optional[DualVariables] = None,
    show_progress: bool = False,
    block_size: Optional[int] = None,
    refresh_every: int = 25,
    sparse: bool = False,
    capacity: Optional[int] = None,
    acceleration: bool = True,
) -> BackendOutput:
    """Solve the Crammer-Singer dual with batched block coordinate descent.

    Parameters
    ----------
    problem : CrammerSingerProblem
        Validated problem; everything runs on ``problem.features.device``.
    tol : float
        Stop when the largest natural residual ``max_i r_i`` (checked exactly over all samples
        once the running estimate falls below ``tol``) is ``<= tol``.
    max_iter : int
        Maximum number of epochs.
    seed : int
        Seed of the epoch permutations (a CPU generator, so results do not depend on the device
        RNG).
    alpha0 : torch.Tensor or RowSparseDual, optional
        ``(n, K)`` float64 feasible starting point (warm start).
    show_progress : bool
        Show a tqdm bar over epochs.
    block_size : int, optional
        Rows per block; :func:`default_block_size` if omitted.
    refresh_every : int
        Recompute ``W = alpha.T @ X`` in float64 every this many epochs to remove drift
        (with ``acceleration`` it is recomputed after every extrapolation anyway).
    sparse : bool
        Keep ``alpha`` row-sparse (see the module docstring).
    capacity : int, optional
        Initial slots per row with ``sparse`` (default ``min(K, 32)``).
    acceleration : bool
        Start every epoch from the extrapolated point of the module docstring (restarted
        whenever an epoch ends worse than the one before). ``False``: plain block coordinate
        descent, as before the acceleration (for comparisons).

    Returns
    -------
    BackendOutput
        ``stats`` holds ``"restarts"`` (momentum restarts) and ``"block_size"``.
    """
    block_size = check_integer(block_size, "block_size", low=1, optional=True)
    refresh_every = check_integer(refresh_every, "refresh_every", low=1)
    capacity = check_integer(capacity, "capacity", low=1, optional=True)
    sparse = check_flag(sparse, "sparse")
    acceleration = check_flag(acceleration, "acceleration")
    x = problem.features
    device = x.device
    n, k = problem.n_samples, problem.n_classes
    y = problem.labels
    sq_norms = problem.squared_norms()
    b = block_size or default_block_size(device, n)
    alpha: DualVariables
    if sparse:
        if alpha0 is None:
            alpha = RowSparseDual(n, k, capacity, device)
        elif isinstance(alpha0, RowSparseDual):
            alpha = alpha0.to(device).scaled(1.0)
        else:
            alpha = RowSparseDual.from_dense(alpha0.to(device), capacity)
    elif alpha0 is None:
        alpha = torch.zeros(n, k, dtype=torch.float64, device=device)
    else:
        alpha = dual_to_dense(alpha0.to(device)).to(dtype=torch.float64).clone()
    if alpha0 is None:
        weight = torch.zeros(k, x.shape[1], dtype=torch.float64, device=device)
        bias_weight = torch.zeros(k, dtype=torch.float64, device=device)
    else:
        weight, bias_weight = primal_weights(problem, alpha)
    # momentum state: the point after the previous accepted epoch and its dual objective
    previous = _copy_dual(alpha) if acceleration else None
    previous_objective = _dual_objective(alpha, y, weight, bias_weight) if acceleration else math.inf
    since_restart = 1
    restarts = 0
    extrapolated = False  # whether the current epoch starts from an extrapolated point
    generator = torch.Generator().manual_seed(int(seed))
    converged = False
    epoch = 0
    bar = tqdm(total=max_iter, desc="DualDA solver (bdcd)", disable=not show_progress, leave=False)
    with _exact_matmul(), bar:
        for epoch in range(1, max_iter + 1):
            order = torch.randperm(n, generator=generator).to(device)
            estimate, restricted = _epoch(problem, alpha, weight, bias_weight, sq_norms, order, b, sparse)
            bar.update(1)
            bar.set_postfix(residual=f"{estimate:.2e}")
            if sparse and epoch > 2 and restricted:
                alpha.grow(2 * alpha.capacity)  # type: ignore[union-attr]
            if estimate <= tol:
                report = evaluate_optimality(problem, alpha)
                weight, bias_weight = report.weight, report.bias_weight
                if report.residual <= tol:
                    converged = True
                    bar.total = bar.n  # converged: the bar ends full, not at n_iter / max_iter
                    bar.set_postfix(residual=f"{report.residual:.2e}", converged=True)
                    break
            if previous is None:
                if estimate > tol and epoch % refresh_every == 0:
                    weight, bias_weight = primal_weights(problem, alpha)
                continue
            objective = _dual_objective(alpha, y, weight, bias_weight)
            if extrapolated and objective > previous_objective:
                # the extrapolation overshot: back to the last accepted point, momentum restarts
                _assign_dual(alpha, previous)
                weight, bias_weight = primal_weights(problem, alpha)
                since_restart, extrapolated = 1, False
                restarts += 1
                continue
            if epoch == max_iter:
                break  # return the epoch's point, not an extrapolated one
            since_restart += 1
            beta = (since_restart - 2) / (since_restart + 1)  # FISTA's (j - 1) / (j + 2), j = since_restart - 1
            previous_objective = objective
            extrapolated = beta > 0
            if extrapolated:
                _extrapolate(alpha, previous, y, problem.C, beta)
                weight, bias_weight = primal_weights(problem, alpha)
            else:
                _assign_dual(previous, alpha)
                if epoch % refresh_every == 0:
                    weight, bias_weight = primal_weights(problem, alpha)
    return BackendOutput(alpha=alpha, n_iter=epoch, converged=converged, stats={"restarts": restarts, "block_size": b})


def _epoch(
    problem: CrammerSingerProblem,
    alpha: DualVariables,
    weight: torch.Tensor,
    bias_weight: torch.Tensor,
    sq_norms: torch.Tensor,
    order: torch.Tensor,
    block_size: int,
    sparse: bool,
) -> tuple[float, bool]:
    """One pass over the blocks of ``order``; updates ``alpha``, ``weight``, ``bias_weight`` in place.

    Returns
    -------
    estimate : float
        The largest natural residual seen during the pass (stale: measured before each block's
        update).
    restricted : bool
        Some row's step was restricted to the row-sparse capacity.
    """
    x, y, C, s = problem.features, problem.labels, problem.C, problem.intercept_scaling
    device, dtype = x.device, x.dtype
    running = torch.zeros((), dtype=torch.float64, device=device)
    restricted = torch.zeros((), dtype=torch.bool, device=device)
    for rows in order.split(block_size):
        xb, yb, curv = x[rows], y[rows], sq_norms[rows]
        ab = dual_rows(alpha, rows)
        grad = (xb @ weight.T.to(dtype)).double() + (s * bias_weight + 1.0)
        grad[torch.arange(rows.shape[0], device=device), yb] -= 1.0
        safe = torch.where(curv > 0, curv, torch.ones_like(curv))
        point = ab - grad / safe[:, None]
        target = project_crammer_singer(point, yb, C)
        if sparse:
            target, cut = _restrict_to_capacity(target, point, ab, yb, C, alpha.capacity)  # type: ignore[union-attr]
            restricted |= cut
        step = (target - ab) * (curv > 0)[:, None]
        running = torch.maximum(running, (curv * step.abs().amax(1)).max())
        d_weight = (step.T.to(dtype) @ xb).double()
        d_bias = s * step.sum(0)
        curvature = (d_weight * d_weight).sum() + (d_bias * d_bias).sum()
        slope = _descent_slope(grad, step, target, curv, yb, C)
        t = torch.where(curvature > 0, slope / curvature.clamp_min(1e-300), torch.zeros_like(slope))
        t = t.clamp(0.0, 1.0)
        set_dual_rows(alpha, rows, ab + t * step)
        weight += t * d_weight
        bias_weight += t * d_bias
    return float(running), bool(restricted)


def _descent_slope(
    grad: torch.Tensor, step: torch.Tensor, target: torch.Tensor, curv: torch.Tensor, labels: torch.Tensor, C: float
) -> torch.Tensor:
    """``-<G, Delta>`` of a block, computed so that rounding does not swamp it near the optimum.

    Each row of ``Delta`` sums to zero, so ``-<G_i, Delta_i> = -<G_i - beta_i, Delta_i>`` for any
    level ``beta_i``. Computed naively, the common level of ``G_i`` (about 1) times the rounding
    of the row sum (about ``u |alpha_i|``) is of the order of the whole slope once the residual
    ``r`` is near ``sqrt(u |G| A_i |alpha|)`` (about 1e-8 in float64): the line search then
    rejects every step and the method stalls there. With ``beta_i`` the level at the classes
    that are free in the target (where ``G_i^m + A_i Delta_i^m`` is the same for all, by the
    projection's optimality), those classes contribute ``A_i (Delta_i^m)^2`` accurately and the
    classes at their bound ``(G_i^m - beta_i) Delta_i^m >= 0``-type terms of their own size.

    Parameters
    ----------
    grad, step, target : torch.Tensor
        ``(b, K)`` float64 gradients, steps and projected targets of the block's rows.
    curv : torch.Tensor
        ``(b,)`` float64 ``A_i``.
    labels : torch.Tensor
        ``(b,)`` int64.
    C : float

    Returns
    -------
    torch.Tensor
        ``()`` float64 slope (``>= 0`` up to rounding: ``Delta`` is a descent direction).
    """
    bound = torch.zeros_like(target)
    bound[torch.arange(target.shape[0], device=target.device), labels] = C
    free = target < bound
    level = torch.where(free, grad + curv[:, None] * step, torch.zeros_like(grad)).sum(1)
    level = level / free.sum(1).clamp_min(1).to(grad.dtype)
    return -((grad - level[:, None]) * step).sum()


def _dual_objective(
    alpha: DualVariables, labels: torch.Tensor, weight: torch.Tensor, bias_weight: torch.Tensor
) -> float:
    """``f(alpha) = 1/2 ||W||^2 - sum_i alpha_i^{y_i}`` (docs/solver.md 1.2; rows sum to 0) from
    the maintained ``W``."""
    if isinstance(alpha, RowSparseDual):
        own = sum(float(dual_rows(alpha, rows).gather(1, labels[rows, None]).sum()) for rows in dual_row_slices(alpha))
    else:
        own = float(alpha.gather(1, labels[:, None]).sum())
    return 0.5 * float((weight * weight).sum() + (bias_weight * bias_weight).sum()) - own


def _copy_dual(alpha: DualVariables) -> DualVariables:
    return alpha.scaled(1.0) if isinstance(alpha, RowSparseDual) else alpha.clone()


def _assign_dual(target: DualVariables, source: DualVariables) -> None:
    """``target[:] = source`` (same shape; dense or row-sparse, in row chunks)."""
    if isinstance(target, RowSparseDual) or isinstance(source, RowSparseDual):
        for rows in dual_row_slices(target):
            set_dual_rows(target, rows, dual_rows(source, rows).clone())
    else:
        target.copy_(source)


def _extrapolate(alpha: DualVariables, previous: DualVariables, labels: torch.Tensor, C: float, beta: float) -> None:
    """``alpha <- Proj(alpha + beta (alpha - previous))`` and ``previous <- alpha`` (old value).

    Only rows that the extrapolation leaves infeasible (an entry above its bound) are
    projected, so feasible rows keep exact zeros. Works in 32 MiB row chunks.
    """
    for rows in dual_row_slices(alpha):
        current = dual_rows(alpha, rows)
        moved = current + beta * (current - dual_rows(previous, rows))
        y = labels[rows]
        index = torch.arange(moved.shape[0], device=moved.device)
        bound = torch.zeros_like(moved)
        bound[index, y] = C
        bad = (moved > bound).any(1)
        if bool(bad.any()):
            moved[bad] = project_crammer_singer(moved[bad], y[bad], C)
        set_dual_rows(previous, rows, current)
        set_dual_rows(alpha, rows, moved)


def _restrict_to_capacity(
    target: torch.Tensor, point: torch.Tensor, current: torch.Tensor, labels: torch.Tensor, C: float, capacity: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace the exact targets of rows that would exceed ``capacity`` non-zeros.

    Parameters
    ----------
    target : torch.Tensor
        ``(b, K)`` exact per-row projections of ``point``.
    point : torch.Tensor
        ``(b, K)`` the unconstrained per-row minimisers ``alpha_i - G_i / A_i``.
    current : torch.Tensor
        ``(b, K)`` the current rows (at most ``capacity`` non-zeros each).
    labels : torch.Tensor
        ``(b,)`` int64.
    C : float
    capacity : int

    Returns
    -------
    target : torch.Tensor
        ``(b, K)``; rows where ``current`` and the exact target together hold more than
        ``capacity`` non-zeros are projected onto the classes: current non-zeros, the label,
        then the most negative entries of ``point`` (the wrong classes the step pushes hardest),
        ``capacity`` in all.
    restricted : torch.Tensor
        ``()`` bool, whether any row was restricted.
    """
    union = (target != 0) | (current != 0)
    over = union.sum(1) > capacity
    if not bool(over.any()):
        return target, torch.zeros((), dtype=torch.bool, device=target.device)
    rows = over.nonzero().flatten()
    p, a, y = point[rows], current[rows], labels[rows]
    index = torch.arange(rows.shape[0], device=target.device)
    priority = p.clone()  # smaller = kept first
    priority[a != 0] = -torch.inf
    priority[index, y] = -torch.inf
    keep = torch.topk(priority, capacity, dim=1, largest=False).indices
    allowed = torch.zeros_like(a, dtype=torch.bool).scatter_(1, keep, True)
    allowed[index, y] = True
    target = target.clone()
    target[rows] = project_crammer_singer(p, y, C, allowed)
    return target, torch.ones((), dtype=torch.bool, device=target.device)
