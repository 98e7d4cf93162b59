"""Tests of the compiled sequential backend (numba) and of ``fit_crammer_singer_path``."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("numba")

from captum_dualxda.solver import (  # noqa: E402  # noqa: E402
    ConvergenceWarning,
    evaluate_optimality,
    fit_crammer_singer,
    fit_crammer_singer_path,
    machine_code,
    make_problem,
    primal_objective,
    project_crammer_singer,
    sequential,
)
from captum_dualxda.solver.sequential import (  # noqa: E402
    drop_zero_columns,
    evaluate_optimality_compiled,
    solve_sequential,
    solve_subproblem,
)


def make_data(n: int, d: int, k: int, seed: int, mean_sq_norm: float = 1.0, dtype=np.float32):
    """ReLU-of-Gaussian class clusters with 5 % label noise (non-SVs, bounded and free SVs)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(k, 16)) * 0.8
    labels = rng.integers(0, k, size=n)
    z = means[labels] + rng.normal(size=(n, 16))
    x = np.maximum(z @ (rng.normal(size=(16, d)) / 4.0) + 0.5, 0.0)
    x *= np.sqrt(mean_sq_norm / np.mean((x * x).sum(1)))
    flip = rng.random(n) < 0.05
    labels[flip] = rng.integers(0, k, size=int(flip.sum()))
    return torch.from_numpy(x.astype(dtype)), torch.from_numpy(labels)


@pytest.fixture
def one_torch_thread():
    """The PyTorch backend on tiny blocks is fastest (and robust to busy CPUs) on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def full_weight(result) -> torch.Tensor:
    """``(K, d + 1)`` weights including the intercept column's weight ``intercept / s``."""
    s = result.intercept_scaling
    bias = result.intercept / s if s else torch.zeros_like(result.intercept)
    return torch.cat([result.weight, bias[:, None]], 1)


def absolute_gap(result) -> float:
    return max(result.primal - result.dual, 0.0)


def rigorous_distance_bound(a, b) -> float:
    """``||W_a - W_b||_F <= sqrt(2 gap_a) + sqrt(2 gap_b)`` (P is 1-strongly convex, docs/solver.md 1.5)."""
    return math.sqrt(2 * absolute_gap(a)) + math.sqrt(2 * absolute_gap(b))


def attributions(result, x_train, x_test) -> torch.Tensor:
    """``(n_test, n)`` DualDA attributions ``alpha_i^m <x_i, x>`` for the predicted class ``m``."""
    scores = x_test.double() @ result.weight.T + result.intercept
    predicted = scores.argmax(1)
    kernel = x_test.double() @ x_train.double().T
    return kernel * result.alpha.T[predicted]


def assert_same_optimum(a, b, x, rel_w: float = 2e-3, min_corr: float = 0.999, top_k: int = 10):
    wa, wb = full_weight(a), full_weight(b)
    dist = float((wa - wb).norm())
    assert dist <= rigorous_distance_bound(a, b) + 1e-12
    assert dist / float(wb.norm()) <= rel_w
    x_test = x[:20] * 1.1 + 0.01
    att_a, att_b = attributions(a, x, x_test), attributions(b, x, x_test)
    for row_a, row_b in zip(att_a, att_b):
        corr = float(torch.corrcoef(torch.stack([row_a, row_b]))[0, 1])
        assert corr >= min_corr
        top_a = set(row_a.topk(top_k).indices.tolist())
        top_b = set(row_b.topk(top_k).indices.tolist())
        assert len(top_a & top_b) >= top_k - 1  # one borderline swap allowed


def check_contract(result, n: int, k: int, C: float):
    alpha = result.alpha
    assert alpha.dtype == torch.float64 and alpha.shape == (n, k) and alpha.device.type == "cpu"
    assert float(alpha.sum(1).abs().max()) <= 1e-12 * C * k
    assert float(alpha.max()) <= C * (1 + 1e-12)


# (a) both backends reach the same optimum -------------------------------------------------------


@pytest.mark.parametrize(
    "n, d, k, seed, C, fit_intercept",
    [(400, 24, 4, 0, 0.1, True), (500, 16, 3, 2, 0.3, False), (600, 40, 6, 3, 0.05, True)],
)
def test_backends_reach_the_same_optimum(one_torch_thread, n, d, k, seed, C, fit_intercept):
    x, y = make_data(n, d, k, seed)
    seq = fit_crammer_singer(x, y, C=C, fit_intercept=fit_intercept, backend="sequential")
    blk = fit_crammer_singer(x, y, C=C, fit_intercept=fit_intercept, backend="bdcd")
    for result in (seq, blk):
        assert result.converged and result.residual <= 1e-4
        check_contract(result, n, k, C)
    assert seq.backend == "sequential" and blk.backend == "bdcd"
    assert seq.gap <= 1e-4
    assert_same_optimum(seq, blk, x)


def test_auto_backend_on_cpu_is_sequential():
    x, y = make_data(200, 8, 3, 0)
    assert fit_crammer_singer(x, y, C=0.1).backend == "sequential"


# (b) compiled subproblem == literal LIBLINEAR solve_sub_problem --------------------------------


def liblinear_solve_sub_problem(A_i, yi, C_yi, active_i, B):
    """A literal pure-Python transcription of LIBLINEAR's ``solve_sub_problem`` (docs/solver.md 2.2, step 4)."""
    D = [B[r] for r in range(active_i)]
    if yi < active_i:
        D[yi] += A_i * C_yi
    D.sort(reverse=True)
    beta = D[0] - A_i * C_yi
    r = 1
    while r < active_i and beta < r * D[r]:
        beta += D[r]
        r += 1
    beta /= r
    alpha_new = [0.0] * active_i
    for r in range(active_i):
        if r == yi:
            alpha_new[r] = min(C_yi, (beta - B[r]) / A_i)
        else:
            alpha_new[r] = min(0.0, (beta - B[r]) / A_i)
    return alpha_new


def test_subproblem_matches_liblinear_transcription():
    rng = np.random.default_rng(0)
    worst = 0.0
    for case in range(3000):
        size = int(rng.integers(2, 13))
        curvature = float(10 ** rng.uniform(-3, 3))
        C = float(10 ** rng.uniform(-5, 2))
        shrunk = case % 3 == 0
        y_pos = size + int(rng.integers(0, 3)) if shrunk else int(rng.integers(0, size))
        scale = curvature * C if case % 2 else 1.0
        b = rng.normal(size=size) * scale
        if case % 5 == 0:
            b[: size // 2] = b[0]  # ties
        expected = np.array(liblinear_solve_sub_problem(curvature, y_pos, C, size, list(b)))
        got = solve_subproblem(b, curvature, y_pos, C)
        err = float(np.abs(got - expected).max()) / max(C, float(np.abs(expected).max()))
        worst = max(worst, err)
        assert err <= 1e-12, (case, got, expected)
        # feasibility of the result
        target_sum = -C if shrunk else 0.0
        assert abs(got.sum() - target_sum) <= 1e-12 * size * max(C, float(np.abs(b).max()) / curvature)
    assert worst <= 1e-12


def test_subproblem_is_the_projection_when_the_true_class_is_active():
    rng = np.random.default_rng(1)
    for _ in range(200):
        k = int(rng.integers(2, 13))
        curvature, C = float(rng.uniform(0.1, 10)), float(rng.uniform(0.01, 2))
        y = int(rng.integers(0, k))
        alpha = torch.from_numpy(
            project_crammer_singer(torch.randn(1, k, dtype=torch.float64), torch.tensor([y]), C).numpy()[0]
        )
        grad = rng.normal(size=k)
        b = grad - curvature * alpha.numpy()
        target = project_crammer_singer((alpha - torch.from_numpy(grad) / curvature)[None], torch.tensor([y]), C)[
            0
        ].numpy()
        np.testing.assert_allclose(solve_subproblem(b, curvature, y, C), target, atol=1e-12 * max(1, C))


def test_closed_form_pair_subproblem_matches_liblinear_transcription():
    """Two active classes (the common case once shrinking settles) are solved in closed form."""
    from captum_dualxda.solver._kernel_primitives import _subproblem_pair

    rng = np.random.default_rng(2)
    out = np.empty(2)
    for case in range(2000):
        curvature = float(10 ** rng.uniform(-3, 3))
        C = float(10 ** rng.uniform(-5, 2))
        y_pos = int(rng.integers(0, 2)) if case % 3 else 2 + int(rng.integers(0, 3))
        b = rng.normal(size=2) * (curvature * C if case % 2 else 1.0)
        if case % 7 == 0:
            b[1] = b[0]  # tie
        expected = np.array(liblinear_solve_sub_problem(curvature, y_pos, C, 2, list(b)))
        _subproblem_pair(b, curvature, y_pos, C, out)
        # the transcription cancels terms of size |b| / A: both are exact to that scale
        scale = max(C, float(np.abs(expected).max()), float(np.abs(b).max()) / curvature)
        assert float(np.abs(out - expected).max()) <= 1e-12 * scale, (case, out, expected)
        assert out.sum() == pytest.approx(-C if y_pos >= 2 else 0.0, abs=1e-12 * scale)


# all-zero feature columns (dead ReLU units) -----------------------------------------------------


def test_zero_columns_are_dropped_without_changing_the_solution():
    x, y = make_data(900, 24, 5, 11)
    dead = [0, 3, 4, 9, 17, 23]
    wide = torch.zeros(900, 30)
    live = [j for j in range(30) if j not in dead]
    wide[:, live] = x
    compact, columns = drop_zero_columns(wide.numpy())
    assert columns.tolist() == live and compact.flags.c_contiguous
    assert np.array_equal(compact, x.numpy())
    a = fit_crammer_singer(wide, y, C=0.2, seed=5)
    b = fit_crammer_singer(x, y, C=0.2, seed=5)
    # the kernels see the very same compact features: bitwise the same dual variables
    assert torch.equal(a.alpha, b.alpha) and a.n_iter == b.n_iter
    assert a.weight.shape == (5, 30) and float(a.weight[:, dead].abs().max()) == 0.0
    assert torch.equal(a.weight[:, live], b.weight) and torch.equal(a.intercept, b.intercept)
    assert (a.primal, a.dual, a.residual) == (b.primal, b.dual, b.residual)


def test_zero_column_scan_keeps_late_columns_and_respects_its_limits(monkeypatch):
    rng = np.random.default_rng(3)
    x = np.zeros((50, 16), dtype=np.float32)
    x[:, :8] = rng.random((50, 8))
    x[49, 12] = 0.5  # nonzero in the last row only, found by a chunked scan
    compact, columns = drop_zero_columns(x, chunk_rows=7)
    assert columns.tolist() == list(range(8)) + [12]
    assert np.array_equal(compact, x[:, columns])
    dense = rng.random((40, 32))
    dense[:, 5] = 0.0  # one dead column of 32 (< 1/16): not worth a copy
    assert drop_zero_columns(dense)[0] is dense and drop_zero_columns(dense)[1] is None
    assert drop_zero_columns(np.zeros((6, 4)))[1] is None  # nothing left: kept as it is
    monkeypatch.setattr(sequential, "_COMPACT_MAX_BYTES", 0)  # too large to copy: solved as given
    assert drop_zero_columns(x)[0] is x
    xt, yt = make_data(400, 12, 3, 12)
    wide = torch.cat([xt, torch.zeros(400, 4)], 1)
    uncompressed = fit_crammer_singer(wide, yt, C=0.3)
    monkeypatch.undo()
    compressed = fit_crammer_singer(wide, yt, C=0.3)
    assert uncompressed.converged and compressed.converged
    assert float(uncompressed.weight[:, 12:].abs().max()) == 0.0
    assert_same_optimum(uncompressed, compressed, wide)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_screening_after_reactivation_reaches_the_same_optimum(monkeypatch, dtype):
    """Shrinking from one matrix product after each reactivation changes what is visited, not the optimum."""
    x, y = make_data(2500, 40, 12, 13, mean_sq_norm=20.0, dtype=dtype)
    calls = []
    screen = sequential._screen_reactivated

    def counted(*args):
        before = int(args[-2][4][1])  # active samples before screening (ints[1])
        screen(*args)
        calls.append((before, int(args[-2][4][1])))

    monkeypatch.setattr(sequential, "_screen_reactivated", counted)
    monkeypatch.setattr(sequential, "_SCREEN_MIN_WORK", float("inf"))
    plain = fit_crammer_singer(x, y, C=0.5, seed=1)
    assert not calls
    monkeypatch.setattr(sequential, "_SCREEN_MIN_WORK", 0.0)
    monkeypatch.setattr(sequential, "_SCREEN_BLOCK_ELEMENTS", 12 * 300)  # several blocks of rows
    screened = fit_crammer_singer(x, y, C=0.5, seed=1)
    assert calls and all(after < before for before, after in calls)  # it did shrink
    assert plain.converged and screened.converged and screened.residual <= 1e-4
    check_contract(screened, 2500, 12, 0.5)
    assert_same_optimum(screened, plain, x)


def test_screening_shrinks_only_beyond_the_rounding_margin():
    """A class at its bound is shrunk only if its gradient is below the free one by more than the
    rounding bound of float32 scores; the sample then leaves the active set."""
    kernels = machine_code.kernels("float32")
    x = np.array([[1.0], [1.0]], dtype=np.float32)
    sq = np.array([1.0, 1.0])
    k = 3
    alpha = np.zeros((2, k))  # true class 0 free (0 < C), the others at their bound 0
    # gradients: true class 0, class 1: w_1 + 1, class 2: w_2 + 1 (intercept scaling 0)
    # class 1's gradient -3e-7 is below the free one, but within the margin 2 (d + 2) u max ||w||
    # = 7.2e-7 of float32 scores; without the margin it would be shrunk
    weight = np.array([[0.0], [-1.0 - 3e-7], [-2.0]])
    assert float(np.float32(weight[1, 0])) + 1.0 < -2e-7
    alpha_index = np.tile(np.arange(k, dtype=np.int32), (2, 1))
    class_active = np.full(2, k, dtype=np.int64)
    y_index = np.zeros(2, dtype=np.int64)
    order = np.arange(2, dtype=np.int64)
    ints = np.array([0, 2, 1], dtype=np.int64)
    sequential._screen_reactivated(
        kernels,
        x,
        0.0,
        1.0,
        sq,
        alpha,
        weight,
        np.zeros(k),
        (alpha_index, class_active, y_index, order, ints),
        np.empty((4, k)),
    )
    # class 2 (gradient -1) is shrunk, class 1 stays: two classes left
    assert class_active.tolist() == [2, 2] and ints[1] == 2
    assert sorted(alpha_index[0, :2].tolist()) == [0, 1] and alpha_index[0, 2] == 2
    weight[1, 0] = -3.0  # now both rivals are clearly below: one class left, the samples leave
    class_active[:] = k
    sequential._screen_reactivated(
        kernels,
        x,
        0.0,
        1.0,
        sq,
        alpha,
        weight,
        np.zeros(k),
        (alpha_index, class_active, y_index, order, ints),
        np.empty((4, k)),
    )
    assert class_active.tolist() == [1, 1] and ints[1] == 0


# (c) warm starts --------------------------------------------------------------------------------


def test_warm_start_reaches_the_cold_optimum():
    x, y = make_data(1500, 32, 5, 4)
    cold = fit_crammer_singer(x, y, C=0.5)
    previous = fit_crammer_singer(x, y, C=0.05)
    warm = fit_crammer_singer(x, y, C=0.5, warm_start=previous)
    assert warm.converged and cold.converged
    assert_same_optimum(warm, cold, x)
    path = fit_crammer_singer_path(x, y, [0.005, 0.05, 0.5])
    assert [r.C for r in path] == [0.005, 0.05, 0.5]
    assert_same_optimum(path[-1], cold, x)
    print(f"passes at C=0.5: cold {cold.n_iter}, warm from C=0.05 {warm.n_iter}, path {path[-1].n_iter}")


def test_warm_start_from_alpha0_is_used_exactly():
    x, y = make_data(300, 12, 3, 5)
    done = fit_crammer_singer(x, y, C=0.2, tol=1e-8)
    problem = make_problem(x, y, 0.2, True, 1.0)
    out = solve_sequential(problem, tol=1e-4, max_iter=100, seed=0, alpha0=done.alpha.clone())
    assert out.converged and out.n_iter <= 5  # already optimal: a few passes of the schedule
    assert torch.allclose(out.alpha, done.alpha, atol=1e-9 * 0.2)


# (d) determinism --------------------------------------------------------------------------------


def test_same_seed_is_bitwise_reproducible_and_other_seeds_agree():
    x, y = make_data(1200, 24, 4, 6)
    a = fit_crammer_singer(x, y, C=0.3, seed=7)
    b = fit_crammer_singer(x, y, C=0.3, seed=7)
    c = fit_crammer_singer(x, y, C=0.3, seed=8)
    assert torch.equal(a.alpha, b.alpha) and a.n_iter == b.n_iter
    assert not torch.equal(a.alpha, c.alpha)
    assert_same_optimum(a, c, x)


# (e) agreement with scikit-learn ----------------------------------------------------------------


@pytest.mark.parametrize("seed, C, fit_intercept", [(0, 0.1, True), (1, 1.0, True), (2, 0.3, False)])
def test_agrees_with_sklearn(seed, C, fit_intercept):
    svm = pytest.importorskip("sklearn.svm")
    x, y = make_data(2000, 32, 5, 10 + seed)
    ours = fit_crammer_singer(x, y, C=C, fit_intercept=fit_intercept)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk = svm.LinearSVC(
            multi_class="crammer_singer",
            C=C,
            tol=1e-4,
            max_iter=100000,
            random_state=0,
            fit_intercept=fit_intercept,
        ).fit(x.numpy(), y.numpy())
    problem = make_problem(x, y, C, fit_intercept, 1.0)
    w_sk = torch.from_numpy(sk.coef_)
    b_sk = torch.from_numpy(sk.intercept_) if fit_intercept else torch.zeros(w_sk.shape[0], dtype=torch.float64)
    p_sk = primal_objective(problem, w_sk, b_sk)
    # our primal is at least as good as sklearn's (up to the tolerance)
    assert ours.primal <= p_sk + 1e-5 * abs(p_sk)
    w_ours = full_weight(ours)
    w_sklearn = torch.cat([w_sk, b_sk[:, None]], 1)
    dist = float((w_ours - w_sklearn).norm())
    bound = math.sqrt(2 * absolute_gap(ours)) + math.sqrt(2 * max(p_sk - ours.dual, 0.0))
    assert dist <= bound
    assert dist / float(w_sklearn.norm()) <= 1e-3
    agree = (ours.weight @ x.double().T + ours.intercept[:, None]).argmax(0) == torch.from_numpy(sk.predict(x.numpy()))
    assert float(agree.double().mean()) >= 0.995


# (e2) hard problems: convergence, and no drift of W ---------------------------------------------


def overlapping_features(n: int, d: int, k: int, seed: int, spread: float = 0.6, dtype=np.float64):
    """Hard, overlapping non-negative features: folded Gaussian class clusters.

    Drawn in this order from ``np.random.default_rng(seed)``: labels ``y ~ U{0..k-1}`` (``n``),
    class means ``mu ~ N(0, spread^2 I_d)`` (``(k, d)``), noise ``N(0, I_d)`` (``(n, d)``); then
    ``x = |mu_y + noise|``. Every feature is positive and the classes overlap heavily, so without
    an intercept and at ``C >= 1`` there are many free support vectors whose Gram matrix has one
    dominant direction (the common mean): plain coordinate descent needs tens of thousands of
    passes, LIBLINEAR too (docs/solver.md 2.6).
    """
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    means = rng.standard_normal((k, d)) * spread
    x = np.abs(rng.standard_normal((n, d)) + means[y])
    return torch.from_numpy(x.astype(dtype)), torch.from_numpy(y)


def sklearn_primal(x, y, C: float, fit_intercept: bool) -> tuple[float, torch.Tensor]:
    """scikit-learn's (LIBLINEAR's) primal objective and ``(K, d + 1)`` weights at ``tol=1e-4``."""
    svm = pytest.importorskip("sklearn.svm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk = svm.LinearSVC(
            multi_class="crammer_singer", C=C, tol=1e-4, max_iter=100000, random_state=0, fit_intercept=fit_intercept
        ).fit(x.numpy(), y.numpy())
    w = torch.from_numpy(sk.coef_).double()
    b = torch.from_numpy(np.asarray(sk.intercept_, dtype=np.float64)) if fit_intercept else torch.zeros(w.shape[0])
    problem = make_problem(x, y, C, fit_intercept, 1.0)
    return primal_objective(problem, w, b.double()), torch.cat([w, b.double()[:, None]], 1)


@pytest.mark.parametrize(
    "n, d, k, seed, spread, C, dtype, budget",
    [
        (500, 16, 3, 0, 0.6, 1.0, np.float64, 10_000),
        (500, 16, 3, 1, 0.6, 1.0, np.float32, 10_000),
        (800, 24, 4, 2, 0.6, 1.0, np.float32, 10_000),
        (2000, 64, 3, 2, 0.6, 1.0, np.float32, 20_000),  # issue 21 item 7's size
        (600, 16, 3, 3, 0.8, 0.1, np.float64, 10_000),
        (500, 32, 3, 0, 0.6, 10.0, np.float64, 20_000),
        (400, 16, 5, 4, 0.5, 10.0, np.float32, 20_000),
    ],
)
def test_hard_overlapping_problems_converge(n, d, k, seed, spread, C, dtype, budget):
    """No intercept, positive overlapping features, C up to 10: the plain method (and LIBLINEAR)
    needed 6,000 to over 100,000 passes here (seeds 0-4); with momentum and the natural-residual
    measure the solver needed at most 6,700 (at least 2x below ``budget``), and its solution must
    be certified by the independent PyTorch certificate."""
    x, y = overlapping_features(n, d, k, seed, spread, dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        result = fit_crammer_singer(x, y, C=C, fit_intercept=False, max_iter=budget)
    assert result.converged and result.n_iter < budget
    check_contract(result, n, k, C)
    problem = make_problem(x, y, C, False, 1.0)
    report = evaluate_optimality(problem, result.alpha)  # PyTorch, independent of the kernels
    assert report.residual <= 1e-4
    assert report.gap <= 1e-4 * n * C  # gap_i <= C (max G - min free G): small at the stopping point
    if C <= 1.0 and n <= 1000:  # LIBLINEAR's solution (up to 100,000 passes; slow at C = 10): same optimum
        p_sk, w_sk = sklearn_primal(x, y, C, False)
        assert result.primal <= p_sk + 1e-5 * abs(p_sk)
        dist = float((full_weight(result) - w_sk).norm())
        assert dist <= math.sqrt(2 * absolute_gap(result)) + math.sqrt(2 * max(p_sk - result.dual, 0.0))


def test_tighter_tol_gives_a_tighter_solution_on_a_hard_problem():
    # issue 21 item 7's size: 100,000 passes without converging at either tol before, and a larger gap at 1e-6
    x, y = overlapping_features(2000, 64, 3, 2, dtype=np.float32)
    loose = fit_crammer_singer(x, y, C=1.0, fit_intercept=False, tol=1e-4)
    tight = fit_crammer_singer(x, y, C=1.0, fit_intercept=False, tol=1e-6)
    assert loose.converged and tight.converged
    assert tight.residual <= 1e-6 and tight.gap <= loose.gap
    assert tight.dual >= loose.dual - 1e-12 * abs(loose.dual)


def test_the_dual_never_gets_worse_with_more_passes():
    """Momentum with restarts: the returned point is never worse than an earlier accepted one."""
    x, y = overlapping_features(500, 16, 3, 1, dtype=np.float32)
    duals = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for max_iter in (25, 50, 100, 200, 400, 800):
            result = fit_crammer_singer(x, y, C=1.0, fit_intercept=False, max_iter=max_iter, seed=4)
            check_contract(result, 500, 3, 1.0)
            duals.append(result.dual)
    assert all(b >= a - 1e-12 * abs(a) for a, b in zip(duals, duals[1:]))


@pytest.mark.parametrize("options", [{}, {"acceleration": False}])
def test_tiny_C_with_large_features_does_not_drift(options):
    """60 x 5 features of size 1e4, C = 1e-6: every step is below 1e-12 in absolute terms, so
    skipping "negligible" updates of W (LIBLINEAR's absolute threshold) while storing the new
    alpha made W drift from alpha^T X and the objective get worse with every pass."""
    rng = np.random.default_rng(0)
    n, d, k, C = 60, 5, 3, 1e-6
    y = rng.integers(0, k, n)
    x = (rng.standard_normal((n, d)) + rng.standard_normal((k, d))[y]) * 1e4
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        early = fit_crammer_singer(xt, yt, C=C, max_iter=1000, **options)
    late = fit_crammer_singer(xt, yt, C=C, max_iter=20_000, **options)
    assert late.converged and late.residual <= 1e-4
    assert late.dual >= early.dual - 1e-12 * abs(early.dual)
    check_contract(late, n, k, C)
    p_sk, _ = sklearn_primal(xt, yt, C, True)  # LIBLINEAR (100,000 passes here): no better
    assert late.primal <= p_sk * (1 + 1e-4)
    assert late.gap <= 1e-3


def test_plain_and_accelerated_passes_reach_the_same_optimum():
    x, y = make_data(800, 24, 4, 2, mean_sq_norm=20.0)
    fast = fit_crammer_singer(x, y, C=0.5, backend="sequential")
    plain = fit_crammer_singer(x, y, C=0.5, backend="sequential", acceleration=False)
    assert fast.converged and plain.converged
    assert plain.stats["restarts"] == 0 and fast.stats["restarts"] >= 0
    assert_same_optimum(fast, plain, x)


# (f) fit_crammer_singer_path validation ----------------------------------------------------------


@pytest.mark.parametrize("Cs", [[], (), [0.1, 0.0], [-1.0], [float("nan")], [float("inf")], ["1"], [True], None, 0.1])
def test_path_rejects_bad_Cs(Cs):
    x, y = make_data(50, 4, 3, 0)
    with pytest.raises(ValueError, match="Cs"):
        fit_crammer_singer_path(x, y, Cs)


@pytest.mark.parametrize("key", ["C", "warm_start"])
def test_path_rejects_reserved_keywords(key):
    x, y = make_data(50, 4, 3, 0)
    with pytest.raises(TypeError, match=key):
        fit_crammer_singer_path(x, y, [0.1], **{key: None})


def test_path_accepts_numpy_scalars_and_keeps_order():
    x, y = make_data(200, 8, 3, 1)
    results = fit_crammer_singer_path(x, y, np.array([0.5, 0.01]), tol=1e-3)
    assert [r.C for r in results] == [0.5, 0.01]
    assert all(r.converged for r in results)


# contract details -------------------------------------------------------------------------------


def test_max_iter_progress_and_dtypes(capsys):
    x, y = make_data(500, 16, 4, 3, mean_sq_norm=50.0)
    with pytest.warns(ConvergenceWarning):
        capped = fit_crammer_singer(x, y, C=1.0, max_iter=3)
    assert capped.n_iter == 3 and not capped.converged
    assert capsys.readouterr().out == ""
    res64 = fit_crammer_singer(x.double(), y, C=0.1, show_progress=True)
    res32 = fit_crammer_singer(x, y, C=0.1)
    assert res64.converged and res32.converged
    assert float((res64.weight - res32.weight).norm() / res32.weight.norm()) <= 1e-3
    assert capsys.readouterr().out == ""


def test_zero_rows_without_intercept_and_two_classes():
    x, y = make_data(300, 10, 2, 8)
    x[:5] = 0.0
    result = fit_crammer_singer(x, y, C=0.5, fit_intercept=False)
    assert result.converged
    assert float(result.alpha[:5].abs().max()) == 0.0
    check_contract(result, 300, 2, 0.5)


def test_compiled_certificate_equals_gap_module():
    x, y = make_data(700, 20, 4, 9)
    for fit_intercept in (True, False):
        result = fit_crammer_singer(x, y, C=0.2, fit_intercept=fit_intercept)
        problem = make_problem(x, y, 0.2, fit_intercept, 1.0)
        ref = evaluate_optimality(problem, result.alpha)
        got = evaluate_optimality_compiled(problem, result.alpha)
        assert torch.allclose(got.weight, ref.weight, rtol=0, atol=1e-12)
        assert torch.allclose(got.bias_weight, ref.bias_weight, rtol=0, atol=1e-12)
        for name in ("primal", "dual", "residual"):
            assert math.isclose(getattr(got, name), getattr(ref, name), rel_tol=1e-10, abs_tol=1e-12)
        assert math.isclose(got.gap, ref.gap, rel_tol=1e-6, abs_tol=1e-12)


# cold start: the compiled kernels come from the on-disk cache without numba --------------------

_FRESH_PROCESS_FIT = r"""
import importlib.machinery, json, sys, types
# Import the solver subpackage without the package's __init__ (models, Captum, Zennit): the solver
# imports nothing above itself, and this keeps the subprocess to a few seconds.
package = types.ModuleType("captum_dualxda")
package.__path__ = [sys.argv[1]]
sys.modules["captum_dualxda"] = package
import numpy as np, torch
from captum_dualxda.solver import fit_crammer_singer
from captum_dualxda.solver import machine_code
data = np.load(sys.argv[2])
result = fit_crammer_singer(torch.from_numpy(data["x"]), torch.from_numpy(data["y"]), C=0.1, seed=3)
print(json.dumps({"numba": "numba" in sys.modules, "llvmlite": "llvmlite" in sys.modules,
                  "origin": machine_code.kernels("float32").origin,
                  "alpha": result.alpha.numpy().tobytes().hex(), "n_iter": result.n_iter}))
"""


def test_fresh_process_loads_cached_kernels_without_numba(tmp_path):
    """After one compile, a new process fits with the cached machine code and never imports numba."""
    import subprocess
    import sys

    import captum_dualxda

    x, y = make_data(400, 12, 4, 11)
    here = fit_crammer_singer(x, y, C=0.1, seed=3)  # compiles (first run) or loads: the cache exists now
    assert machine_code_module().kernels("float32").origin in ("library", "cache", "compiled")
    np.savez(tmp_path / "data.npz", x=x.numpy(), y=y.numpy())
    package = str(Path(captum_dualxda.__file__).parent)
    done = subprocess.run(
        [sys.executable, "-c", _FRESH_PROCESS_FIT, package, str(tmp_path / "data.npz")],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    there = json.loads(done.stdout.strip().splitlines()[-1])
    assert not there["numba"]
    if machine_code_module()._c_compiler() is not None and machine_code_module()._cpu_identity() is not None:
        # the shared library: loaded with ctypes alone, not even llvmlite is imported
        assert there["origin"] == "library" and not there["llvmlite"]
    else:
        assert there["origin"] == "cache"
    assert there["n_iter"] == here.n_iter
    assert bytes.fromhex(there["alpha"]) == here.alpha.numpy().tobytes()  # the same machine code


def machine_code_module():
    from captum_dualxda.solver import machine_code

    return machine_code


def cache_file(dtype: str) -> Path:
    """The cache file of this machine's kernels for ``dtype`` (compiled first if needed)."""
    seq = machine_code_module()
    seq.kernels(dtype)
    name = seq._cache_name(seq._cache_key(dtype))
    found = [folder / name for folder in seq._cache_dirs() if (folder / name).is_file()]
    assert found, "the compiled kernels were not cached"
    return found[0]


def assert_subproblem_matches_reference(kernels) -> None:
    """Loaded machine code solves a subproblem exactly as the Python reference does."""
    b = np.array([0.5, -0.2, 0.1])
    out, work = np.empty(3), np.empty(3)
    kernels.subproblem(b.ctypes.data, 1.5, 1, 0.3, 3, out.ctypes.data, work.ctypes.data)
    np.testing.assert_array_equal(out, solve_subproblem(b, 1.5, 1, 0.3))


def test_kernel_cache_refuses_damaged_stale_and_foreign_files(tmp_path, monkeypatch):
    seq = machine_code_module()
    original = cache_file("float64").read_bytes()
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    [folder] = seq._cache_dirs()
    folder.mkdir(parents=True)
    target = folder / seq._cache_name(seq._cache_key("float64"))
    assert seq._load_cached("float64") is None  # no file

    target.write_bytes(original)
    loaded = seq._load_cached("float64")
    assert loaded is not None and loaded.origin == "cache"
    assert_subproblem_matches_reference(loaded)

    end = original.index(b"\n")
    header = json.loads(original[:end])
    damaged = bytearray(original)
    damaged[-100] ^= 0xFF  # one flipped byte in the machine code
    for content in (bytes(damaged), original[: len(original) // 2], b"garbage"):
        target.write_bytes(content)
        assert seq._load_cached("float64") is None
    # a file for another CPU (or source, or toolchain) under this name is not used
    other = dict(header, key=dict(header["key"], cpu="another-cpu"))
    target.write_bytes(json.dumps(other).encode() + original[end:])
    assert seq._load_cached("float64") is None
    # the only outside symbols bound to traps are numba's error-path functions
    assert header["stubs"] and set(header["stubs"]) <= seq._ERROR_PATH_SYMBOLS
    assert header["key"]["dtype"] == "float64" and set(header["symbols"]) == set(seq._ENTRY_POINTS)
    # numba told to target another CPU model: its code is not this machine's, numba caches it
    target.write_bytes(original)
    assert seq._load_cached("float64") is not None
    monkeypatch.setenv("NUMBA_CPU_NAME", "generic")
    assert not seq._own_cache_possible() and seq._load_cached("float64") is None


def test_shared_library_cache_refuses_damaged_stale_and_foreign_files(tmp_path, monkeypatch):
    """The shared library is used only with a matching key and checksum; else the object file is."""
    seq = machine_code_module()
    if seq._c_compiler() is None or seq._cpu_identity() is None:
        pytest.skip("no C compiler driver or no /proc/cpuinfo: the object-file cache is used")
    seq.kernels("float64")
    key = seq._library_key("float64")
    found = [paths for folder in seq._cache_dirs() for paths in [seq._library_paths(folder, key)] if paths[1].is_file()]
    assert found, "no shared library was built when compiling"
    library, header_file = found[0]
    header = json.loads(header_file.read_text())
    assert header["key"] == key and set(header["symbols"]) == set(seq._ENTRY_POINTS)
    object_file = cache_file("float64").read_bytes()

    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    [folder] = seq._cache_dirs()
    folder.mkdir(parents=True)
    (folder / seq._cache_name(seq._cache_key("float64"))).write_bytes(object_file)
    target_library, target_header = seq._library_paths(folder, key)
    target_library.write_bytes(library.read_bytes())
    target_header.write_text(json.dumps(header))
    loaded = seq._load_cached("float64")
    assert loaded is not None and loaded.origin == "library"
    assert_subproblem_matches_reference(loaded)

    # a damaged library, another CPU or kernel source in the header, a header without its library:
    # never loaded; the object file is used instead
    damaged = bytearray(library.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    cases = [
        (bytes(damaged), header),
        (library.read_bytes(), dict(header, key=dict(key, cpu="another-cpu"))),
        (library.read_bytes(), dict(header, key=dict(key, kernels="0" * 64))),
        (None, header),
    ]
    for content, written in cases:
        # a new file each time (never rewrite a loaded library in place: the process maps it)
        target_library.unlink(missing_ok=True)
        if content is not None:
            target_library.write_bytes(content)
        target_header.write_text(json.dumps(written))
        assert seq._load_library("float64") is None
        fallback = seq._load_cached("float64")
        assert fallback is not None and fallback.origin == "cache"


def test_kernel_entry_points_match_the_driver():
    """The C signatures and return codes of the kernels module agree with the ctypes side."""
    kernels_module = pytest.importorskip("captum_dualxda.solver._sequential_kernels")
    assert kernels_module.ENTRY_POINTS == machine_code_module()._ENTRY_POINTS
    seq = sequential  # the driver
    assert (kernels_module._CONTINUE, kernels_module._PROPOSE_STOP, kernels_module._MAX_ITER) == (
        seq._CONTINUE,
        seq._PROPOSE_STOP,
        seq._MAX_ITER,
    )
    assert (kernels_module.N_INTS, kernels_module.N_FLOATS) == (seq._N_INTS, seq._N_FLOATS)
    entry_points = pytest.importorskip("captum_dualxda.solver._sequential_entry_points")
    assert entry_points.ENTRY_POINTS == kernels_module.ENTRY_POINTS
    with pytest.raises(ValueError, match="feature_dtype"):
        entry_points.compile_entry_points("float16")
    # raw pointers are only taken from buffers of the expected dtype and layout
    with pytest.raises(TypeError, match="C-contiguous float64"):
        seq._address(np.zeros((3, 4))[:, ::2], np.float64)
    with pytest.raises(TypeError, match="C-contiguous float64"):
        seq._address(np.zeros(3, dtype=np.float32), np.float64)
