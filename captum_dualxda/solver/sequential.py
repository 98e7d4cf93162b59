"""Compiled sequential dual method with shrinking (numba): the CPU backend.

A port of the algorithm of LIBLINEAR's ``Solver_MCSVM_CS`` (Keerthi et al. 2008; docs/solver.md 2):
samples are visited one at a time in a random order, each sample's block of ``K`` dual variables is
minimised exactly (the sort-based subproblem of docs/solver.md 2.2 step 4) and ``W`` is updated
immediately. Two kinds of shrinking skip work that cannot change anything soon:

* class shrinking: a class whose ``alpha`` sits at its bound and whose gradient is below the
  smallest free gradient of the sample is moved behind the sample's active class list
  (``alpha_index`` swaps), so neither its score nor its update is computed again in this phase;
* sample shrinking: a sample with at most one active class leaves the active sample set.

The shrinking tolerance starts at ``max(10 tol, 1)`` and is halved down to ``tol``; every change of
it reactivates all samples and classes, and a pass can only end the solve if it ran over
everything. Unlike LIBLINEAR, its (stale) violation then only *proposes* stopping: we rebuild
``W = alpha^T X`` exactly and stop only if the continuous natural residual of every sample
(:mod:`.gap`) is ``<= tol``; otherwise all shrinking is undone and the passes continue.

Differences to LIBLINEAR that do not change the method: ``W`` is stored as ``(K, d)`` rows so that
the per-class scores ``w_m . x_i`` and the updates ``w_m += delta x_i`` are contiguous, vectorised
loops over the features; the intercept column is implicit; feature columns that are zero for every
sample (dead ReLU units) are dropped before solving (:func:`drop_zero_columns`: they add exact
zeros to every score, and LIBLINEAR's sparse rows skip them too); the subproblem finds the pivot
by partial selection instead of a full sort, and solves two active classes in closed form (same
result); the random order comes from our own SplitMix64 generator seeded by ``seed``.

The hot loop is written for the CPU and compiled as one function (the helpers are inlined, with
element indexing instead of array views): scores of four active classes at a time share the loads
of ``x_i`` (fastmath reassociation so LLVM vectorises the float64 sums), the next sample's
features and dual state are prefetched while the current one is solved when the active samples do
not fit in the core's cache, the shuffle draws its indices with a multiply-shift instead of a
division, and the class lists are int32 (``n K`` of them, as in LIBLINEAR). After each
reactivation of a large problem (a pass over everything of at least ``1e7`` multiply-adds), all
scores come from one matrix product and the shrinking rule is applied to them with a margin for
its rounding before the next pass (:func:`_screen_reactivated`), instead of one sample at a time.
docs/solver.md, "2.5 The cost of a pass", has the measurements.

Precision: features stay in their dtype (float32 is fine), ``alpha``, ``W`` and all arithmetic of
the subproblem are float64 (dot products accumulate in float64). Measured alternatives: a float32
``W`` state was no faster (mixed-precision updates) and drifted, so the exact check failed and
needed extra rounds (residual 1.1e-4 > tol 1e-4 at the first check, 4 checks at tol 1e-5); a
float32 copy of ``W`` used only to screen the classes that are certainly shrunk (with a rigorous
rounding bound) gave the same decisions but no measurable speed-up, so neither is used.

The compiled kernels come from :mod:`.machine_code` (an on-disk cache of their machine code).
"""

from __future__ import annotations

import contextlib
import importlib.util
import time
from typing import Any, Optional, Tuple

import numpy as np
import torch
from tqdm.auto import tqdm

from . import machine_code
from .backend import BackendOutput
from .gap import OptimalityReport
from .machine_code import Kernels
from .problem import CrammerSingerProblem

if importlib.util.find_spec("numba") is None:  # the solver's fit falls back to the PyTorch backend
    raise ImportError("The sequential backend needs numba (pip install numba).")

__all__ = ["solve_sequential", "solve_subproblem", "evaluate_optimality_compiled", "drop_zero_columns"]

# Return codes of the pass kernel (the same constants as in ._sequential_kernels).
_CONTINUE, _PROPOSE_STOP, _MAX_ITER, _REACTIVATED = 0, 1, 2, 3
# Sizes of its schedule state ``ints`` and ``floats`` (N_INTS, N_FLOATS there; layout in solve_sequential).
_N_INTS, _N_FLOATS = 7, 4

# After a reactivation, shrink with scores from one matrix product (:func:`_screen_reactivated`)
# when the pass over everything would cost at least this many multiply-adds (n d K): below it, the
# product and the calls cost more than the scores they save (measured on the digits benchmark).
_SCREEN_MIN_WORK = 1e7
_SCREEN_BLOCK_ELEMENTS = 1 << 22  # rows of the product per call: at most this many scores

# ------------------------------------------------------------------------------------------------
# The solver on top of the kernels.
# ------------------------------------------------------------------------------------------------


def _address(array: np.ndarray, dtype: Any) -> int:
    """Address of a C-contiguous ``dtype`` buffer (the kernels read raw memory: checked first)."""
    if array.dtype != dtype or not array.flags.c_contiguous:
        raise TypeError(
            f"internal error: the compiled kernels need a C-contiguous {np.dtype(dtype)} array, got "
            f"{array.dtype} (C-contiguous: {array.flags.c_contiguous})."
        )
    return array.ctypes.data


def solve_subproblem(shifted: np.ndarray, curvature: float, y_position: int, C: float) -> np.ndarray:
    """LIBLINEAR's per-sample subproblem (compiled), for testing and reuse.

    Parameters
    ----------
    shifted : np.ndarray
        ``(size,)`` float64 ``B[m] = G[m] - A_i alpha_i[m]`` over the active classes.
    curvature : float
        ``A_i > 0``.
    y_position : int
        Position of the true class among the active ones; ``>= size`` if it is shrunk (then it
        holds ``alpha = C`` and the active entries sum to ``-C``).
    C : float
        Upper bound of the true class.

    Returns
    -------
    np.ndarray
        ``(size,)`` float64 new ``alpha`` values of the active classes.
    """
    b = np.ascontiguousarray(shifted, dtype=np.float64).reshape(-1)
    out = np.empty_like(b)
    work = np.empty_like(b)
    kernels = next(iter(machine_code.LOADED.values()), None) or machine_code.kernels("float64")
    kernels.subproblem(
        b.ctypes.data, float(curvature), int(y_position), float(C), b.shape[0], out.ctypes.data, work.ctypes.data
    )
    return out


# Features without their all-zero columns are copied only while the copy stays this small, and
# only when at least this fraction of the columns is all zero.
_COMPACT_MAX_BYTES = 1 << 30
_COMPACT_MIN_DEAD_FRACTION = 1 / 16


def drop_zero_columns(x: np.ndarray, *, chunk_rows: int = 4096) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """``x`` without the columns that are zero in every row, when that saves enough work.

    A column that is zero for every sample (a ReLU unit that never fires, common in penultimate
    layers) adds an exact zero to every dot product of the solver and its column of ``W`` stays
    zero, so the dual solution does not depend on it: dropping it changes no result and removes
    its share of every pass's arithmetic (60 of 128 units are dead in the digits CNN of
    ``benchmarks/solver.py``). Dense features are recognised from their first rows.

    Parameters
    ----------
    x : np.ndarray
        ``(n, d)`` float32 or float64, C-contiguous.
    chunk_rows : int
        Rows scanned at a time (no ``(n, d)`` temporaries).

    Returns
    -------
    features : np.ndarray
        ``x`` itself when fewer than ``d / 16`` columns are all zero, all are, or the compact copy
        would exceed 1 GiB; otherwise a C-contiguous ``(n, d')`` copy of the other columns, in
        their order.
    columns : np.ndarray or None
        ``(d',)`` int64 indices of the kept columns in ``x``; ``None`` when ``x`` is returned.
    """
    n, d = x.shape
    live = np.zeros(d, dtype=bool)
    for start in range(0, n, chunk_rows):
        live |= np.any(x[start : start + chunk_rows], axis=0)
        if d - np.count_nonzero(live) < _COMPACT_MIN_DEAD_FRACTION * d:
            return x, None
    columns = np.flatnonzero(live)
    if columns.size == 0 or n * columns.size * x.itemsize > _COMPACT_MAX_BYTES:
        return x, None
    return np.ascontiguousarray(np.compress(live, x, axis=1)), columns


def _prepare(
    problem: CrammerSingerProblem,
) -> Tuple[np.ndarray, Optional[np.ndarray], np.ndarray, np.ndarray, Kernels]:
    """CPU numpy arrays: ``(n, d')`` features (own dtype; all-zero columns dropped when worth it)
    with the kept columns' indices (``None``: all kept; see :func:`drop_zero_columns`), ``(n,)``
    int64 labels, ``(n,)`` float64 ``A_i``."""
    x = np.ascontiguousarray(problem.features.detach().cpu().numpy())
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    x, columns = drop_zero_columns(x)
    y = np.ascontiguousarray(problem.labels.detach().cpu().numpy(), dtype=np.int64)
    kernels = machine_code.kernels(x.dtype.name)
    sq = np.empty(x.shape[0])
    s = float(problem.intercept_scaling)
    kernels.squared_norms(_address(x, kernels.features), x.shape[0], x.shape[1], s, _address(sq, np.float64))
    return x, columns, y, sq, kernels


def _rebuild_weights(
    kernels: Kernels, x: np.ndarray, s: float, alpha: np.ndarray, weight: np.ndarray, bias_weight: np.ndarray
) -> None:
    """``weight = alpha^T x`` and ``bias_weight = s alpha.sum(0)`` in float64 (in place)."""
    kernels.rebuild_weights(
        _address(x, kernels.features),
        x.shape[0],
        x.shape[1],
        s,
        _address(alpha, np.float64),
        alpha.shape[1],
        _address(weight, np.float64),
        _address(bias_weight, np.float64),
    )


def _certificate(
    kernels: Kernels,
    x: np.ndarray,
    y: np.ndarray,
    s: float,
    c: float,
    sq: np.ndarray,
    alpha: np.ndarray,
    weight: np.ndarray,
    bias_weight: np.ndarray,
    residuals: np.ndarray,
) -> float:
    """Natural residuals into ``residuals`` (``(n,)`` float64); returns the primal's hinge-loss sum."""
    k = alpha.shape[1]
    scratch = np.empty((4, k))
    all_classes = np.arange(k, dtype=np.int32)
    return kernels.certificate(
        _address(x, kernels.features),
        x.shape[0],
        x.shape[1],
        _address(y, np.int64),
        s,
        c,
        _address(sq, np.float64),
        _address(alpha, np.float64),
        k,
        _address(weight, np.float64),
        _address(bias_weight, np.float64),
        _address(residuals, np.float64),
        _address(scratch, np.float64),
        _address(all_classes, np.int32),
    )


def evaluate_optimality_compiled(problem: CrammerSingerProblem, alpha: torch.Tensor) -> OptimalityReport:
    """Compiled CPU twin of :func:`.gap.evaluate_optimality` (same quantities, one pass, no copies).

    Parameters
    ----------
    problem : CrammerSingerProblem
        Features are used on the CPU (copied there if needed).
    alpha : torch.Tensor
        ``(n, K)`` float64 feasible dual variables.

    Returns
    -------
    OptimalityReport
        ``weight`` ``(K, d)`` and ``bias_weight`` ``(K,)`` float64 CPU tensors, primal, dual,
        gap, relative gap and the largest natural residual.
    """
    x, columns, y, sq, kernels = _prepare(problem)
    a = np.ascontiguousarray(alpha.detach().cpu().numpy(), dtype=np.float64)
    s = float(problem.intercept_scaling)
    weight = np.zeros((problem.n_classes, x.shape[1]))
    bias_weight = np.zeros(problem.n_classes)
    _rebuild_weights(kernels, x, s, a, weight, bias_weight)
    residuals = np.empty(x.shape[0])
    loss = _certificate(kernels, x, y, s, float(problem.C), sq, a, weight, bias_weight, residuals)
    sq_w = float((weight * weight).sum() + (bias_weight * bias_weight).sum())
    primal = 0.5 * sq_w + problem.C * loss
    dual = -0.5 * sq_w + float(a[np.arange(a.shape[0]), y].sum())
    if columns is not None:  # the dropped columns of W are exactly zero
        full = np.zeros((problem.n_classes, problem.n_features))
        full[:, columns] = weight
        weight = full
    return OptimalityReport(
        weight=torch.from_numpy(weight),
        bias_weight=torch.from_numpy(bias_weight),
        primal=primal,
        dual=dual,
        gap=primal - dual,
        relative_gap=(primal - dual) / max(abs(primal), 1e-300),
        residual=float(residuals.max()) if residuals.size else 0.0,
    )


def _screen_reactivated(
    kernels: Kernels,
    x: np.ndarray,
    s: float,
    c: float,
    sq: np.ndarray,
    alpha: np.ndarray,
    weight: np.ndarray,
    bias_weight: np.ndarray,
    state: Tuple[np.ndarray, ...],
    scratch: np.ndarray,
) -> None:
    """Shrink after a reactivation with all scores from one matrix product, before the next pass.

    The pass over everything that follows a reactivation computes ``K`` scores per sample one
    sample at a time, mostly to shrink them again. A matrix product (BLAS, in the features' dtype)
    computes them far faster; the kernel then applies the shrinking rule with a margin that
    covers the product's rounding, and samples left with one class leave the active set. The
    pass that follows runs over the rest, as LIBLINEAR's would after shrinking them itself.
    Shrinking only decides what the next passes visit: the stopping check is exact either way.
    """
    alpha_index, class_active, y_index, order, ints = state
    n, k = alpha.shape
    unit_roundoff = float(np.finfo(x.dtype).eps) / 2
    margin = (x.shape[1] + 2) * unit_roundoff * float(np.sqrt((weight * weight).sum(1)).max())
    weight_t = np.ascontiguousarray(weight.T, dtype=x.dtype)  # (d, K) in the features' dtype
    rows = max(1, _SCREEN_BLOCK_ELEMENTS // k)
    for start in range(0, n, rows):
        scores = np.ascontiguousarray(x[start : start + rows] @ weight_t)
        kernels.screen(
            _address(scores, kernels.features),
            start,
            scores.shape[0],
            s,
            c,
            _address(sq, np.float64),
            n,
            _address(alpha, np.float64),
            k,
            _address(bias_weight, np.float64),
            _address(alpha_index, np.int32),
            _address(class_active, np.int64),
            _address(y_index, np.int64),
            margin,
            _address(scratch, np.float64),
        )
    keep = class_active[order] > 1
    keep |= sq[order] <= 0.0  # the pass kernel keeps (and skips) samples with A_i = 0
    order[:] = np.concatenate([order[keep], order[~keep]])
    ints[1] = int(keep.sum())


def solve_sequential(
    problem: CrammerSingerProblem,
    *,
    tol: float,
    max_iter: int,
    seed: int,
    alpha0: Optional[torch.Tensor] = None,
    show_progress: bool = False,
    acceleration: bool = True,
) -> BackendOutput:
    """Solve the Crammer-Singer dual with the compiled sequential method with shrinking (CPU).

    Parameters
    ----------
    problem : CrammerSingerProblem
        Validated problem; features are copied to the CPU if needed (float32 or float64).
    tol : float
        LIBLINEAR's ``eps``: drives the shrinking schedule; the solve stops only when the
        exact largest natural residual ``max_i r_i`` over all samples is ``<= tol``.
    max_iter : int
        Maximum number of passes.
    seed : int
        Seed of the sample order; equal seeds give bitwise equal results on the same machine.
    alpha0 : torch.Tensor, optional
        ``(n, K)`` float64 feasible starting point (warm start); ``W`` starts at
        ``alpha0^T [X, s]``.
    show_progress : bool
        Show a tqdm bar over passes.
    acceleration : bool
        End every pass with momentum and restarts (module docstring; docs/solver.md 2.6): one
        more float64 ``(n, K)`` copy of ``alpha`` in memory. ``False``: the plain method, as
        LIBLINEAR runs it (for comparisons).

    Returns
    -------
    BackendOutput
        ``alpha`` ``(n, K)`` float64 tensor in input order (on the problem's device, i.e. the CPU
        unless features on an accelerator were passed explicitly to this backend), passes made,
        whether the exact check passed, and ``stats["restarts"]`` (restarts of the momentum).
    """
    x, _, y, sq, kernels = _prepare(problem)
    n, k = problem.n_samples, problem.n_classes
    s, c = float(problem.intercept_scaling), float(problem.C)
    if alpha0 is None:
        alpha = np.zeros((n, k))
    else:
        alpha = np.array(alpha0.detach().cpu().numpy(), dtype=np.float64, order="C", copy=True)
    weight = np.zeros((k, x.shape[1]))
    bias_weight = np.zeros(k)
    if alpha0 is not None:
        _rebuild_weights(kernels, x, s, alpha, weight, bias_weight)
    alpha_index = np.tile(np.arange(k, dtype=np.int32), (n, 1))  # int32 like LIBLINEAR: n*K*4 bytes
    class_active = np.full(n, k, dtype=np.int64)
    y_index = y.copy()
    order = np.arange(n, dtype=np.int64)
    # the schedule state (layout in ._sequential_kernels): passes, active samples, "the pass ran over
    # everything", passes since the momentum restarted, rows in touched_list, "the pass started from
    # an extrapolated point", restarts; the shrinking tolerance, the running sum_i alpha_i^{y_i},
    # and that sum and the dual objective at the last accepted point
    ints = np.array([0, n, 1, 1, 0, 0, 0], dtype=np.int64)
    own = _own_sum(alpha, y)
    floats = np.array([max(10.0 * tol, 1.0), own, np.inf, own])
    assert ints.shape == (_N_INTS,) and floats.shape == (_N_FLOATS,)
    # momentum state: the last accepted point (rows outside touched_list equal alpha) and its W
    previous = alpha.copy() if acceleration else np.zeros((1, k))
    weight_previous = weight.copy()
    bias_previous = bias_weight.copy()
    touched = np.zeros(n if acceleration else 1, dtype=np.int32)
    touched_list = np.zeros(n if acceleration else 1, dtype=np.int64)
    rng = np.array([np.uint64(int(seed) % 2**64) ^ np.uint64(0x5DEECE66D)], dtype=np.uint64)
    scratch = np.empty((4, k))
    residuals = np.empty(n)
    # the state arrays never move: their addresses are taken once
    state = (
        _address(x, kernels.features),
        n,
        x.shape[1],
        _address(y, np.int64),
        s,
        c,
        _address(sq, np.float64),
        _address(alpha, np.float64),
        k,
        _address(weight, np.float64),
        _address(bias_weight, np.float64),
        _address(alpha_index, np.int32),
        _address(class_active, np.int64),
        _address(y_index, np.int64),
        _address(order, np.int64),
        _address(ints, np.int64),
        _address(floats, np.float64),
        _address(rng, np.uint64),
        float(tol),
        int(max_iter),
    )
    momentum = (
        _address(previous, np.float64),
        _address(weight_previous, np.float64),
        _address(bias_previous, np.float64),
        _address(touched, np.int32),
        _address(touched_list, np.int64),
        int(bool(acceleration)),
    )
    scratch_address = _address(scratch, np.float64)
    screen = float(n) * x.shape[1] * k >= _SCREEN_MIN_WORK
    state_arrays = (alpha_index, class_active, y_index, order, ints)
    chunk = 1 if show_progress else max_iter  # with a bar: grow chunks to ~0.1 s per call
    converged = False
    # no bar object at all without progress: tqdm's first bar in a process costs about a millisecond
    bar = tqdm(total=max_iter, desc="DualDA solver (sequential)", leave=False) if show_progress else None
    with bar if bar is not None else contextlib.nullcontext():
        while True:
            before = int(ints[0])
            started = time.perf_counter()
            code = kernels.run_passes(*state, chunk, scratch_address, *momentum)
            if bar is not None:
                bar.update(int(ints[0]) - before)
                if time.perf_counter() - started < 0.1:
                    chunk = min(2 * chunk, max_iter)
            if code == _MAX_ITER:
                break
            if code == _REACTIVATED and screen:
                _screen_reactivated(kernels, x, s, c, sq, alpha, weight, bias_weight, state_arrays, scratch)
            if code == _PROPOSE_STOP:
                _rebuild_weights(kernels, x, s, alpha, weight, bias_weight)
                _certificate(kernels, x, y, s, c, sq, alpha, weight, bias_weight, residuals)
                worst = float(residuals.max())
                if worst <= tol:
                    converged = True
                    if bar is not None:  # converged: the bar ends full, not at n_iter / max_iter
                        bar.total = bar.n
                        bar.set_postfix(residual=f"{worst:.2e}", converged=True)
                    break
                if bar is not None:
                    bar.set_postfix(residual=f"{worst:.2e}")
                class_active[:] = k  # undo all shrinking (the kernels' _reactivate)
                ints[1] = n
                ints[2] = 1
                floats[1] = _own_sum(alpha, y)  # W was rebuilt: the running sum starts afresh too
            if int(ints[0]) >= max_iter:
                break
    result = torch.from_numpy(alpha).to(problem.features.device)  # no copy on CPU
    return BackendOutput(alpha=result, n_iter=int(ints[0]), converged=converged, stats={"restarts": int(ints[6])})


def _own_sum(alpha: np.ndarray, y: np.ndarray) -> float:
    """``sum_i alpha_i^{y_i}`` (the linear part of the dual objective)."""
    return float(alpha[np.arange(alpha.shape[0]), y].sum())
