"""numba building blocks of the sequential backend's kernels: the schedule state's layout, the
fast-math flags, and the per-sample steps (scores, the subproblem, shrinking, the random order).

Compiled as part of the kernels of :mod:`._sequential_kernels` (same rules: no allocation, no
exception, no numba runtime; see that module).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = [
    "N_FLOATS",
    "N_INTS",
    "_ACCEPT",
    "_ACCEPTED_OBJECTIVE",
    "_ACCEPTED_OWN",
    "_ACTIVE",
    "_CONTINUE",
    "_EPS_SHRINK",
    "_EXTRAPOLATE",
    "_EXTRAPOLATED",
    "_FAST",
    "_FROM_ALL",
    "_ITERATION",
    "_MAX_ITER",
    "_OWN",
    "_PREFETCH_MIN_BYTES",
    "_PROPOSE_STOP",
    "_REACTIVATED",
    "_RESTARTS",
    "_SINCE_RESTART",
    "_TOUCHED",
    "_add_scaled_row",
    "_gradient_spread",
    "_move",
    "_next_random",
    "_prefetch",
    "_prefetch_sample",
    "_random_below",
    "_row_scores",
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
def _move(x, y, s, weight, bias_weight, floats, i, cls, delta):  # pragma: no cover - compiled
    """``W[cls] += delta x_i`` (bias and the running own-class sum alike), if ``delta != 0``."""
    if delta != 0.0:
        _add_scaled_row(weight, cls, delta, x, i)
        bias_weight[cls] += s * delta
        if cls == y[i]:
            floats[_OWN] += delta


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
