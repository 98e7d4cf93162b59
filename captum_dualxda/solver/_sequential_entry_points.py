"""C entry points of the sequential backend's kernels, and the kernels outside the pass loop.

:func:`compile_entry_points` compiles six C-callable functions (``numba.cfunc``) for one feature
dtype: the pass loop of :mod:`._sequential_kernels` and, defined here, the shrinking screen after a
reactivation, the rebuild of ``W``, the optimality certificate and the squared norms. The rules
for the compiled code (no allocation, no exception, no numba runtime) are those of
:mod:`._sequential_kernels`.
"""

from __future__ import annotations

from typing import Dict

import numpy as np
from numba import carray, cfunc, njit, types

from ._sequential_kernels import (
    _FAST,
    ENTRY_POINTS,
    N_FLOATS,
    N_INTS,
    _add_scaled_row,
    _gradient_spread,
    _row_scores,
    _run_passes,
    _shrink_classes,
    _subproblem,
)

__all__ = ["compile_entry_points", "ENTRY_POINTS"]


@njit(nogil=True)
def _screen(
    scores, start, s, c, sq_norms, alpha, bias_weight, alpha_index, class_active, y_index, margin, scratch
):  # pragma: no cover - compiled
    """Class and sample shrinking for rows ``start..start+len(scores)-1`` from precomputed scores.

    ``scores[r, m] = w_m . x_{start + r}`` (a matrix product, in the features' dtype) replace the
    per-sample scores of the pass over everything that follows a reactivation: a class is shrunk
    only if its gradient is below the smallest free one by more than ``2 margin ||x_i||``, a
    bound on the rounding of both (``margin = (d + 2) u max_m ||w_m||``, ``u`` the unit roundoff
    of the features' dtype). Rows with at most one class left get ``class_active = 1``; the driver
    then removes them from the active samples. ``scratch`` is ``(4, K)`` float64 work space.
    """
    grad = scratch[0]
    for r in range(scores.shape[0]):
        i = start + r
        a_i = sq_norms[i]
        if a_i <= 0.0:
            continue
        size = class_active[i]
        y_pos = y_index[i]
        for m in range(size):
            grad[m] = scores[r, alpha_index[i, m]]
        min_g, _ = _gradient_spread(grad, alpha, alpha_index, bias_weight, i, size, y_pos, s, c)
        size, y_pos = _shrink_classes(alpha, alpha_index, i, grad, size, y_pos, c, min_g - 2.0 * margin * np.sqrt(a_i))
        class_active[i] = size
        y_index[i] = y_pos


@njit(nogil=True, fastmath=_FAST)
def _rebuild_weights(x, s, alpha, weight, bias_weight):  # pragma: no cover - compiled
    """``weight = alpha^T x`` and ``bias_weight = s alpha.sum(0)`` in float64 (rows with alpha = 0 skipped)."""
    weight[:] = 0.0
    bias_weight[:] = 0.0
    for i in range(x.shape[0]):
        for m in range(alpha.shape[1]):
            a = alpha[i, m]
            if a != 0.0:
                _add_scaled_row(weight, m, a, x, i)
                bias_weight[m] += s * a


@njit(nogil=True, fastmath=_FAST)
def _scores(weight, classes, row, size, x, i, out):  # pragma: no cover - compiled
    """:func:`_row_scores` as a function of its own, compiled with reassociation, for callers whose
    other arithmetic must stay exact (the certificate)."""
    _row_scores(weight, classes, row, size, x, i, out)


@njit(nogil=True)
def _certificate(
    x,
    y,
    s,
    c,
    sq_norms,
    alpha,
    weight,
    bias_weight,
    residuals,
    scratch,
    all_classes,
):  # pragma: no cover - compiled
    """Natural residuals and the primal loss at ``(alpha, W)``.

    Writes ``residuals[i] = A_i ||alpha_i - Proj(alpha_i - G_i / A_i)||_inf`` (0 where
    ``A_i = 0``) and returns ``sum_i max_m (G_i^m - G_i^{y_i})``, the hinge-loss sum of the primal.
    ``scratch`` is ``(4, K)`` float64 work space, ``all_classes`` the ``(1, K)`` int32 ``0..K-1``.
    """
    k = alpha.shape[1]
    grad = scratch[0]
    shifted = scratch[1]
    new = scratch[2]
    work = scratch[3]
    loss = 0.0
    for i in range(x.shape[0]):
        yi = y[i]
        _scores(weight, all_classes, 0, k, x, i, grad)
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


@njit(nogil=True)
def _squared_norms(x, s, out):  # pragma: no cover - compiled
    """``out[i] = ||x_i||^2 + s^2`` accumulated in float64."""
    for i in range(x.shape[0]):
        out[i] = _dot_self(x[i]) + s * s


@njit(nogil=True, fastmath=_FAST)
def _dot_self(x):  # pragma: no cover - compiled
    acc = 0.0
    for j in range(x.shape[0]):
        v = np.float64(x[j])
        acc += v * v
    return acc


# C entry points: pointers and sizes in, the kernels above on ``carray`` views.


def _c_squared_norms(x, n, d, s, out):  # pragma: no cover - compiled
    _squared_norms(carray(x, (n, d)), s, carray(out, (n,)))


def _c_rebuild_weights(x, n, d, s, alpha, k, weight, bias_weight):  # pragma: no cover - compiled
    _rebuild_weights(carray(x, (n, d)), s, carray(alpha, (n, k)), carray(weight, (k, d)), carray(bias_weight, (k,)))


def _c_run_passes(
    x,
    n,
    d,
    y,
    s,
    c,
    sq_norms,
    alpha,
    k,
    weight,
    bias_weight,
    alpha_index,
    class_active,
    y_index,
    order,
    ints,
    floats,
    rng,
    eps,
    max_iter,
    n_passes,
    scratch,
    previous,
    weight_previous,
    bias_previous,
    touched,
    touched_list,
    acceleration,
):  # pragma: no cover - compiled
    return _run_passes(
        carray(x, (n, d)),
        carray(y, (n,)),
        s,
        c,
        carray(sq_norms, (n,)),
        carray(alpha, (n, k)),
        carray(weight, (k, d)),
        carray(bias_weight, (k,)),
        carray(alpha_index, (n, k)),
        carray(class_active, (n,)),
        carray(y_index, (n,)),
        carray(order, (n,)),
        carray(ints, (N_INTS,)),
        carray(floats, (N_FLOATS,)),
        carray(rng, (1,)),
        eps,
        max_iter,
        n_passes,
        carray(scratch, (4, k)),
        carray(previous, (n, k)),
        carray(weight_previous, (k, d)),
        carray(bias_previous, (k,)),
        carray(touched, (n,)),
        carray(touched_list, (n,)),
        acceleration != 0,
    )


def _c_certificate(
    x,
    n,
    d,
    y,
    s,
    c,
    sq_norms,
    alpha,
    k,
    weight,
    bias_weight,
    residuals,
    scratch,
    all_classes,
):  # pragma: no cover - compiled
    return _certificate(
        carray(x, (n, d)),
        carray(y, (n,)),
        s,
        c,
        carray(sq_norms, (n,)),
        carray(alpha, (n, k)),
        carray(weight, (k, d)),
        carray(bias_weight, (k,)),
        carray(residuals, (n,)),
        carray(scratch, (4, k)),
        carray(all_classes, (1, k)),
    )


def _c_screen(
    scores,
    start,
    count,
    s,
    c,
    sq_norms,
    n,
    alpha,
    k,
    bias_weight,
    alpha_index,
    class_active,
    y_index,
    margin,
    scratch,
):  # pragma: no cover - compiled
    _screen(
        carray(scores, (count, k)),
        start,
        s,
        c,
        carray(sq_norms, (n,)),
        carray(alpha, (n, k)),
        carray(bias_weight, (k,)),
        carray(alpha_index, (n, k)),
        carray(class_active, (n,)),
        carray(y_index, (n,)),
        margin,
        carray(scratch, (4, k)),
    )


def _c_subproblem(b, a_i, y_pos, c_y, size, out, work):  # pragma: no cover - compiled
    _subproblem(carray(b, (size,)), a_i, y_pos, c_y, size, carray(out, (size,)), carray(work, (size,)))


def compile_entry_points(feature_dtype: str, cache: bool = False) -> Dict[str, object]:
    """Compile the C entry points for features of one dtype (seconds; numba's first compile).

    Parameters
    ----------
    feature_dtype : {"float32", "float64"}
        dtype of the ``(n, d)`` features ``x``; every other array has a fixed dtype: float64
        state, int64 labels and counters, int32 class lists and row marks, uint64 generator state.
    cache : bool
        Use numba's own on-disk cache (for where :mod:`.sequential` cannot keep the machine code
        itself; loading from it still needs numba).

    Returns
    -------
    dict
        Entry point name (:data:`ENTRY_POINTS`) to its ``numba.cfunc`` (``.address``,
        ``.ctypes``, ``._library``). Every array argument is a pointer to a C-contiguous buffer,
        every size an int64.
    """
    if feature_dtype not in ("float32", "float64"):
        raise ValueError(f"`feature_dtype` must be 'float32' or 'float64', got {feature_dtype!r}.")
    x = types.CPointer(getattr(types, feature_dtype))
    f8, i8 = types.float64, types.int64
    f8p, i8p = types.CPointer(types.float64), types.CPointer(types.int64)
    i4p, u8p = types.CPointer(types.int32), types.CPointer(types.uint64)
    signatures = {
        "squared_norms": types.void(x, i8, i8, f8, f8p),
        "rebuild_weights": types.void(x, i8, i8, f8, f8p, i8, f8p, f8p),
        "run_passes": types.int64(
            x,
            i8,
            i8,
            i8p,
            f8,
            f8,
            f8p,
            f8p,
            i8,
            f8p,
            f8p,
            i4p,
            i8p,
            i8p,
            i8p,
            i8p,
            f8p,
            u8p,
            f8,
            i8,
            i8,
            f8p,
            f8p,
            f8p,
            f8p,
            i4p,
            i8p,
            i8,
        ),
        "certificate": types.float64(x, i8, i8, i8p, f8, f8, f8p, f8p, i8, f8p, f8p, f8p, f8p, i4p),
        "subproblem": types.void(f8p, f8, i8, f8, i8, f8p, f8p),
        "screen": types.void(x, i8, i8, f8, f8, f8p, i8, f8p, i8, f8p, i4p, i8p, i8p, f8, f8p),
    }
    functions = {
        "squared_norms": _c_squared_norms,
        "rebuild_weights": _c_rebuild_weights,
        "run_passes": _c_run_passes,
        "certificate": _c_certificate,
        "subproblem": _c_subproblem,
        "screen": _c_screen,
    }
    return {
        name: cfunc(signatures[name], cache=cache, nopython=True, error_model="numpy", boundscheck=False)(
            functions[name]
        )
        for name in ENTRY_POINTS
    }
