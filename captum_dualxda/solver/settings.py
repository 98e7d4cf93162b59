"""The settings of one Crammer-Singer fit, validated once and passed around as one object.

:class:`SolverSettings` is what :class:`~captum_dualxda.DualDA`, :func:`~captum_dualxda.choose_c.sweep_C`
and :func:`~captum_dualxda.rank_label_issues` hand to the solver, and what the cache key of a
DualDA fit holds (:meth:`SolverSettings.key_items`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .._utils.validation import check_flag, check_integer, check_positive, check_seed
from ..exceptions import ArgumentTypeError

__all__ = ["DEFAULT_C", "BACKENDS", "SolverSettings"]

DEFAULT_C = 1e-3
"""The default SVM regularisation of this package (scikit-learn's ``LinearSVC`` uses 1.0).

Chosen on the digits CNN of the demo (measurements in the README, "Choosing C"): the fit
converges in few passes even on raw pixel scales, the surrogate agrees best with the network, and
the surrogate's hinge loss ranks flipped labels best; large C needs far more passes.
"""

BACKENDS = ("auto", "sequential", "bdcd")
"""The values of ``backend`` (:func:`~captum_dualxda.solver.fit_crammer_singer` says which are
installed: ``"sequential"`` needs numba)."""


@dataclass(frozen=True)
class SolverSettings:
    """Everything a Crammer-Singer fit depends on besides its data; checked on construction.

    Attributes
    ----------
    C : float
        Regularisation, finite and ``> 0``.
    fit_intercept : bool
        Fit LIBLINEAR's regularised intercept column.
    intercept_scaling : float
        The constant of that column, finite and ``> 0``.
    tol : float
        Tolerance on the largest natural residual, finite and ``> 0``.
    max_iter : int
        Most passes over the data, ``>= 1``.
    seed : int
        Seed of the order of updates (any seed ``torch.Generator`` takes).
    backend : str
        One of :data:`BACKENDS`.

    Raises
    ------
    ValueError, TypeError
        A setting of the wrong type or out of range, naming it.
    """

    C: float = DEFAULT_C
    fit_intercept: bool = True
    intercept_scaling: float = 1.0
    tol: float = 1e-4
    max_iter: int = 100_000
    seed: int = 0
    backend: str = "auto"

    def __post_init__(self) -> None:
        checked = {
            "C": check_positive(self.C, "C"),
            "fit_intercept": check_flag(self.fit_intercept, "fit_intercept"),
            "intercept_scaling": check_positive(self.intercept_scaling, "intercept_scaling"),
            "tol": check_positive(self.tol, "tol"),
            "max_iter": check_integer(self.max_iter, "max_iter", low=1),
            "seed": check_seed(self.seed),
            "backend": _check_backend(self.backend),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    def replace(self, **changes: Any) -> SolverSettings:
        """A copy with some settings changed (checked again)."""
        return dataclasses.replace(self, **changes)

    def solver_arguments(self) -> dict[str, Any]:
        """Keyword arguments of :func:`~captum_dualxda.solver.fit_crammer_singer` for these settings."""
        return dataclasses.asdict(self)

    def key_items(self) -> tuple[tuple[str, Any], ...]:
        """``(name, value)`` of every setting, in a fixed order: what a cache key of a fit holds."""
        return tuple((field.name, getattr(self, field.name)) for field in dataclasses.fields(self))


def _check_backend(backend: Any) -> str:
    if not isinstance(backend, str):
        raise ArgumentTypeError(
            f"`backend` must be one of {list(BACKENDS)}, got {backend!r} ({type(backend).__name__})."
        )
    if backend not in BACKENDS:
        raise ValueError(f"`backend` must be one of {list(BACKENDS)}, got {backend!r}.")
    return backend
