"""The backend contract: what every solver backend is called with and returns to :func:`~.fit.fit_crammer_singer`.

A backend (:func:`~.bdcd.solve_bdcd`, :func:`~.sequential.solve_sequential`) takes a validated
:class:`~.problem.CrammerSingerProblem` and the keyword arguments of :class:`Backend`, plus options
of its own (``**backend_options`` of :func:`~.fit.fit_crammer_singer`), and returns a
:class:`BackendOutput`; :func:`~.fit.available_backends` lists the installed ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Protocol

from .problem import CrammerSingerProblem
from .sparse_dual import DualVariables

__all__ = ["BackendOutput", "Backend"]


@dataclass
class BackendOutput:
    """What a backend returns to :func:`~captum_dualxda.solver.fit_crammer_singer`.

    Attributes
    ----------
    alpha : torch.Tensor or RowSparseDual
        ``(n, K)`` float64 feasible dual variables, on the problem's device, input order.
    n_iter : int
        Passes over the data.
    converged : bool
        The backend's exact check found ``max_i r_i <= tol``.
    stats : dict
        Backend-specific counters (the block solver: ``"restarts"`` of its momentum,
        ``"block_size"``); copied into :attr:`CrammerSingerResult.stats`.
    """

    alpha: DualVariables
    n_iter: int
    converged: bool
    stats: Dict[str, float] = field(default_factory=dict)


class Backend(Protocol):
    """A solver backend: solves ``problem`` to the natural residual ``tol`` within ``max_iter`` passes.

    ``seed`` fixes the order of updates; ``alpha0`` is a feasible starting point (a warm start);
    ``show_progress`` shows a bar; ``acceleration`` switches the momentum with restarts on or off.
    """

    def __call__(
        self,
        problem: CrammerSingerProblem,
        *,
        tol: float,
        max_iter: int,
        seed: int,
        alpha0: Optional[Any] = None,
        show_progress: bool = False,
        acceleration: bool = True,
    ) -> BackendOutput: ...
