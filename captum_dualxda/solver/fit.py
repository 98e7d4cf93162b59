"""``fit_crammer_singer``: the one entry point in front of every solver backend."""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from typing import Dict, List, Optional, Sequence, Union

import torch

from .._utils.validation import check_flag, check_integer, check_positive, check_seed
from ..exceptions import ArgumentTypeError, ConvergenceWarning
from .backend import Backend
from .bdcd import solve_bdcd
from .gap import evaluate_optimality
from .problem import CrammerSingerResult, class_counts, make_problem
from .settings import DEFAULT_C
from .sparse_dual import DualVariables, RowSparseDual, dual_row_slices, dual_rows, dual_to_dense, set_dual_rows

__all__ = [
    "fit_crammer_singer",
    "fit_crammer_singer_path",
    "available_backends",
    "choose_backend",
    "clean_dust",
    "ConvergenceWarning",
    "CONVERGENCE_ADVICE",
    "check_Cs",
]


SPARSE_ALPHA_ENTRIES = 2**27
"""``n K`` above which ``sparse_alpha`` defaults to True on ``"bdcd"`` (dense float64 > 1 GiB)."""


CONVERGENCE_ADVICE = (
    "Use a smaller C (the number of passes grows with C times the squared norm of the features; "
    "1e-3 is the default), a larger max_iter, or features on a smaller scale (normalise the "
    "network's inputs)."
)
"""What to do about a fit that stopped at ``max_iter``; part of every :class:`ConvergenceWarning`."""


def _sequential_backend() -> Optional[Backend]:
    try:
        from .sequential import solve_sequential
    except ImportError:  # numba missing: the PyTorch backend still works everywhere
        return None
    return solve_sequential


def _final_report(problem, alpha: DualVariables):
    """The certificate of the returned ``alpha``: compiled on CPU when numba is installed.

    Same quantities as :func:`.gap.evaluate_optimality` (equal to ~1e-15), but one pass without
    float64 copies of the features: the PyTorch version can cost more than the whole sequential
    solve for small ``C`` (``benchmarks/README.md``, *Numbers behind the docstrings*).
    """
    if problem.features.device.type == "cpu" and not isinstance(alpha, RowSparseDual):
        try:
            from .sequential import evaluate_optimality_compiled
        except ImportError:
            pass
        else:
            return evaluate_optimality_compiled(problem, alpha)
    return evaluate_optimality(problem, alpha)


def available_backends() -> Dict[str, Backend]:
    """Backends usable here: ``"bdcd"`` (PyTorch, CPU and GPU) and, with numba, ``"sequential"``."""
    backends: Dict[str, Backend] = {"bdcd": solve_bdcd}
    sequential = _sequential_backend()
    if sequential is not None:
        backends["sequential"] = sequential
    return backends


ACCELERATOR_MIN_WORK = 5e4
"""Smallest ``(d + 1) K`` (multiply-adds per sample and pass) for which ``backend="auto"`` solves
on an accelerator with the block method; below it the sequential method on the CPU is used.
From CPU-measured pass counts and the block method's cost per pass measured on an H200
(docs/solver.md 4c); ``benchmarks/bdcd.py --device cuda`` measures the crossover directly."""


def choose_backend(
    device: Union[str, torch.device],
    n_samples: int,
    n_features: int,
    n_classes: int,
    C: float,
    mean_squared_norm: float,
    available: Sequence[str] = ("bdcd", "sequential"),
) -> str:
    """The backend that ``backend="auto"`` uses for a problem (docs/solver.md 4c).

    * On the CPU: ``"sequential"`` (compiled, with shrinking) whenever numba is installed; it
      was faster than the block method on the CPU at every measured size and ``C``.
    * On an accelerator: ``"bdcd"`` on the accelerator when a sample costs at least
      :data:`ACCELERATOR_MIN_WORK` multiply-adds per pass (``(d + 1) K``: large ``K`` and
      ``d``, e.g. ImageNet's 2048 x 1000); below that ``"sequential"`` on the CPU (the
      features are copied to the CPU for the solve, the result comes back to the
      accelerator). A block pass on a GPU is bound by kernel launches whatever ``d``, so both
      methods' costs grow linearly in ``n`` and the crossover is in the work per sample.

    ``C`` and ``mean_squared_norm`` (mean ``||x_i||^2`` with the intercept column) do not enter
    the rule: the passes of both methods grow with their product, the sequential method's
    faster, but its passes also get cheaper (shrinking), and the measured time ratio did not
    cross over with ``C``. The measurements are in docs/solver.md 4c.

    Parameters
    ----------
    device : str or torch.device
        Where the features are.
    n_samples, n_features, n_classes : int
        ``n``, ``d`` (without the intercept column) and ``K``.
    C : float
    mean_squared_norm : float
    available : sequence of str
        The usable backends (:func:`available_backends`).

    Returns
    -------
    str
        ``"sequential"`` or ``"bdcd"``.
    """
    device = torch.device(device)
    if "sequential" not in available:
        return "bdcd"
    if device.type == "cpu":
        return "sequential"
    work_per_sample = float(n_features + 1) * n_classes
    return "bdcd" if work_per_sample >= ACCELERATOR_MIN_WORK else "sequential"


def clean_dust(alpha: DualVariables, labels: torch.Tensor, C: float, threshold: float = 1e-10) -> DualVariables:
    """Zero wrong-class entries with ``|alpha| < threshold * C`` and restore the row sums.

    Works in 32 MiB row chunks (no ``(n, K)`` temporaries).

    Parameters
    ----------
    alpha : torch.Tensor or RowSparseDual
        ``(n, K)`` float64 feasible dual variables (modified in place and returned).
    labels : torch.Tensor
        ``(n,)`` int64.
    C : float
    threshold : float

    Returns
    -------
    torch.Tensor or RowSparseDual
        ``alpha`` with ``alpha[i, y_i] = -sum_{m != y_i} alpha[i, m]`` exactly.
    """
    for rows in dual_row_slices(alpha):
        block, y = dual_rows(alpha, rows), labels[rows]
        index = torch.arange(block.shape[0], device=block.device)
        block[block.abs() < threshold * C] = 0.0
        block[index, y] = 0.0
        block[index, y] = (-block.sum(1)).clamp(0.0, C)
        set_dual_rows(alpha, rows, block)
    return alpha


def fit_crammer_singer(
    features: torch.Tensor,
    labels: torch.Tensor,
    C: float = DEFAULT_C,
    fit_intercept: bool = True,
    intercept_scaling: float = 1.0,
    tol: float = 1e-4,
    max_iter: int = 100_000,
    device: Optional[Union[str, torch.device]] = None,
    seed: int = 0,
    show_progress: bool = False,
    *,
    n_classes: Optional[int] = None,
    backend: str = "auto",
    warm_start: Optional[CrammerSingerResult] = None,
    sparse_alpha: Optional[bool] = None,
    **backend_options,
) -> CrammerSingerResult:
    """Fit a Crammer-Singer multiclass linear SVM and return its dual variables.

    Solves exactly the problem of scikit-learn's ``LinearSVC(multi_class="crammer_singer")``
    (LIBLINEAR solver 4): a constant column ``intercept_scaling`` is appended when
    ``fit_intercept`` and its weight is regularised like the others.

    Parameters
    ----------
    features : torch.Tensor or array-like
        ``(n, d)`` float32 or float64 features. float32 is enough: the solver state is float64.
    labels : torch.Tensor or array-like
        ``(n,)`` integer labels in ``0..K-1``.
    C : float
        Regularisation constant, ``> 0`` (default 1e-3; scikit-learn's ``LinearSVC`` uses 1.0).
        Smaller C gives more support vectors and needs fewer passes.
    fit_intercept : bool
        Fit an intercept (LIBLINEAR's regularised bias column).
    intercept_scaling : float
        Value ``s`` of the constant column.
    tol : float
        Stopping tolerance on the largest natural residual (LIBLINEAR's ``eps`` scale).
    max_iter : int
        Maximum passes over the data (LIBLINEAR's Crammer-Singer solver hard-codes 100000).
    device : str or torch.device, optional
        Where to solve. Defaults to the device of ``features``.
    seed : int
        Seed for the order of updates; equal seeds give equal results on the same device.
    show_progress : bool
        Show a tqdm bar.
    n_classes : int, optional
        ``K``, if some classes have no samples; defaults to ``labels.max() + 1``. Classes
        without a sample take no part in the problem (as in scikit-learn, which drops them):
        their columns of ``alpha``, rows of ``weight`` and entries of ``intercept`` are zero.
    backend : {"auto", "sequential", "bdcd"}
        ``"auto"``: :func:`choose_backend`'s pick: the compiled sequential method with
        shrinking on CPU (if numba is installed); on accelerators batched block coordinate
        descent when ``(d + 1) K`` is large (e.g. 1000 classes), else the sequential method
        on the CPU, which was faster there.
    warm_start : CrammerSingerResult, optional
        A previous fit on the same features and labels (any ``C``); its ``alpha`` scaled by
        ``C / warm_start.C`` is the (feasible) starting point.
    sparse_alpha : bool, optional
        Keep ``alpha`` row-sparse (:class:`~captum_dualxda.solver.sparse_dual.RowSparseDual`,
        ``12 m`` bytes per sample for ``m`` slots instead of ``8 K``) during the solve (the
        ``"bdcd"`` backend) and in the result. Default: True when the backend is ``"bdcd"``
        and ``n K > 2**27`` (a dense float64 ``alpha`` above 1 GiB), False otherwise. The
        ``"sequential"`` backend always solves densely; with True its result is compressed.
    **backend_options
        Passed to the backend (e.g. ``block_size`` for ``"bdcd"``; ``acceleration=False`` runs either
        backend without momentum, docs/solver.md 2.6 and 4b).

    Returns
    -------
    CrammerSingerResult
        ``alpha`` ``(n, K)``, ``weight`` ``(K, d)``, ``intercept`` ``(K,)`` (float64, on the
        solver's device), objectives, relative ``gap`` and ``n_iter``.
    """
    tol = check_positive(tol, "tol")
    max_iter = check_integer(max_iter, "max_iter", low=1)
    seed = check_seed(seed)
    show_progress = check_flag(show_progress, "show_progress")
    sparse_alpha = check_flag(sparse_alpha, "sparse_alpha", optional=True)
    problem = make_problem(features, labels, C, fit_intercept, intercept_scaling, n_classes)
    present = class_counts(problem.labels, problem.n_classes).nonzero().flatten().to(problem.labels.device)
    if present.numel() < problem.n_classes:
        # Classes without a training sample: solve scikit-learn's problem, which knows only the
        # classes present, and give the others zero dual variables, weights and intercept.
        return _fit_present_classes(
            problem,
            present,
            tol=tol,
            max_iter=max_iter,
            device=device,
            seed=seed,
            show_progress=show_progress,
            backend=backend,
            warm_start=warm_start,
            sparse_alpha=sparse_alpha,
            **backend_options,
        )
    if device is not None:
        target = torch.device(device)
        problem.features = problem.features.to(target)
        problem.labels = problem.labels.to(target)
    backends = available_backends()
    if backend == "auto":
        on_cpu = problem.features.device.type == "cpu"
        mean_squared_norm = math.nan if on_cpu else float(problem.squared_norms().mean())
        backend = choose_backend(
            problem.features.device,
            problem.n_samples,
            problem.n_features,
            problem.n_classes,
            problem.C,
            mean_squared_norm,
            tuple(backends),
        )
    if backend not in backends:
        raise ValueError(f"`backend` must be one of {['auto', *backends]}, got {backend!r}.")
    if sparse_alpha is None:
        sparse_alpha = backend == "bdcd" and problem.n_samples * problem.n_classes > SPARSE_ALPHA_ENTRIES
    sparse_alpha = bool(sparse_alpha)
    alpha0: Optional[DualVariables] = None
    if warm_start is not None:
        if tuple(warm_start.alpha.shape) != (problem.n_samples, problem.n_classes):
            raise ValueError(
                "`warm_start` was fitted on a different problem: alpha has shape "
                f"{tuple(warm_start.alpha.shape)}, expected {(problem.n_samples, problem.n_classes)}."
            )
        ratio = problem.C / warm_start.C
        previous = warm_start.alpha.to(problem.features.device)
        alpha0 = previous.scaled(ratio) if isinstance(previous, RowSparseDual) else previous * ratio
    if backend == "bdcd":
        backend_options["sparse"] = sparse_alpha
    elif alpha0 is not None:
        alpha0 = dual_to_dense(alpha0)
    start = time.perf_counter()
    out = backends[backend](
        problem,
        tol=float(tol),
        max_iter=int(max_iter),
        seed=int(seed),
        alpha0=alpha0,
        show_progress=show_progress,
        **backend_options,
    )
    alpha: DualVariables = out.alpha
    if sparse_alpha and not isinstance(alpha, RowSparseDual):
        alpha = RowSparseDual.from_dense(alpha)
    elif not sparse_alpha:
        alpha = dual_to_dense(alpha)
    alpha = clean_dust(alpha, problem.labels, problem.C)
    report = _final_report(problem, alpha)
    elapsed = time.perf_counter() - start
    if not out.converged:
        warnings.warn(
            f"The Crammer-Singer solver stopped after max_iter={max_iter} passes with residual "
            f"{report.residual:.3g} > tol={tol:g} (relative gap {report.relative_gap:.3g}), so the dual "
            f"variables are not optimal. {CONVERGENCE_ADVICE}",
            ConvergenceWarning,
            stacklevel=2,
        )
    return CrammerSingerResult(
        alpha=alpha,
        weight=report.weight,
        intercept=problem.intercept_scaling * report.bias_weight,
        primal=report.primal,
        dual=report.dual,
        gap=report.relative_gap,
        n_iter=out.n_iter,
        residual=report.residual,
        converged=out.converged,
        backend=backend,
        time=elapsed,
        C=problem.C,
        intercept_scaling=problem.intercept_scaling,
        tol=float(tol),
        stats=dict(out.stats),
    )


def _select_classes(alpha: DualVariables, present: torch.Tensor) -> DualVariables:
    """``alpha`` restricted to the columns ``present`` (the other columns must be zero)."""
    if isinstance(alpha, RowSparseDual):
        position = torch.zeros(alpha.n_classes, dtype=torch.int32, device=alpha.device)
        position[present.to(alpha.device)] = torch.arange(present.numel(), dtype=torch.int32, device=alpha.device)
        out = RowSparseDual(
            alpha.shape[0], present.numel(), capacity=min(alpha.capacity, present.numel()), device=alpha.device
        )
        for rows in dual_row_slices(alpha):
            out.set_rows(rows, dual_rows(alpha, rows)[:, present.to(alpha.device)])
        return out
    return alpha[:, present.to(alpha.device)].contiguous()


def _expand_classes(alpha: DualVariables, present: torch.Tensor, n_classes: int) -> DualVariables:
    """``(n, P)`` dual variables of the present classes as ``(n, K)``, zero for absent classes."""
    present = present.to(alpha.device)
    if isinstance(alpha, RowSparseDual):
        out = RowSparseDual.__new__(RowSparseDual)
        out.n_classes, out.values, out.classes = n_classes, alpha.values, present.to(torch.int32)[alpha.classes.long()]
        return out
    dense = torch.zeros(alpha.shape[0], n_classes, dtype=alpha.dtype, device=alpha.device)
    dense[:, present] = alpha
    return dense


def _fit_present_classes(
    problem, present: torch.Tensor, warm_start: Optional[CrammerSingerResult], **kwargs
) -> CrammerSingerResult:
    """Solve on the classes that have samples (relabelled ``0..P-1``), report in all ``K``."""
    K = problem.n_classes
    relabel = torch.full((K,), -1, dtype=torch.int64, device=present.device)
    relabel[present] = torch.arange(present.numel(), device=present.device)
    if warm_start is not None:
        if tuple(warm_start.alpha.shape) != (problem.n_samples, K):
            raise ValueError(
                "`warm_start` was fitted on a different problem: alpha has shape "
                f"{tuple(warm_start.alpha.shape)}, expected {(problem.n_samples, K)}."
            )
        warm_start = dataclasses.replace(warm_start, alpha=_select_classes(warm_start.alpha, present))
    result = fit_crammer_singer(
        problem.features,
        relabel[problem.labels],
        C=problem.C,
        fit_intercept=problem.intercept_scaling > 0,
        intercept_scaling=problem.intercept_scaling if problem.intercept_scaling > 0 else 1.0,
        n_classes=present.numel(),
        warm_start=warm_start,
        **kwargs,
    )
    weight = torch.zeros(K, result.weight.shape[1], dtype=result.weight.dtype, device=result.weight.device)
    weight[present.to(weight.device)] = result.weight
    intercept = torch.zeros(K, dtype=result.intercept.dtype, device=result.intercept.device)
    intercept[present.to(intercept.device)] = result.intercept
    return dataclasses.replace(
        result, alpha=_expand_classes(result.alpha, present, K), weight=weight, intercept=intercept
    )


def check_Cs(Cs: Sequence[float]) -> List[float]:
    """The values of ``Cs`` as floats; each must be a finite real number ``> 0`` (NumPy scalars too).

    Raises
    ------
    ValueError
        ``Cs`` is empty or not a sequence, or an entry is not a finite number ``> 0`` (the
        message names it, e.g. ``Cs[1]``).
    """
    try:
        values = list(Cs)
    except TypeError:
        raise ArgumentTypeError(f"`Cs` must be a non-empty sequence of numbers > 0, got {Cs!r}.") from None
    if not values:
        raise ValueError("`Cs` must contain at least one value of C.")
    return [check_positive(c, f"Cs[{i}]") for i, c in enumerate(values)]


def fit_crammer_singer_path(
    features: torch.Tensor,
    labels: torch.Tensor,
    Cs: Sequence[float],
    **kwargs,
) -> List[CrammerSingerResult]:
    """Fit one Crammer-Singer SVM per ``C``, each warm-started from the previous one.

    The ``C`` values are solved in the order given; fit ``k`` starts from fit ``k-1``'s
    ``alpha`` scaled by ``C_k / C_{k-1}`` (feasible for the new problem), see
    :func:`fit_crammer_singer`'s ``warm_start``. Every fit is solved to the same ``tol`` and
    checked on its own.

    Any order gives the same fits (the optimum does not depend on the starting point); the order
    changes only the time, and little, because LIBLINEAR's shrinking schedule (which we keep)
    restarts from ``eps_shrink = 1`` and its passes over everything dominate. A decreasing order
    helps somewhat where the small-``C`` fits are expensive (many classes);
    :func:`~captum_dualxda.choose_c.sweep_C` solves in increasing ``C``, the order it reports.
    ``benchmarks/README.md`` (*Numbers behind the docstrings*) times the three orders.

    Parameters
    ----------
    features : torch.Tensor or array-like
        ``(n, d)`` float32 or float64 features.
    labels : torch.Tensor or array-like
        ``(n,)`` integer labels in ``0..K-1``.
    Cs : sequence of float
        Non-empty; every value finite and ``> 0``.
    **kwargs
        Passed to every :func:`fit_crammer_singer` call (``fit_intercept``, ``tol``, ``seed``,
        ``backend``, ...); ``C`` and ``warm_start`` are set by this function.

    Returns
    -------
    list of CrammerSingerResult
        One result per entry of ``Cs``, in the same order.

    Raises
    ------
    ValueError
        If ``Cs`` is empty or holds a value that is not a finite number ``> 0``.
    TypeError
        If ``C`` or ``warm_start`` is passed in ``kwargs``.
    """
    for reserved in ("C", "warm_start"):
        if reserved in kwargs:
            raise TypeError(f"`{reserved}` is set by fit_crammer_singer_path; pass `Cs` instead.")
    values = check_Cs(Cs)
    results: List[CrammerSingerResult] = []
    previous: Optional[CrammerSingerResult] = None
    for c in values:
        previous = fit_crammer_singer(features, labels, C=c, warm_start=previous, **kwargs)
        results.append(previous)
    return results
