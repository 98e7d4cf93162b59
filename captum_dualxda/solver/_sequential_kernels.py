"""numba kernels of the sequential backend's pass loop (compiled once per machine).

The algorithm is described in :mod:`.sequential`, which drives these kernels and loads their
machine code. This module imports numba; :mod:`.sequential` imports it only when no compiled copy
of the kernels is cached on disk yet (a first run, a new machine, or changed source), because
importing numba and initialising its compiler costs about a second in a fresh process, far more
than loading the machine code (see docs/solver.md, "Cold start").

:func:`~._sequential_entry_points.compile_entry_points` compiles six C-callable functions
(``numba.cfunc``) for one feature dtype. They take raw pointers and sizes, so they can also be
called without numba: by ctypes from the machine code that :mod:`.machine_code` caches. The
kernels therefore must never need numba's runtime: no allocation (work space comes in
``scratch``), no exception (``error_model="numpy"``, no bounds checks; every division is by a
positive number). The only references to numba's runtime
left in the compiled code are on the error-reporting path of the C wrappers, which these kernels
cannot take (``machine_code._ERROR_PATH_SYMBOLS`` lists them; the cache refuses any other).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._kernel_primitives import (
    _ACCEPT,
    _ACCEPTED_OWN,
    _ACTIVE,
    _CONTINUE,
    _EPS_SHRINK,
    _EXTRAPOLATE,
    _FAST,
    _FROM_ALL,
    _ITERATION,
    _MAX_ITER,
    _OWN,
    _PREFETCH_MIN_BYTES,
    _PROPOSE_STOP,
    _REACTIVATED,
    _RESTARTS,
    _TOUCHED,
    N_FLOATS,
    N_INTS,
    _add_scaled_row,
    _gradient_spread,
    _move,
    _prefetch_sample,
    _random_below,
    _row_scores,
    _shrink_classes,
    _subproblem,
    _subproblem_pair,
)
from ._momentum_kernels import _momentum

__all__ = [
    "ENTRY_POINTS",
    "N_FLOATS",
    "N_INTS",
    "_ACCEPT",
    "_ACCEPTED_OWN",
    "_ACTIVE",
    "_CONTINUE",
    "_EPS_SHRINK",
    "_EXTRAPOLATE",
    "_FAST",
    "_FROM_ALL",
    "_ITERATION",
    "_MAX_ITER",
    "_OWN",
    "_PREFETCH_MIN_BYTES",
    "_PROPOSE_STOP",
    "_REACTIVATED",
    "_RESTARTS",
    "_TOUCHED",
    "_add_scaled_row",
    "_gradient_spread",
    "_prefetch_sample",
    "_random_below",
    "_row_scores",
    "_run_passes",
    "_shrink_classes",
    "_subproblem",
    "_subproblem_pair",
]

ENTRY_POINTS = ("squared_norms", "rebuild_weights", "run_passes", "certificate", "subproblem", "screen")


@njit(nogil=True, fastmath=_FAST)
def _run_passes(
    x,
    y,
    s,
    c,
    sq_norms,
    alpha,
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
    """Run up to ``n_passes`` passes of the shrinking sequential method.

    ``ints`` and ``floats`` hold the schedule state that survives between calls (layout:
    ``_ITERATION ... _RESTARTS`` and ``_EPS_SHRINK ... _ACCEPTED_OWN``); ``scratch`` is ``(4, K)``
    float64 work space. With ``acceleration`` every pass ends with :func:`_momentum` (``previous``,
    ``weight_previous``, ``bias_previous``, ``touched`` and ``touched_list`` are its state).
    Returns ``_CONTINUE`` (chunk done), ``_PROPOSE_STOP`` (a pass over everything had largest
    natural residual ``< eps``), ``_MAX_ITER``, or ``_REACTIVATED`` (the shrinking tolerance was
    lowered and every sample and class reactivated; the next pass runs over everything).

    The measure of a pass is the largest natural residual ``r_i = A_i max_m |delta_i^m|`` of the
    samples it visited (``delta_i`` the exact step of the block: :func:`_certificate`'s quantity,
    at the point the sample was visited), not LIBLINEAR's ``v_i = max G - min free G``:
    ``r_i <= v_i``, and ``r_i = v_i / 2`` for a sample with two free classes, so with ``v_i`` the
    passes could not propose stopping at points whose exact residual already met ``eps``.

    ``W`` always moves by exactly the change stored in ``alpha`` (no threshold on the step), so
    ``W = alpha^T X`` up to the rounding of the updates, whatever the scale of the problem.
    """
    k = alpha.shape[1]
    grad = scratch[0]
    shifted = scratch[1]
    new = scratch[2]
    work = scratch[3]
    # bytes of features and dual state one pass touches per sample: prefetching only pays off
    # when the active samples do not fit in the core's caches anyway
    sample_bytes = x.shape[1] * x.itemsize + k * (alpha.itemsize + alpha_index.itemsize)
    for _ in range(n_passes):
        if ints[_ITERATION] >= max_iter:
            return _MAX_ITER
        active = ints[_ACTIVE]
        stopping = -np.inf
        for j in range(active):
            r = j + _random_below(rng, active - j)
            tmp = order[j]
            order[j] = order[r]
            order[r] = tmp
        prefetch = active * sample_bytes > _PREFETCH_MIN_BYTES
        pos = 0
        while pos < active:
            i = order[pos]
            if prefetch and pos + 1 < active:
                _prefetch_sample(x, alpha, alpha_index, order[pos + 1])
            a_i = sq_norms[i]
            if a_i <= 0.0:
                pos += 1
                continue
            size = class_active[i]
            y_pos = y_index[i]
            if acceleration and size > touched[i] > 0:
                # reactivated classes (the driver undid the shrinking): shrinking may move a changed
                # class anywhere among the first ``size`` positions
                touched[i] = size
            _row_scores(weight, alpha_index, i, size, x, i, grad)
            min_g, max_g = _gradient_spread(grad, alpha, alpha_index, bias_weight, i, size, y_pos, s, c)
            size, y_pos = _shrink_classes(alpha, alpha_index, i, grad, size, y_pos, c, min_g)
            class_active[i] = size
            y_index[i] = y_pos
            if size <= 1:  # sample shrinking
                active -= 1
                order[pos] = order[active]
                order[active] = i
                continue
            pos += 1
            if max_g - min_g <= 1e-12:  # v_i (gradient units: the margins are 1) bounds r_i below
                continue
            for m in range(size):
                shifted[m] = grad[m] - a_i * alpha[i, alpha_index[i, m]]
            if size == 2:  # the common case once shrinking has settled
                _subproblem_pair(shifted, a_i, y_pos, c, new)
            else:
                _subproblem(shifted, a_i, y_pos, c, size, new, work)
            step = _apply_row(x, y, s, alpha, weight, bias_weight, alpha_index, floats, i, size, new)
            if a_i * step > stopping:  # the natural residual r_i of the sample (docstring)
                stopping = a_i * step
            if step > 0.0 and acceleration:
                if touched[i] == 0:
                    touched_list[ints[_TOUCHED]] = i
                    ints[_TOUCHED] += 1
                # changed since the last accepted point, in the first ``size`` positions
                touched[i] = max(touched[i], size)
        ints[_ACTIVE] = active
        ints[_ITERATION] += 1
        settled = stopping < floats[_EPS_SHRINK]
        propose = settled and stopping < eps and ints[_FROM_ALL] == 1
        last = ints[_ITERATION] >= max_iter
        if acceleration and (last or not propose):
            mode = _ACCEPT if last or settled else _EXTRAPOLATE
            _momentum(
                x,
                y,
                s,
                c,
                alpha,
                weight,
                bias_weight,
                alpha_index,
                class_active,
                y_index,
                ints,
                floats,
                previous,
                weight_previous,
                bias_previous,
                touched,
                touched_list,
                scratch,
                mode,
            )
        if propose:
            return _PROPOSE_STOP
        if settled:
            _reactivate(class_active, ints, k)
            floats[_EPS_SHRINK] = max(floats[_EPS_SHRINK] / 2.0, eps)
            return _REACTIVATED  # the driver may screen (:func:`_screen`) before the next pass
        ints[_FROM_ALL] = 0
    return _CONTINUE


@njit(nogil=True, inline="always")
def _apply_row(x, y, s, alpha, weight, bias_weight, alpha_index, floats, i, size, new):  # pragma: no cover - compiled
    """Set sample ``i``'s active entries of ``alpha`` to ``new[:size]`` and move ``W`` (and the
    running ``sum_i alpha_i^{y_i}``, ``floats[_OWN]``) by exactly the changes, however small;
    returns the largest ``|change|`` (``0.0``: nothing changed)."""
    step = 0.0
    for m in range(size):
        cls = alpha_index[i, m]
        delta = new[m] - alpha[i, cls]
        if delta != 0.0:
            alpha[i, cls] = new[m]
            _move(x, y, s, weight, bias_weight, floats, i, cls, delta)
            step = max(step, abs(delta))
    return step


@njit(nogil=True)
def _reactivate(class_active, ints, k):  # pragma: no cover - compiled
    class_active[:] = k
    ints[_ACTIVE] = class_active.shape[0]
    ints[_FROM_ALL] = 1
