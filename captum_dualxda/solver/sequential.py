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
loops over the features; the intercept column is implicit; the subproblem finds the pivot by
partial selection instead of a full sort (same result); the random order comes from our own
SplitMix64 generator seeded by ``seed``.

The hot loops are written for the CPU: scores of four active classes at a time share the loads
of ``x_i`` (fastmath reassociation so LLVM vectorises the float64 sums), the next sample's
features and dual state are prefetched while the current one is solved, and the class lists are
int32 (``n K`` of them, as in LIBLINEAR).

Precision: features stay in their dtype (float32 is fine), ``alpha``, ``W`` and all arithmetic of
the subproblem are float64 (dot products accumulate in float64). Measured alternatives: a float32
``W`` state was no faster (mixed-precision updates) and drifted, so the exact check failed and
needed extra rounds (residual 1.1e-4 > tol 1e-4 at the first check, 4 checks at tol 1e-5); a
float32 copy of ``W`` used only to screen the classes that are certainly shrunk (with a rigorous
rounding bound) gave the same decisions but no measurable speed-up, so neither is used.
"""
from __future__ import annotations

import time
from typing import Optional, Tuple

import numpy as np
import torch
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic
from tqdm.auto import tqdm

from .bdcd import BackendOutput
from .gap import OptimalityReport
from .problem import CrammerSingerProblem

__all__ = ["solve_sequential", "solve_subproblem"]

# Flags for the dot products and axpys: reassociation lets LLVM vectorise the reductions. No
# "nnan"/"ninf": the solver compares against +-inf sentinels.
_FAST = {"reassoc", "contract", "nsz", "arcp"}

_CONTINUE, _PROPOSE_STOP, _MAX_ITER = 0, 1, 2


@intrinsic
def _prefetch(typingctx, array, index):  # pragma: no cover - compiled
    """Hint the CPU to load the cache line holding ``array[index]`` (1-D ``array``)."""
    signature = types.void(array, index)

    def codegen(context, builder, sig, args):
        array_type = sig.args[0]
        data = context.make_array(array_type)(context, builder, args[0])
        pointer = cgutils.get_item_pointer(context, builder, array_type, data, [args[1]], wraparound=False)
        byte_pointer = ir.IntType(8).as_pointer()
        int32 = ir.IntType(32)
        function = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(ir.VoidType(), [byte_pointer, int32, int32, int32]),
            "llvm.prefetch.p0i8",
        )
        # read access, high temporal locality, data cache
        builder.call(
            function,
            [builder.bitcast(pointer, byte_pointer), int32(0), int32(3), int32(1)],
        )
        return context.get_dummy_value()

    return signature, codegen


@njit(cache=True, nogil=True)
def _prefetch_sample(x, alpha, alpha_index, i):  # pragma: no cover - compiled
    """Start loading sample ``i``'s features and dual state while the current one is processed."""
    xi = x[i]
    for j in range(0, xi.shape[0], 64 // xi.itemsize):
        _prefetch(xi, j)
    ai = alpha[i]
    for m in range(0, ai.shape[0], 8):
        _prefetch(ai, m)
    idx = alpha_index[i]
    for m in range(0, idx.shape[0], 64 // idx.itemsize):
        _prefetch(idx, m)


@njit(cache=True, nogil=True, fastmath=_FAST)
def _axpy(w, delta, x):  # pragma: no cover - compiled
    for j in range(x.shape[0]):
        w[j] += delta * x[j]


@njit(cache=True, nogil=True, fastmath=_FAST)
def _dot4(w, c0, c1, c2, c3, x):  # pragma: no cover - compiled
    """Rows ``c0..c3`` of ``w`` dotted with ``x``, sharing the loads of ``x`` (float64 sums)."""
    a0 = 0.0
    a1 = 0.0
    a2 = 0.0
    a3 = 0.0
    for j in range(x.shape[0]):
        v = np.float64(x[j])
        a0 += w[c0, j] * v
        a1 += w[c1, j] * v
        a2 += w[c2, j] * v
        a3 += w[c3, j] * v
    return a0, a1, a2, a3


@njit(cache=True, nogil=True, fastmath=_FAST)
def _dot2(w, c0, c1, x):  # pragma: no cover - compiled
    a0 = 0.0
    a1 = 0.0
    for j in range(x.shape[0]):
        v = np.float64(x[j])
        a0 += w[c0, j] * v
        a1 += w[c1, j] * v
    return a0, a1


@njit(cache=True, nogil=True, fastmath=_FAST)
def _dot1(w, c0, x):  # pragma: no cover - compiled
    a0 = 0.0
    for j in range(x.shape[0]):
        a0 += w[c0, j] * x[j]
    return a0


@njit(cache=True, nogil=True)
def _scores(weight, idx, size, x, out):  # pragma: no cover - compiled
    """``out[m] = weight[idx[m]] . x`` for ``m < size``, four (then two, one) classes at a time."""
    m = 0
    while m + 4 <= size:
        a0, a1, a2, a3 = _dot4(weight, idx[m], idx[m + 1], idx[m + 2], idx[m + 3], x)
        out[m] = a0
        out[m + 1] = a1
        out[m + 2] = a2
        out[m + 3] = a3
        m += 4
    if m + 2 <= size:
        a0, a1 = _dot2(weight, idx[m], idx[m + 1], x)
        out[m] = a0
        out[m + 1] = a1
        m += 2
    if m < size:
        out[m] = _dot1(weight, idx[m], x)


@njit(cache=True, nogil=True)
def _next_random(state):  # pragma: no cover - compiled
    """SplitMix64 step on ``state[0]`` (uint64); returns a uint64."""
    z = state[0] + np.uint64(0x9E3779B97F4A7C15)
    state[0] = z
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(cache=True, nogil=True)
def _subproblem(b, a_i, y_pos, c_y, size, out, work):  # pragma: no cover - compiled
    """Exact minimiser of ``1/2 a_i ||a||^2 + b.a`` over the active classes of one sample.

    Constraints: ``a[m] <= 0`` (``m != y_pos``), ``a[y_pos] <= c_y`` and
    ``sum(a) = 0`` if the true class is active (``y_pos < size``), else ``sum(a) = -c_y`` (the
    shrunk true class holds ``alpha = c_y``). Writes ``out[:size]``; ``work`` is scratch of
    length ``>= size``. The pivot ``beta`` is the running sum of the largest shifted
    ``b`` values, found by partial selection (descending order, as a full sort would give).
    """
    for m in range(size):
        work[m] = b[m]
    if y_pos < size:
        work[y_pos] += a_i * c_y
    # largest value first
    best = 0
    for m in range(1, size):
        if work[m] > work[best]:
            best = m
    top = work[best]
    work[best] = work[0]
    work[0] = top
    beta = top - a_i * c_y
    r = 1
    while r < size:
        best = r
        for m in range(r + 1, size):
            if work[m] > work[best]:
                best = m
        value = work[best]
        if not beta < r * value:
            break
        work[best] = work[r]
        work[r] = value
        beta += value
        r += 1
    beta /= r
    for m in range(size):
        step = (beta - b[m]) / a_i
        bound = c_y if m == y_pos else 0.0
        out[m] = step if step < bound else bound


@njit(cache=True, nogil=True)
def _run_passes(
    x, y, s, c, sq_norms, alpha, weight, bias_weight, alpha_index, class_active, y_index,
    order, ints, floats, rng, eps, max_iter, n_passes,
):  # pragma: no cover - compiled
    """Run up to ``n_passes`` passes of the shrinking sequential method.

    ``ints = [iteration, active_samples, start_from_all]``, ``floats = [eps_shrink]``: the
    schedule state that survives between calls. Returns ``_CONTINUE`` (chunk done),
    ``_PROPOSE_STOP`` (a pass over everything had violation ``< eps``) or ``_MAX_ITER``.
    """
    k = alpha.shape[1]
    grad = np.empty(k)
    shifted = np.empty(k)
    new = np.empty(k)
    work = np.empty(k)
    for _ in range(n_passes):
        if ints[0] >= max_iter:
            return _MAX_ITER
        active = ints[1]
        stopping = -np.inf
        for j in range(active):
            r = j + np.int64(_next_random(rng) % np.uint64(active - j))
            tmp = order[j]
            order[j] = order[r]
            order[r] = tmp
        pos = 0
        while pos < active:
            i = order[pos]
            if pos + 1 < active:
                _prefetch_sample(x, alpha, alpha_index, order[pos + 1])
            a_i = sq_norms[i]
            if a_i <= 0.0:
                pos += 1
                continue
            idx = alpha_index[i]
            size = class_active[i]
            y_pos = y_index[i]
            xi = x[i]
            _scores(weight, idx, size, xi, grad)
            for m in range(size):
                grad[m] += s * bias_weight[idx[m]] + 1.0
            if y_pos < size:
                grad[y_pos] -= 1.0
            min_g = np.inf
            max_g = -np.inf
            for m in range(size):
                bound = c if m == y_pos else 0.0
                g = grad[m]
                if alpha[i, idx[m]] < bound and g < min_g:
                    min_g = g
                if g > max_g:
                    max_g = g
            # class shrinking: classes at their bound whose gradient is below every free one
            m = 0
            while m < size:
                bound = c if m == y_pos else 0.0
                if alpha[i, idx[m]] == bound and grad[m] < min_g:
                    size -= 1
                    while size > m:
                        bound = c if size == y_pos else 0.0
                        if not (alpha[i, idx[size]] == bound and grad[size] < min_g):
                            tmp = idx[m]
                            idx[m] = idx[size]
                            idx[size] = tmp
                            g = grad[m]
                            grad[m] = grad[size]
                            grad[size] = g
                            if y_pos == size:
                                y_pos = m
                            elif y_pos == m:
                                y_pos = size
                            break
                        size -= 1
                m += 1
            class_active[i] = size
            y_index[i] = y_pos
            if size <= 1:  # sample shrinking
                active -= 1
                order[pos] = order[active]
                order[active] = i
                continue
            pos += 1
            if max_g - min_g <= 1e-12:
                continue
            if max_g - min_g > stopping:
                stopping = max_g - min_g
            for m in range(size):
                shifted[m] = grad[m] - a_i * alpha[i, idx[m]]
            _subproblem(shifted, a_i, y_pos, c, size, new, work)
            for m in range(size):
                cls = idx[m]
                delta = new[m] - alpha[i, cls]
                alpha[i, cls] = new[m]
                if abs(delta) >= 1e-12:
                    _axpy(weight[cls], delta, xi)
                    bias_weight[cls] += s * delta
        ints[1] = active
        ints[0] += 1
        if stopping < floats[0]:
            if stopping < eps and ints[2] == 1:
                return _PROPOSE_STOP
            _reactivate(class_active, ints, k)
            floats[0] = max(floats[0] / 2.0, eps)
        else:
            ints[2] = 0
    return _CONTINUE


@njit(cache=True, nogil=True)
def _reactivate(class_active, ints, k):  # pragma: no cover - compiled
    class_active[:] = k
    ints[1] = class_active.shape[0]
    ints[2] = 1


@njit(cache=True, nogil=True)
def _rebuild_weights(x, s, alpha, weight, bias_weight):  # pragma: no cover - compiled
    """``weight = alpha^T x`` and ``bias_weight = s alpha.sum(0)`` in float64 (rows with alpha = 0 skipped)."""
    weight[:] = 0.0
    bias_weight[:] = 0.0
    for i in range(x.shape[0]):
        xi = x[i]
        for m in range(alpha.shape[1]):
            a = alpha[i, m]
            if a != 0.0:
                _axpy(weight[m], a, xi)
                bias_weight[m] += s * a


@njit(cache=True, nogil=True)
def _certificate(x, y, s, c, sq_norms, alpha, weight, bias_weight, residuals):  # pragma: no cover
    """Natural residuals and the primal loss at ``(alpha, W)``.

    Writes ``residuals[i] = A_i ||alpha_i - Proj(alpha_i - G_i / A_i)||_inf`` (0 where
    ``A_i = 0``) and returns ``sum_i max_m (G_i^m - G_i^{y_i})``, the hinge-loss sum of the primal.
    """
    k = alpha.shape[1]
    grad = np.empty(k)
    shifted = np.empty(k)
    new = np.empty(k)
    work = np.empty(k)
    all_classes = np.arange(k).astype(np.int32)
    loss = 0.0
    for i in range(x.shape[0]):
        xi = x[i]
        yi = y[i]
        _scores(weight, all_classes, k, xi, grad)
        top = -np.inf
        for m in range(k):
            grad[m] += s * bias_weight[m] + (0.0 if m == yi else 1.0)
            if grad[m] > top:
                top = grad[m]
        loss += top - grad[yi]
        a_i = sq_norms[i]
        if a_i <= 0.0:
            residuals[i] = 0.0
            continue
        for m in range(k):
            shifted[m] = grad[m] - a_i * alpha[i, m]
        _subproblem(shifted, a_i, yi, c, k, new, work)
        r = 0.0
        for m in range(k):
            d = abs(new[m] - alpha[i, m])
            if d > r:
                r = d
        residuals[i] = a_i * r
    return loss


def solve_subproblem(
    shifted: np.ndarray, curvature: float, y_position: int, C: float
) -> np.ndarray:
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
    b = np.ascontiguousarray(shifted, dtype=np.float64)
    out = np.empty_like(b)
    work = np.empty_like(b)
    _subproblem(b, float(curvature), int(y_position), float(C), b.shape[0], out, work)
    return out


@njit(cache=True, nogil=True)
def _squared_norms(x, s, out):  # pragma: no cover - compiled
    """``out[i] = ||x_i||^2 + s^2`` accumulated in float64."""
    for i in range(x.shape[0]):
        out[i] = _dot_self(x[i]) + s * s


@njit(cache=True, nogil=True, fastmath=_FAST)
def _dot_self(x):  # pragma: no cover - compiled
    acc = 0.0
    for j in range(x.shape[0]):
        v = np.float64(x[j])
        acc += v * v
    return acc


def _prepare(problem: CrammerSingerProblem) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CPU numpy views: ``(n, d)`` features (own dtype), ``(n,)`` int64 labels, ``(n,)`` float64 ``A_i``."""
    x = np.ascontiguousarray(problem.features.detach().cpu().numpy())
    y = np.ascontiguousarray(problem.labels.detach().cpu().numpy(), dtype=np.int64)
    sq = np.empty(x.shape[0])
    _squared_norms(x, float(problem.intercept_scaling), sq)
    return x, y, sq


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
    x, y, sq = _prepare(problem)
    a = np.ascontiguousarray(alpha.detach().cpu().numpy(), dtype=np.float64)
    s = float(problem.intercept_scaling)
    weight = np.zeros((problem.n_classes, x.shape[1]))
    bias_weight = np.zeros(problem.n_classes)
    _rebuild_weights(x, s, a, weight, bias_weight)
    residuals = np.empty(x.shape[0])
    loss = _certificate(x, y, s, float(problem.C), sq, a, weight, bias_weight, residuals)
    sq_w = float((weight * weight).sum() + (bias_weight * bias_weight).sum())
    primal = 0.5 * sq_w + problem.C * loss
    dual = -0.5 * sq_w + float(a[np.arange(a.shape[0]), y].sum())
    return OptimalityReport(
        weight=torch.from_numpy(weight),
        bias_weight=torch.from_numpy(bias_weight),
        primal=primal,
        dual=dual,
        gap=primal - dual,
        relative_gap=(primal - dual) / max(abs(primal), 1e-300),
        residual=float(residuals.max()) if residuals.size else 0.0,
    )


def solve_sequential(
    problem: CrammerSingerProblem,
    *,
    tol: float,
    max_iter: int,
    seed: int,
    alpha0: Optional[torch.Tensor] = None,
    show_progress: bool = False,
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

    Returns
    -------
    BackendOutput
        ``alpha`` ``(n, K)`` float64 tensor in input order (on the problem's device, i.e. the CPU
        unless features on an accelerator were passed explicitly to this backend), passes made,
        and whether the exact check passed.
    """
    x, y, sq = _prepare(problem)
    n, k = problem.n_samples, problem.n_classes
    s, c = float(problem.intercept_scaling), float(problem.C)
    if alpha0 is None:
        alpha = np.zeros((n, k))
    else:
        alpha = np.array(alpha0.detach().cpu().numpy(), dtype=np.float64, order="C", copy=True)
    weight = np.zeros((k, x.shape[1]))
    bias_weight = np.zeros(k)
    if alpha0 is not None:
        _rebuild_weights(x, s, alpha, weight, bias_weight)
    alpha_index = np.tile(np.arange(k, dtype=np.int32), (n, 1))  # int32 like LIBLINEAR: n*K*4 bytes
    class_active = np.full(n, k, dtype=np.int64)
    y_index = y.copy()
    order = np.arange(n, dtype=np.int64)
    ints = np.array([0, n, 1], dtype=np.int64)
    floats = np.array([max(10.0 * tol, 1.0)])
    rng = np.array([np.uint64(int(seed) % 2**64) ^ np.uint64(0x5DEECE66D)], dtype=np.uint64)
    residuals = np.empty(n)
    chunk = 1 if show_progress else max_iter  # with a bar: grow chunks to ~0.1 s per call
    converged = False
    bar = tqdm(total=max_iter, desc="DualDA solver (sequential)", disable=not show_progress, leave=False)
    with bar:
        while True:
            before = int(ints[0])
            started = time.perf_counter()
            code = _run_passes(
                x, y, s, c, sq, alpha, weight, bias_weight, alpha_index, class_active, y_index,
                order, ints, floats, rng, float(tol), int(max_iter), chunk,
            )
            bar.update(int(ints[0]) - before)
            if show_progress and time.perf_counter() - started < 0.1:
                chunk = min(2 * chunk, max_iter)
            if code == _MAX_ITER:
                break
            if code == _PROPOSE_STOP:
                _rebuild_weights(x, s, alpha, weight, bias_weight)
                _certificate(x, y, s, c, sq, alpha, weight, bias_weight, residuals)
                worst = float(residuals.max())
                bar.set_postfix(residual=f"{worst:.2e}")
                if worst <= tol:
                    converged = True
                    bar.total = bar.n  # converged: the bar ends full, not at n_iter / max_iter
                    bar.set_postfix(residual=f"{worst:.2e}", converged=True)
                    break
                _reactivate(class_active, ints, k)
            if int(ints[0]) >= max_iter:
                break
    result = torch.from_numpy(alpha).to(problem.features.device)  # no copy on CPU
    return BackendOutput(alpha=result, n_iter=int(ints[0]), converged=converged)
