"""Batched block dual coordinate descent (BDCD) in PyTorch: the GPU backend.

Each block of ``b`` samples is updated at once: every row takes its exact per-sample step (the
projection of :mod:`.projection`, i.e. LIBLINEAR's subproblem), and the summed step is scaled by
the exact line search ``t = clip(-<G, D> / ||D^T X||^2, 0, 1)`` (the dual is quadratic), which
keeps the iterate feasible and the dual monotonically decreasing. Blocks are Gauss-Seidel,
rows inside a block Jacobi. With ``b = 1`` this is LIBLINEAR's update without shrinking.

Precision: features stay in their dtype (float32 features -> float32 matmuls), the state
(``alpha``, ``W``, curvatures, gradients) is float64. An all-float32 state stalls above
``tol = 1e-4`` (SOLVER.md 4a), float32 matmuls with float64 accumulation of the state do not.
TF32 is switched off for the duration of the solve.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
from tqdm import tqdm

from .gap import evaluate_optimality, primal_weights
from .problem import CrammerSingerProblem
from .projection import project_crammer_singer

__all__ = ["BackendOutput", "solve_bdcd", "default_block_size"]


@dataclass
class BackendOutput:
    """What a backend returns to :func:`~captum_dualxda.solver.fit_crammer_singer`.

    Attributes
    ----------
    alpha : torch.Tensor
        ``(n, K)`` float64 feasible dual variables, on the problem's device, input order.
    n_iter : int
        Passes over the data.
    converged : bool
        The backend's exact check found ``max_i r_i <= tol``.
    """

    alpha: torch.Tensor
    n_iter: int
    converged: bool


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
    alpha0: Optional[torch.Tensor] = None,
    show_progress: bool = False,
    block_size: Optional[int] = None,
    refresh_every: int = 25,
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
    alpha0 : torch.Tensor, optional
        ``(n, K)`` float64 feasible starting point (warm start).
    show_progress : bool
        Show a tqdm bar over epochs.
    block_size : int, optional
        Rows per block; :func:`default_block_size` if omitted.
    refresh_every : int
        Recompute ``W = alpha.T @ X`` in float64 every this many epochs to remove drift.

    Returns
    -------
    BackendOutput
    """
    x = problem.features
    device, dtype = x.device, x.dtype
    n, k = problem.n_samples, problem.n_classes
    s, C = problem.intercept_scaling, problem.C
    y = problem.labels
    sq_norms = problem.squared_norms()
    b = block_size or default_block_size(device, n)
    if alpha0 is None:
        alpha = torch.zeros(n, k, dtype=torch.float64, device=device)
    else:
        alpha = alpha0.to(device=device, dtype=torch.float64).clone()
    weight, bias_weight = primal_weights(problem, alpha)
    generator = torch.Generator().manual_seed(int(seed))
    converged = False
    epoch = 0
    bar = tqdm(total=max_iter, desc="DualDA solver (bdcd)", disable=not show_progress, leave=False)
    with _exact_matmul(), bar:
        for epoch in range(1, max_iter + 1):
            order = torch.randperm(n, generator=generator).to(device)
            running = torch.zeros((), dtype=torch.float64, device=device)
            for rows in order.split(b):
                xb, yb, ab, curv = x[rows], y[rows], alpha[rows], sq_norms[rows]
                grad = (xb @ weight.T.to(dtype)).double() + (s * bias_weight + 1.0)
                grad[torch.arange(rows.shape[0], device=device), yb] -= 1.0
                safe = torch.where(curv > 0, curv, torch.ones_like(curv))
                step = project_crammer_singer(ab - grad / safe[:, None], yb, C) - ab
                step = step * (curv > 0)[:, None]
                running = torch.maximum(running, (curv * step.abs().amax(1)).max())
                d_weight = (step.T.to(dtype) @ xb).double()
                d_bias = s * step.sum(0)
                curvature = (d_weight * d_weight).sum() + (d_bias * d_bias).sum()
                slope = -(grad * step).sum()
                t = torch.where(curvature > 0, slope / curvature.clamp_min(1e-300), torch.zeros_like(slope))
                t = t.clamp(0.0, 1.0)
                alpha[rows] = ab + t * step
                weight += t * d_weight
                bias_weight += t * d_bias
            estimate = float(running)
            bar.update(1)
            bar.set_postfix(residual=f"{estimate:.2e}")
            if estimate <= tol:
                report = evaluate_optimality(problem, alpha)
                weight, bias_weight = report.weight, report.bias_weight
                if report.residual <= tol:
                    converged = True
                    break
            elif epoch % refresh_every == 0:
                weight, bias_weight = primal_weights(problem, alpha)
    return BackendOutput(alpha=alpha, n_iter=epoch, converged=converged)
