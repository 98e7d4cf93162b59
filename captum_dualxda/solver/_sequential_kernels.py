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
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = [
    "ENTRY_POINTS",
    "N_FLOATS",
    "N_INTS",
    "_FAST",
    "_add_scaled_row",
    "_gradient_spread",
    "_row_scores",
    "_run_passes",
    "_shrink_classes",
    "_subproblem",
    "_subproblem_pair",
]

# Flags for the dot products and axpys: reassociation lets LLVM vectorise the reductions. No
# "nnan"/"ninf": the solver compares against +-inf sentinels.
_FAST = {"reassoc", "contract", "nsz", "arcp"}

_CONTINUE, _PROPOSE_STOP, _MAX_ITER, _REACTIVATED = 0, 1, 2, 3

# Layout of the schedule state that survives between calls of the pass kernel (``ints``, int64, and
# ``floats``, float64; :mod:`.sequential` allocates them with these sizes).
_ITERATION, _ACTIVE, _FROM_ALL, _SINCE_RESTART, _TOUCHED, _EXTRAPOLATED, _RESTARTS = range(7)
_EPS_SHRINK, _OWN, _ACCEPTED_OBJECTIVE, _ACCEPTED_OWN = range(4)
N_INTS, N_FLOATS = 7, 4

# What the momentum step does at the end of a pass (:func:`_momentum`).
_EXTRAPOLATE, _ACCEPT = 0, 1

# Prefetch the next sample only when the active samples' data exceed this many bytes (beyond a
# core's L2 cache): smaller working sets are served from cache and the hints only cost time.
_PREFETCH_MIN_BYTES = 1 << 20

ENTRY_POINTS = ("squared_norms", "rebuild_weights", "run_passes", "certificate", "subproblem", "screen")
"""Names of the C entry points, in the order of :func:`compile_entry_points`."""


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


@njit(nogil=True)
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


@njit(nogil=True, inline="always")
def _add_scaled_row(weight, cls, delta, x, i):  # pragma: no cover - compiled
    """``weight[cls] += delta * x[i]`` (inlined: element indexing, no array views)."""
    for j in range(x.shape[1]):
        weight[cls, j] += delta * x[i, j]


@njit(nogil=True, inline="always")
def _row_scores(weight, classes, row, size, x, i, out):  # pragma: no cover - compiled
    """``out[m] = weight[classes[row, m]] . x[i]`` for ``m < size`` (float64 sums).

    Four (then two, one) classes at a time share the loads of ``x[i]``. Inlined into its callers,
    which are compiled with reassociation so that LLVM vectorises the sums.
    """
    d = x.shape[1]
    m = 0
    while m + 4 <= size:
        c0 = classes[row, m]
        c1 = classes[row, m + 1]
        c2 = classes[row, m + 2]
        c3 = classes[row, m + 3]
        a0 = 0.0
        a1 = 0.0
        a2 = 0.0
        a3 = 0.0
        for j in range(d):
            v = np.float64(x[i, j])
            a0 += weight[c0, j] * v
            a1 += weight[c1, j] * v
            a2 += weight[c2, j] * v
            a3 += weight[c3, j] * v
        out[m] = a0
        out[m + 1] = a1
        out[m + 2] = a2
        out[m + 3] = a3
        m += 4
    if m + 2 <= size:
        c0 = classes[row, m]
        c1 = classes[row, m + 1]
        a0 = 0.0
        a1 = 0.0
        for j in range(d):
            v = np.float64(x[i, j])
            a0 += weight[c0, j] * v
            a1 += weight[c1, j] * v
        out[m] = a0
        out[m + 1] = a1
        m += 2
    if m < size:
        c0 = classes[row, m]
        a0 = 0.0
        for j in range(d):
            a0 += weight[c0, j] * x[i, j]
        out[m] = a0


@njit(nogil=True, inline="always")
def _next_random(state):  # pragma: no cover - compiled
    """SplitMix64 step on ``state[0]`` (uint64); returns a uint64."""
    z = state[0] + np.uint64(0x9E3779B97F4A7C15)
    state[0] = z
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(nogil=True, inline="always")
def _random_below(state, bound):  # pragma: no cover - compiled
    """An int64 in ``0..bound-1`` (``0 < bound < 2**32``) from the top 32 random bits.

    Multiply and shift instead of a 64-bit modulo (Lemire's reduction): one multiplication
    instead of a division per visited sample.
    """
    high = _next_random(state) >> np.uint64(32)
    return np.int64((high * np.uint64(bound)) >> np.uint64(32))


@njit(nogil=True, inline="always")
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


@njit(nogil=True, inline="always")
def _subproblem_pair(b, a_i, y_pos, c_y, out):  # pragma: no cover - compiled
    """:func:`_subproblem` for two active classes, in closed form (one division, no sorting).

    With the true class active (``y_pos < 2``) the pair is ``alpha_y = -alpha_other = t`` with
    ``0 <= t <= c_y``, minimising ``a_i t^2 + (b_y - b_other) t``; with the true class shrunk
    (``y_pos >= 2``) it is ``alpha_0 = t``, ``alpha_1 = -c_y - t`` with ``-c_y <= t <= 0``.
    """
    if y_pos < 2:
        other = 1 - y_pos
        t = (b[other] - b[y_pos]) / (2.0 * a_i)
        t = t if t > 0.0 else 0.0
        t = t if t < c_y else c_y
        out[y_pos] = t
        out[other] = -t
    else:
        t = (b[1] - b[0] - a_i * c_y) / (2.0 * a_i)
        t = t if t < 0.0 else 0.0
        t = t if t > -c_y else -c_y
        out[0] = t
        out[1] = -c_y - t


@njit(nogil=True, inline="always")
def _gradient_spread(grad, alpha, alpha_index, bias_weight, i, size, y_pos, s, c):  # pragma: no cover - compiled
    """Turn sample ``i``'s active scores ``grad[:size]`` into its gradient, in place; return
    ``(min_free, max_g)``: the smallest gradient of a class below its bound, and the largest.

    ``G^m = w_m . x_i + s b_m + 1`` for ``m != y_i``, without the ``+ 1`` for ``y_i`` (the class
    at position ``y_pos``; ``y_pos >= size`` when it is shrunk).
    """
    for m in range(size):
        grad[m] += s * bias_weight[alpha_index[i, m]] + 1.0
    if y_pos < size:
        grad[y_pos] -= 1.0
    min_free = np.inf
    max_g = -np.inf
    for m in range(size):
        bound = c if m == y_pos else 0.0
        g = grad[m]
        if alpha[i, alpha_index[i, m]] < bound and g < min_free:
            min_free = g
        if g > max_g:
            max_g = g
    return min_free, max_g


@njit(nogil=True, inline="always")
def _shrink_classes(alpha, alpha_index, i, grad, size, y_pos, c, threshold):  # pragma: no cover - compiled
    """Class shrinking of sample ``i``: move classes at their bound with ``grad < threshold`` behind
    its active list (``alpha_index[i]`` and ``grad`` swapped alike); returns ``(size, y_pos)``.

    ``threshold`` is the smallest gradient of a free class (minus a rounding margin in
    :func:`_screen`).
    """
    m = 0
    while m < size:
        bound = c if m == y_pos else 0.0
        if alpha[i, alpha_index[i, m]] == bound and grad[m] < threshold:
            size -= 1
            while size > m:
                bound = c if size == y_pos else 0.0
                if not (alpha[i, alpha_index[i, size]] == bound and grad[size] < threshold):
                    tmp = alpha_index[i, m]
                    alpha_index[i, m] = alpha_index[i, size]
                    alpha_index[i, size] = tmp
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
    return size, y_pos


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
            _add_scaled_row(weight, cls, delta, x, i)
            bias_weight[cls] += s * delta
            if cls == y[i]:
                floats[_OWN] += delta
            step = max(step, abs(delta))
    return step


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
def _move(x, y, s, weight, bias_weight, floats, i, cls, delta):  # pragma: no cover - compiled
    """``W[cls] += delta x_i`` (bias and the running own-class sum alike), if ``delta != 0``."""
    if delta != 0.0:
        _add_scaled_row(weight, cls, delta, x, i)
        bias_weight[cls] += s * delta
        if cls == y[i]:
            floats[_OWN] += delta


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


@njit(nogil=True)
def _reactivate(class_active, ints, k):  # pragma: no cover - compiled
    class_active[:] = k
    ints[_ACTIVE] = class_active.shape[0]
    ints[_FROM_ALL] = 1
