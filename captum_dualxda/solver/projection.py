"""Exact per-sample update of the Crammer-Singer dual: Euclidean projection onto a scaled simplex.

For one sample with curvature ``A_i = ||x_i||^2`` the exact minimiser of the dual restricted to
row ``i`` is the projection of ``v = alpha_i - G_i / A_i`` onto the feasible set
``{a : a_m <= C [m == y_i], sum_m a_m = 0}``. With ``gamma = C e_{y_i} - a`` that set is the
scaled simplex ``{gamma >= 0, sum gamma = C}``, projected onto by sorting (Held et al. 1974;
Duchi et al. 2008). This is what LIBLINEAR's ``solve_sub_problem`` computes, vectorised over rows.
"""

from __future__ import annotations

from typing import Optional, Union

import torch

__all__ = ["project_crammer_singer"]


def project_crammer_singer(
    values: torch.Tensor,
    labels: torch.Tensor,
    C: Union[float, torch.Tensor],
    allowed: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Project each row onto the Crammer-Singer feasible set.

    Parameters
    ----------
    values : torch.Tensor
        ``(b, K)`` floating-point points ``v`` to project.
    labels : torch.Tensor
        ``(b,)`` int64 true class of each row.
    C : float or torch.Tensor
        Upper bound of the true-class entry; scalar or ``(b,)``.
    allowed : torch.Tensor, optional
        ``(b, K)`` bool: project onto the face where the other entries are 0 (the subproblem
        restricted to these classes, as LIBLINEAR's class shrinking does). Must include each
        row's label.

    Returns
    -------
    torch.Tensor
        ``(b, K)``, same dtype as ``values``: the rows ``a`` closest to ``v`` with
        ``a[y] in [0, C]``, ``a[m] <= 0`` otherwise and ``sum(a) == 0`` (up to rounding),
        and ``a[m] == 0`` where ``allowed`` is False.
    """
    b, k = values.shape
    rows = torch.arange(b, device=values.device)
    c = torch.as_tensor(C, dtype=values.dtype, device=values.device).expand(b)
    z = -values
    z[rows, labels] += c
    if allowed is not None:
        # gamma_m = max(z_m - theta, 0) and theta >= max(z) - C, so z_m < max(z) - C keeps m at 0
        top = torch.where(allowed, z, torch.full_like(z, -torch.inf)).amax(1, keepdim=True)
        z = torch.where(allowed, z, top - c[:, None] - 1.0)
    u = torch.sort(z, dim=1, descending=True).values
    partial = torch.cumsum(u, dim=1) - c[:, None]
    ranks = torch.arange(1, k + 1, device=values.device, dtype=values.dtype)
    active = (u - partial / ranks) > 0  # True on a prefix of length rho >= 1
    rho = active.sum(1).clamp_min(1)
    theta = partial[rows, rho - 1] / rho.to(values.dtype)
    gamma = (z - theta[:, None]).clamp_min(0)
    out = -gamma
    out[rows, labels] += c
    return out
