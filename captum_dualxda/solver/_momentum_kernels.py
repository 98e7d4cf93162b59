"""numba kernel of the sequential backend's momentum with restarts on the pass map (docs/solver.md 2.6).

:func:`._sequential_kernels._run_passes` calls :func:`_momentum` at the end of every pass when the
acceleration is on. Same rules as every kernel: no allocation, no exception, no numba runtime.
"""

from __future__ import annotations

from numba import njit

from ._kernel_primitives import (
    _ACCEPTED_OBJECTIVE,
    _ACCEPTED_OWN,
    _EXTRAPOLATE,
    _EXTRAPOLATED,
    _FAST,
    _OWN,
    _RESTARTS,
    _SINCE_RESTART,
    _TOUCHED,
    _move,
    _subproblem,
)

__all__ = ["_momentum"]


@njit(nogil=True, fastmath=_FAST)
def _momentum(
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
):  # pragma: no cover - compiled
    """Momentum with restarts on the pass map, at the end of a pass (docs/solver.md 2.6).

    ``previous`` is the last accepted point (equal to ``alpha`` outside the rows in
    ``touched_list``), ``weight_previous`` and ``bias_previous`` its ``W``,
    ``floats[_ACCEPTED_OBJECTIVE]`` its dual objective ``1/2 ||W||^2 - sum_i alpha_i^{y_i}``.
    ``touched[i]`` is 0 for the other rows and ``p > 0`` for the rows in the list, where only
    the classes at the first ``p`` positions of ``alpha_index[i]`` can differ (classes change
    only while active, and shrinking moves them within the active positions): the momentum
    costs a few operations per changed entry, and ``O(K d)`` for ``W``.

    If the pass started from an extrapolated point and ended with a larger objective than the
    accepted point, the accepted point is restored and the momentum restarts: the objective of
    the points the passes start from never increases (up to the rounding of its evaluation).
    Otherwise the pass's point is accepted and, with ``mode == _EXTRAPOLATE``, every row that
    differs from the previous accepted point ``a_prev`` moves on to ``Proj(a + beta (a - a_prev))``
    with FISTA's ``beta = (j - 1) / (j + 2)`` (``j`` passes since the restart), projected onto the
    row's active classes only if it left the feasible set. ``_ACCEPT`` accepts without
    extrapolating and restarts the count (used after a change of the shrinking tolerance, and at
    ``max_iter``, so the solver never returns an extrapolated point).
    """
    objective = 0.5 * (_squared_sum(weight) + _squared_sum_1d(bias_weight)) - floats[_OWN]
    count = ints[_TOUCHED]
    if ints[_EXTRAPOLATED] == 1 and objective > floats[_ACCEPTED_OBJECTIVE]:
        for q in range(count):
            i = touched_list[q]
            positions = touched[i]
            for m in range(positions):
                cls = alpha_index[i, m]
                alpha[i, cls] = previous[i, cls]
            # a class shrunk since then (at its bound) may be off its bound again: active again
            if class_active[i] < positions:
                class_active[i] = positions
            touched[i] = 0
        _copy_state(weight_previous, bias_previous, weight, bias_weight)
        floats[_OWN] = floats[_ACCEPTED_OWN]
        ints[_TOUCHED] = 0
        ints[_SINCE_RESTART] = 1
        ints[_EXTRAPOLATED] = 0
        ints[_RESTARTS] += 1
        return
    beta = 0.0
    if mode == _EXTRAPOLATE:
        ints[_SINCE_RESTART] += 1
        j = ints[_SINCE_RESTART]
        beta = (j - 2.0) / (j + 1.0)
    else:
        ints[_SINCE_RESTART] = 1
    ints[_EXTRAPOLATED] = 0
    if beta <= 0.0:
        floats[_ACCEPTED_OBJECTIVE] = objective
        floats[_ACCEPTED_OWN] = floats[_OWN]
        _copy_state(weight, bias_weight, weight_previous, bias_previous)
        for q in range(count):
            i = touched_list[q]
            _accept_row(alpha, alpha_index, previous, i, touched[i])
            touched[i] = 0
        ints[_TOUCHED] = 0
        return
    # Accept, and move W by beta (W - W_accepted) in one sweep: the extrapolation of every row that
    # differs from the accepted point, summed (O(K d) instead of one update per row and class);
    # the rows projected back or left out correct it below with their own updates.
    own = floats[_OWN]
    accepted_own = floats[_ACCEPTED_OWN]
    floats[_ACCEPTED_OBJECTIVE] = objective
    floats[_ACCEPTED_OWN] = own
    floats[_OWN] = own + beta * (own - accepted_own)
    _extrapolate_state(weight, bias_weight, weight_previous, bias_previous, beta)
    kept = 0
    for q in range(count):
        i = touched_list[q]
        if _extrapolate_row(
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
            floats,
            previous,
            scratch,
            i,
            beta,
            touched[i],
        ):
            touched_list[kept] = i
            kept += 1
            touched[i] = class_active[i]
        else:
            touched[i] = 0
    ints[_TOUCHED] = kept
    ints[_EXTRAPOLATED] = 1 if kept > 0 else 0


@njit(nogil=True, inline="always")
def _accept_row(alpha, alpha_index, previous, i, positions):  # pragma: no cover - compiled
    """``previous[i] = alpha[i]`` (the classes at the first ``positions`` positions; the others are equal)."""
    for m in range(positions):
        cls = alpha_index[i, m]
        previous[i, cls] = alpha[i, cls]


@njit(nogil=True, inline="always")
def _extrapolate_state(weight, bias_weight, weight_previous, bias_previous, beta):  # pragma: no cover - compiled
    """``weight_previous = weight`` and ``weight += beta (weight - weight_previous_before)`` (bias alike)."""
    for r in range(weight.shape[0]):
        for j in range(weight.shape[1]):
            current = weight[r, j]
            weight[r, j] = current + beta * (current - weight_previous[r, j])
            weight_previous[r, j] = current
        current = bias_weight[r]
        bias_weight[r] = current + beta * (current - bias_previous[r])
        bias_previous[r] = current


@njit(nogil=True, inline="always")
def _extrapolate_row(
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
    floats,
    previous,
    scratch,
    i,
    beta,
    positions,
):  # pragma: no cover - compiled
    """Row ``i`` of the extrapolation: ``previous[i] = alpha[i]``, then
    ``alpha[i] = Proj(alpha[i] + beta (alpha[i] - previous[i]))`` over its active classes.

    ``W`` (and the running ``sum_i alpha_i^{y_i}``) already moved by ``beta (alpha[i] -
    previous[i]) x_i`` (:func:`_extrapolate_state`); only a projection's correction is added here.
    Only the classes at the first ``positions`` positions of ``alpha_index[i]`` can differ from
    ``previous``. A row whose shrunk classes moved since the accepted point (a class that reached
    its bound and was shrunk) is not extrapolated (its active entries alone would not keep the row
    sum): its share is taken back out of ``W``. Returns whether ``alpha[i]`` changed.
    """
    size = class_active[i]
    y_pos = y_index[i]
    moved = scratch[1]
    out = scratch[2]
    work = scratch[3]
    shrunk_moved = False
    for m in range(size, positions):
        cls = alpha_index[i, m]
        if alpha[i, cls] != previous[i, cls]:
            shrunk_moved = True
    if shrunk_moved:
        for m in range(positions):
            cls = alpha_index[i, m]
            _move(x, y, s, weight, bias_weight, floats, i, cls, -beta * (alpha[i, cls] - previous[i, cls]))
            previous[i, cls] = alpha[i, cls]
        return False
    outside = False
    changed = False
    for m in range(size):
        cls = alpha_index[i, m]
        value = alpha[i, cls] + beta * (alpha[i, cls] - previous[i, cls])
        moved[m] = value
        if value > (c if m == y_pos else 0.0):
            outside = True
    _accept_row(alpha, alpha_index, previous, i, positions)
    if outside:  # the projection is the subproblem with curvature 1 and linear term -moved
        for m in range(size):
            out[m] = -moved[m]
        _subproblem(out, 1.0, y_pos, c, size, work, scratch[0])
        for m in range(size):
            cls = alpha_index[i, m]
            _move(x, y, s, weight, bias_weight, floats, i, cls, work[m] - moved[m])
            moved[m] = work[m]
    for m in range(size):
        cls = alpha_index[i, m]
        if moved[m] != alpha[i, cls]:
            alpha[i, cls] = moved[m]
            changed = True
    return changed


@njit(nogil=True, inline="always")
def _copy_state(weight, bias_weight, weight_out, bias_out):  # pragma: no cover - compiled
    """``weight_out = weight``, ``bias_out = bias_weight`` (element loops: no temporary arrays)."""
    for r in range(weight.shape[0]):
        for j in range(weight.shape[1]):
            weight_out[r, j] = weight[r, j]
        bias_out[r] = bias_weight[r]


@njit(nogil=True, fastmath=_FAST)
def _squared_sum(a):  # pragma: no cover - compiled
    acc = 0.0
    for r in range(a.shape[0]):
        for j in range(a.shape[1]):
            acc += a[r, j] * a[r, j]
    return acc


@njit(nogil=True, fastmath=_FAST)
def _squared_sum_1d(a):  # pragma: no cover - compiled
    acc = 0.0
    for j in range(a.shape[0]):
        acc += a[j] * a[j]
    return acc
