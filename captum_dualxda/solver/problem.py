"""The Crammer-Singer problem: validated inputs and the solver's result.

Notation follows ``docs/method.md``: ``n`` training samples, ``d`` feature dimensions, ``K`` classes.
The intercept is handled as LIBLINEAR does: a constant column ``s = intercept_scaling`` is
appended to every sample and regularised like any other weight. We keep that column implicit:
``s = 0`` is exactly the problem without intercept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from .._utils.chunking import nonfinite_rows, row_squared_norms
from .._utils.validation import check_flag, check_integer, check_positive
from .sparse_dual import DualVariables, RowSparseDual, dual_row_slices

__all__ = ["CrammerSingerProblem", "CrammerSingerResult", "make_problem", "support_mask", "class_counts"]


@dataclass
class CrammerSingerProblem:
    """A validated Crammer-Singer dual problem.

    Attributes
    ----------
    features : torch.Tensor
        ``(n, d)`` float32 or float64 features ``phi(x_i)``, without the intercept column.
    labels : torch.Tensor
        ``(n,)`` int64 labels in ``0..n_classes-1``.
    n_classes : int
        Number of classes ``K >= 2``.
    C : float
        Regularisation constant, finite and ``> 0``.
    intercept_scaling : float
        The constant ``s`` of the implicit intercept column; ``0.0`` means no intercept.
    """

    features: torch.Tensor
    labels: torch.Tensor
    n_classes: int
    C: float
    intercept_scaling: float

    @property
    def n_samples(self) -> int:
        return self.features.shape[0]

    @property
    def n_features(self) -> int:
        return self.features.shape[1]

    def squared_norms(self) -> torch.Tensor:
        """``(n,)`` float64 ``A_i = ||x_i||^2 + s^2`` (the per-sample curvature)."""
        return row_squared_norms(self.features) + self.intercept_scaling**2


@dataclass
class CrammerSingerResult:
    """What :func:`fit_crammer_singer` returns.

    Attributes
    ----------
    alpha : torch.Tensor or RowSparseDual
        ``(n, K)`` float64 dual variables in input order, LIBLINEAR's sign convention:
        ``0 <= alpha[i, y_i] <= C``, ``alpha[i, m] <= 0`` for ``m != y_i``, rows sum to 0.
        A dense tensor, or (``sparse_alpha``, by default for ``n K > 2**27`` on the ``"bdcd"``
        backend) a :class:`~captum_dualxda.solver.sparse_dual.RowSparseDual`; read rows of
        either with :func:`~captum_dualxda.solver.sparse_dual.dual_rows`.
    weight : torch.Tensor
        ``(K, d)`` float64 primal weights ``W = alpha.T @ features`` (the intercept column removed).
    intercept : torch.Tensor
        ``(K,)`` float64 ``s**2 * alpha.sum(0)`` (zeros without intercept).
    primal : float
        Primal objective ``P(W)``.
    dual : float
        Dual objective in maximisation form, ``-f(alpha)``; ``primal >= dual``.
    gap : float
        Relative duality gap ``(primal - dual) / |primal|`` (non-negative up to rounding).
    n_iter : int
        Passes (epochs) over the training set that the backend made.
    residual : float
        Largest natural residual ``max_i r_i`` at the returned point (compare to ``tol``).
    converged : bool
        Whether ``residual <= tol`` was reached within ``max_iter``.
    backend : str
        Name of the backend that solved the problem.
    time : float
        Wall-clock seconds spent in the solver.
    """

    alpha: DualVariables
    weight: torch.Tensor
    intercept: torch.Tensor
    primal: float
    dual: float
    gap: float
    n_iter: int
    residual: float
    converged: bool
    backend: str
    time: float
    C: float = 1.0
    intercept_scaling: float = 1.0
    tol: float = 1e-4
    stats: dict = field(default_factory=dict)

    @property
    def support_indices(self) -> torch.Tensor:
        """``(n_sv,)`` int64 indices of the rows with ``max_m |alpha_i^m| > 1e-8 * C``."""
        return support_mask(self.alpha, self.C).nonzero().flatten()


def support_mask(alpha: DualVariables, C: float, threshold: float = 1e-8) -> torch.Tensor:
    """``(n,)`` bool mask of support vectors: ``max_m |alpha_i^m| > threshold * C``.

    ``alpha`` is a dense ``(n, K)`` tensor (read in 32 MiB row chunks) or a
    :class:`~captum_dualxda.solver.sparse_dual.RowSparseDual`.
    """
    if isinstance(alpha, RowSparseDual):
        return alpha.values.abs().amax(1) > threshold * C
    mask = torch.empty(alpha.shape[0], dtype=torch.bool, device=alpha.device)
    for rows in dual_row_slices(alpha):
        mask[rows] = alpha[rows].abs().amax(1) > threshold * C
    return mask


def class_counts(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """``(n_classes,)`` int64 number of samples per class of ``(n,)`` labels in ``0..n_classes-1``.

    ``bincount``, not ``torch.unique``: unique sorts, three orders of magnitude slower on the CPU
    (``benchmarks/README.md``, *Numbers behind the docstrings*).
    """
    if labels.device.type == "cpu":
        return torch.from_numpy(np.bincount(labels.numpy(), minlength=n_classes).astype(np.int64))
    return torch.bincount(labels, minlength=n_classes)


def make_problem(
    features: torch.Tensor,
    labels: torch.Tensor,
    C: float,
    fit_intercept: bool,
    intercept_scaling: float,
    n_classes: Optional[int] = None,
) -> CrammerSingerProblem:
    """Validate solver inputs and bundle them; every check runs before any solving.

    Parameters
    ----------
    features : torch.Tensor or array-like
        ``(n, d)`` floating-point features. Other float dtypes are converted to float32.
    labels : torch.Tensor or array-like
        ``(n,)`` integer labels in ``0..K-1``.
    C : float
        Finite, ``> 0``.
    fit_intercept : bool
        Append the implicit constant column ``intercept_scaling``.
    intercept_scaling : float
        Finite, ``> 0`` when ``fit_intercept``.
    n_classes : int, optional
        ``K``; defaults to ``labels.max() + 1``.

    Returns
    -------
    CrammerSingerProblem

    Raises
    ------
    ValueError, TypeError
        With the name of the offending argument.
    """
    check_positive(C, "C")
    if check_flag(fit_intercept, "fit_intercept"):
        check_positive(intercept_scaling, "intercept_scaling")
    n_classes = check_integer(n_classes, "n_classes", low=2, optional=True)
    features = torch.as_tensor(features)
    labels = torch.as_tensor(labels)
    if features.ndim != 2:
        raise ValueError(f"`features` must be 2-D (n, d), got shape {tuple(features.shape)}.")
    if features.shape[0] == 0:
        raise ValueError("`features` is empty: the training set has no samples.")
    if features.shape[1] == 0:
        raise ValueError("`features` has no columns (d = 0).")
    if not torch.is_floating_point(features) or features.dtype not in (torch.float32, torch.float64):
        features = features.to(torch.float32)
    if labels.ndim != 1 or labels.shape[0] != features.shape[0]:
        raise ValueError(
            f"`labels` must be 1-D with one entry per sample ({features.shape[0]}), got shape {tuple(labels.shape)}."
        )
    if torch.is_floating_point(labels) and not bool((labels == labels.round()).all()):
        raise ValueError("`labels` must be integers in 0..K-1.")
    labels = labels.to(device=features.device, dtype=torch.int64)
    bad = nonfinite_rows(features)
    if bad:
        raise ValueError(f"`features` contain NaN or inf (first bad rows: {bad}).")
    lo, hi = int(labels.min()), int(labels.max())
    if n_classes is None:
        n_classes = hi + 1
    if lo < 0 or hi >= n_classes:
        raise ValueError(f"`labels` must lie in 0..{n_classes - 1}, found values in {lo}..{hi}.")
    n_distinct = int((class_counts(labels, n_classes) > 0).sum())
    if n_classes < 2 or n_distinct < 2:
        raise ValueError(f"`labels` must contain at least 2 distinct classes for a multiclass SVM, found {n_distinct}.")
    s = float(intercept_scaling) if fit_intercept else 0.0
    return CrammerSingerProblem(features.contiguous(), labels, int(n_classes), float(C), s)
