"""The Crammer-Singer solver against scikit-learn, exact formulas and its own certificates."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import clustered_features
from sklearn.svm import LinearSVC

from captum_dualxda.solver import (
    available_backends,
    fit_crammer_singer,
    make_problem,
    primal_objective,
    project_crammer_singer,
)

BACKENDS = list(available_backends())


def sklearn_fit(x, y, C, fit_intercept, tol=1e-4):
    model = LinearSVC(
        multi_class="crammer_singer", C=C, tol=tol, fit_intercept=fit_intercept, random_state=0, max_iter=100000
    )
    model.fit(x.astype(np.float64), y)
    return torch.tensor(model.coef_), torch.tensor(model.intercept_) if fit_intercept else torch.zeros(
        len(model.classes_), dtype=torch.float64
    )


def check_feasible(alpha, y, C, rounding=0.0):
    rows = torch.arange(len(y))
    own = alpha[rows, y]
    others = alpha.clone()
    others[rows, y] = 0
    assert float(own.min()) >= -rounding * C and float(own.max()) <= C * (1 + 1e-12)
    assert float(others.max()) <= 0.0
    assert float(alpha.sum(1).abs().max()) <= 1e-12 * max(C, 1.0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed,C,fit_intercept", [(0, 0.01, True), (1, 0.3, True), (2, 0.1, False), (3, 1.0, True)])
def test_matches_sklearn_linear_svc(backend, seed, C, fit_intercept):
    # BDCD has no shrinking and is slow on CPU: give it the smaller problem.
    x, y = clustered_features(n=500 if backend == "sequential" else 250, d=20, k=4, seed=seed)
    res = fit_crammer_singer(torch.tensor(x), torch.tensor(y), C=C, fit_intercept=fit_intercept, backend=backend)
    w_sk, b_sk = sklearn_fit(x, y, C, fit_intercept)
    problem = make_problem(torch.tensor(x), torch.tensor(y), C, fit_intercept, 1.0)
    # Rigorous (docs/solver.md 1.5): ||W - W_sk|| <= sqrt(2 gap_ours) + sqrt(2 (P(W_sk) - D(alpha_ours))).
    w_ours = torch.cat([res.weight, res.intercept[:, None]], 1)
    w_ref = torch.cat([w_sk, b_sk[:, None]], 1)
    gap_abs = res.primal - res.dual
    p_sk = primal_objective(problem, w_sk, b_sk)
    bound = math.sqrt(2 * max(gap_abs, 0)) + math.sqrt(2 * max(p_sk - res.dual, 0))
    diff = float((w_ours - w_ref).norm())
    assert diff <= bound * (1 + 1e-9) + 1e-12
    # Practical: at tol 1e-4 both are within ~1e-3 relative of the unique optimum.
    assert diff / float(w_ref.norm()) < 2e-3
    # Training predictions agree (ties make 100% unsafe).
    pred = (torch.tensor(x).double() @ res.weight.T + res.intercept).argmax(1)
    pred_sk = (torch.tensor(x).double() @ w_sk.T + b_sk).argmax(1)
    assert float((pred == pred_sk).double().mean()) >= 0.99
    assert res.converged and res.residual <= 1e-4


@pytest.mark.parametrize("backend", BACKENDS)
def test_result_contract(backend):
    x, y = clustered_features(n=400, d=16, k=5, seed=4)
    C = 0.05
    res = fit_crammer_singer(x, y, C=C, backend=backend)
    xt, yt = torch.tensor(x, dtype=torch.float64), torch.tensor(y)
    assert res.alpha.shape == (400, 5) and res.weight.shape == (5, 16) and res.intercept.shape == (5,)
    check_feasible(res.alpha, yt, C)
    assert torch.allclose(res.weight, res.alpha.T @ xt, rtol=1e-10, atol=1e-12)
    assert torch.allclose(res.intercept, res.alpha.sum(0), rtol=1e-10, atol=1e-14)  # s = 1
    assert 0.0 <= res.gap < 1e-4
    assert res.primal >= res.dual


@pytest.mark.parametrize("backend", BACKENDS)
def test_deterministic_for_a_seed(backend):
    x, y = clustered_features(n=300, d=12, k=3, seed=5)
    a = fit_crammer_singer(x, y, C=0.05, seed=7, backend=backend)
    b = fit_crammer_singer(x, y, C=0.05, seed=7, backend=backend)
    assert torch.equal(a.alpha, b.alpha)
    c = fit_crammer_singer(x, y, C=0.05, seed=8, backend=backend)
    assert float((a.weight - c.weight).norm() / a.weight.norm()) < 2e-3


def test_backends_reach_the_same_tight_alpha():
    # Features in general position: the optimal alpha is unique, so tight solves must agree entry-wise.
    # float64 features: with float32 ones the block solver's residual can stall just above 1e-8
    # (2.5e-8 measured here), so tol=1e-8 would run all 100,000 passes.
    x, y = clustered_features(n=100, d=10, k=3, seed=6)
    x = x.astype(np.float64)
    C = 0.05
    a = fit_crammer_singer(x, y, C=C, tol=1e-8, backend="bdcd", block_size=8)
    b = fit_crammer_singer(x, y, C=C, tol=1e-8, backend="bdcd", block_size=16, seed=3)
    assert float((a.alpha - b.alpha).abs().max()) <= 1e-4 * C
    assert a.gap < 1e-8 and b.gap < 1e-8
    if "sequential" in BACKENDS:
        c = fit_crammer_singer(x, y, C=C, tol=1e-9, backend="sequential")
        assert float((a.alpha - c.alpha).abs().max()) <= 1e-4 * C


def literal_sub_problem(A, B, C_y, y, active):
    """Transcription of LIBLINEAR's closed form (docs/solver.md 2.2 step 4) with a python loop."""
    D = list(B)
    if active[y]:
        D[y] += A * C_y
    D = sorted([D[m] for m in range(len(B)) if active[m]], reverse=True)
    beta = D[0] - A * C_y
    r = 1
    while r < len(D) and beta < r * D[r]:
        beta += D[r]
        r += 1
    beta /= r
    bounds = [C_y if m == y else 0.0 for m in range(len(B))]
    return [min(bounds[m], (beta - B[m]) / A) for m in range(len(B))]


def test_projection_equals_liblinear_subproblem():
    rng = np.random.default_rng(0)
    for _ in range(300):
        k = int(rng.integers(2, 13))
        A = float(rng.uniform(0.1, 5))
        C = float(rng.uniform(0.01, 3))
        y = int(rng.integers(0, k))
        B = rng.normal(size=k) * 2
        ref = literal_sub_problem(A, B, C, y, [True] * k)
        # Our projection of v = alpha - G/A with B = G - A alpha is the same point: v = -B/A.
        out = project_crammer_singer(torch.tensor(-B / A)[None], torch.tensor([y]), C)[0]
        assert np.allclose(out.numpy(), ref, atol=1e-12, rtol=0)
        assert abs(float(out.sum())) < 1e-12 and float(out[y]) <= C + 1e-15


def test_projection_properties():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(200, 7, dtype=torch.float64, generator=g) * 3
    y = torch.randint(0, 7, (200,), generator=g)
    p = project_crammer_singer(v, y, 0.7)
    check_feasible(p, y, 0.7, rounding=1e-14)  # the raw projection is feasible up to rounding
    assert torch.allclose(project_crammer_singer(p.clone(), y, 0.7), p, atol=1e-13)  # idempotent
    # Obtuse angle: <v - p, q - p> <= 0 for any feasible q.
    q = project_crammer_singer(torch.randn(200, 7, dtype=torch.float64, generator=g), y, 0.7)
    assert float(((v - p) * (q - p)).sum(1).max()) <= 1e-10


def test_cnn_features_match_sklearn(digits, digits_cnn):
    from captum_dualxda._core.features import batch_features

    x, y, _, _ = digits
    phi = batch_features(digits_cnn, digits_cnn.fc, (x[:800],))
    yy = y[:800]
    C = 0.01
    res = fit_crammer_singer(phi, yy, C=C)
    w_sk, b_sk = sklearn_fit(phi.numpy(), yy.numpy(), C, True)
    rel = float((res.weight - w_sk).norm() / w_sk.norm())
    assert rel < 2e-3
    assert float((res.intercept - b_sk).abs().max()) < 2e-3 * float(w_sk.abs().max()) + 1e-4
    check_feasible(res.alpha, yy, C)
    assert 0 <= res.gap < 1e-4


def test_no_intercept_has_zero_intercept():
    x, y = clustered_features(n=200, d=8, k=3, seed=9)
    res = fit_crammer_singer(x, y, C=0.1, fit_intercept=False)
    assert torch.equal(res.intercept, torch.zeros(3, dtype=torch.float64))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(C=0.0), "`C`"),
        (dict(C=float("nan")), "`C`"),
        (dict(C=-1.0), "`C`"),
        (dict(tol=0.0), "`tol`"),
        (dict(max_iter=0), "`max_iter`"),
        (dict(intercept_scaling=0.0), "`intercept_scaling`"),
        (dict(backend="magic"), "`backend`"),
        (dict(backend="bdcd", block_size=0), "`block_size`"),
        (dict(backend="bdcd", block_size=2.5), "`block_size`"),
    ],
)
def test_bad_arguments(kwargs, match):
    x, y = clustered_features(n=50, d=4, k=3)
    with pytest.raises(ValueError, match=match):
        fit_crammer_singer(x, y, **kwargs)


def test_bad_data():
    x, y = clustered_features(n=50, d=4, k=3)
    with pytest.raises(ValueError, match="`labels`"):
        fit_crammer_singer(x, np.zeros(50, dtype=np.int64))
    with pytest.raises(ValueError, match="`labels`"):
        fit_crammer_singer(x, y - 1)
    with pytest.raises(ValueError, match="`labels`"):
        fit_crammer_singer(x, y, n_classes=2)
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fit_crammer_singer(bad, y)
    with pytest.raises(ValueError, match="empty"):
        fit_crammer_singer(np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
    with pytest.raises(ValueError, match="`labels`"):
        fit_crammer_singer(x, y[:10])


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_finiteness_check_names_the_bad_rows_and_accepts_sums_that_overflow():
    """NaN / inf anywhere (several row chunks) are found with their rows; finite features whose
    sum overflows float32 (the quick check's sum) are not refused; no NumPy warning leaks out."""
    from captum_dualxda._utils.chunking import all_finite, nonfinite_rows, row_chunk

    x = torch.zeros(3 * row_chunk(4) + 7, 4)
    assert nonfinite_rows(x) == [] and all_finite(x)
    x[-1, 3], x[-5, 0] = float("inf"), float("nan")
    n = x.shape[0]
    assert nonfinite_rows(x) == [n - 5, n - 1] and not all_finite(x)
    x[-1, 3] = -float("inf")
    x[-5, 0] = float("inf")  # inf + -inf: the sum is NaN, the check still finds both
    assert nonfinite_rows(x, limit=1) == [n - 5]
    huge = torch.full((10, 4), 3e38)  # finite, but their float32 sum is inf
    assert math.isinf(float(huge.sum())) and all_finite(huge) and nonfinite_rows(huge) == []
    with pytest.raises(ValueError, match=r"first bad rows: \[2\]"):
        make_problem(
            torch.cat([huge[:2], torch.full((1, 4), float("nan")), huge[2:]]), torch.arange(11) % 2, 1.0, True, 1.0
        )


def test_warm_start_reaches_the_same_optimum():
    x, y = clustered_features(n=200, d=12, k=3, seed=11)
    first = fit_crammer_singer(x, y, C=0.01, backend="bdcd")
    warm = fit_crammer_singer(x, y, C=0.05, backend="bdcd", warm_start=first)
    cold = fit_crammer_singer(x, y, C=0.05, backend="bdcd")
    assert float((warm.weight - cold.weight).norm() / cold.weight.norm()) < 2e-3
    with pytest.raises(ValueError, match="`warm_start`"):
        fit_crammer_singer(x[:100], y[:100], C=0.1, warm_start=first)


# ----------------------------------------------------------------------------- block solver
def _weight_bound(a, b):
    """Rigorous bound on ||W_a - W_b||_F of two solutions (docs/solver.md 1.5)."""
    return math.sqrt(2 * max(a.primal - a.dual, 0)) + math.sqrt(2 * max(b.primal - b.dual, 0))


def large_c_problem(n=240, seed=12):
    """Features with mean ||x||^2 = 100 (like a network's): C = 0.1 gives C ||x||^2 = 10, the
    regime of many bounded and free support vectors where coordinate descent needs many passes."""
    x, y = clustered_features(n=n, d=12, k=4, seed=seed)
    return x * 10.0, y


def test_accelerated_block_solver_same_optimum_in_fewer_passes():
    from captum_dualxda.solver import ConvergenceWarning

    x, y = large_c_problem(n=120, seed=13)
    C = 0.1
    fast = fit_crammer_singer(x, y, C=C, backend="bdcd")
    assert fast.converged and fast.residual <= 1e-4 and 0 <= fast.gap < 1e-4
    check_feasible(fast.alpha, torch.tensor(y), C)
    w_sk, b_sk = sklearn_fit(x, y, C, True)
    problem = make_problem(torch.tensor(x), torch.tensor(y), C, True, 1.0)
    p_sk = primal_objective(problem, w_sk, b_sk)
    bound = math.sqrt(2 * max(fast.primal - fast.dual, 0)) + math.sqrt(2 * max(p_sk - fast.dual, 0))
    w_fast = torch.cat([fast.weight, fast.intercept[:, None]], 1)
    assert float((w_fast - torch.cat([w_sk, b_sk[:, None]], 1)).norm()) <= bound * (1 + 1e-9)
    assert fast.stats["block_size"] == 120 and fast.stats["restarts"] >= 0
    # The acceleration is the point: without it three times the passes do not reach tol
    # (measured: 2,428 plain passes against 395; deterministic for the seed).
    with pytest.warns(ConvergenceWarning):
        plain = fit_crammer_singer(x, y, C=C, backend="bdcd", acceleration=False, max_iter=3 * fast.n_iter)
    assert not plain.converged and plain.residual > 1e-4


def test_accelerated_block_solver_reaches_the_tight_alpha():
    # The momentum must not stall short of the optimum: a tight solve agrees entry-wise with the
    # plain block solver's and the sequential solver's (features in general position: the optimal
    # alpha is unique). tol = 1e-8 is far above what float64 reaches here (below 1e-12, next
    # test), so the outcome does not depend on one CPU's or BLAS's rounding; max_iter bounds the
    # time of a failure (about 100-250 passes are needed).
    x, y = clustered_features(n=100, d=10, k=3, seed=6)
    x = x.astype(np.float64) * 10.0
    C = 0.01
    fast = fit_crammer_singer(x, y, C=C, tol=1e-8, backend="bdcd", block_size=16, max_iter=2000)
    plain = fit_crammer_singer(
        x, y, C=C, tol=1e-8, backend="bdcd", block_size=16, acceleration=False, seed=3, max_iter=2000
    )
    for result in (fast, plain):
        assert result.converged and result.residual <= 1e-8 and 0 <= result.gap < 1e-8
        check_feasible(result.alpha, torch.tensor(y), C)
    assert float((fast.alpha - plain.alpha).abs().max()) <= 1e-4 * C
    if "sequential" in BACKENDS:
        reference = fit_crammer_singer(x, y, C=C, tol=1e-9, backend="sequential")
        assert float((fast.alpha - reference.alpha).abs().max()) <= 1e-4 * C


@pytest.mark.parametrize("acceleration", [True, False])
def test_block_solver_reaches_residuals_far_below_the_square_root_of_epsilon(acceleration):
    # Near the optimum the line search's slope -<G, Delta> is about r^2 / A_i, while a plain dot
    # product rounds it by about u |G| |alpha| (the rows of Delta sum to zero only up to rounding,
    # and G has a common level of about 1). Computed that way, every step was rejected once the
    # residual r fell to about sqrt(u |G| A_i |alpha|) ~ 1e-8 and the solver stalled there (the
    # previous test then passed or failed with the CPU's rounding). Now float64 gets far below.
    x, y = clustered_features(n=100, d=10, k=3, seed=6)
    x = x.astype(np.float64) * 10.0
    C = 0.01
    result = fit_crammer_singer(
        x, y, C=C, tol=1e-10, backend="bdcd", block_size=16, acceleration=acceleration, max_iter=1000
    )
    assert result.converged and result.residual <= 1e-10  # about 1e-12 is reached (200 passes)
    check_feasible(result.alpha, torch.tensor(y), C)


def test_extrapolation_stays_feasible_and_projects_only_infeasible_rows():
    from captum_dualxda.solver.bdcd import _extrapolate

    g = torch.Generator().manual_seed(1)
    n, k, C = 50, 5, 0.3
    y = torch.randint(0, k, (n,), generator=g)
    current = project_crammer_singer(torch.randn(n, k, dtype=torch.float64, generator=g), y, C)
    previous = project_crammer_singer(torch.randn(n, k, dtype=torch.float64, generator=g), y, C)
    previous[:10] = current[:10] * 1.5  # rows 0..9: the extrapolation shrinks them, stays feasible
    beta = 0.6
    raw = current + beta * (current - previous)
    alpha, prev = current.clone(), previous.clone()
    _extrapolate(alpha, prev, y, C, beta)
    assert torch.equal(prev, current)
    check_feasible(alpha, y, C, rounding=1e-14)
    bound = torch.zeros(n, k, dtype=torch.float64)
    bound[torch.arange(n), y] = C
    infeasible = (raw > bound).any(1)
    assert 0 < int(infeasible.sum()) < n and not bool(infeasible[:10].any())
    assert torch.equal(alpha[~infeasible], raw[~infeasible])
    assert torch.allclose(alpha[infeasible], project_crammer_singer(raw[infeasible], y[infeasible], C), atol=0)


def test_block_solver_objective_never_increases_with_max_iter():
    # The returned point is an accepted one (never an extrapolated point whose epoch overshot),
    # so the dual objective of the result cannot get worse with more passes; the runs are
    # deterministic for the seed, so max_iter = m reproduces the first m passes of a longer run.
    import warnings as _warnings

    from captum_dualxda.solver import ConvergenceWarning

    x, y = large_c_problem(n=120, seed=13)
    duals = []
    with _warnings.catch_warnings():
        _warnings.simplefilter("ignore", ConvergenceWarning)
        for m in range(1, 13):
            res = fit_crammer_singer(x, y, C=0.1, backend="bdcd", block_size=40, max_iter=m)
            assert res.n_iter == m and not res.converged
            check_feasible(res.alpha, torch.tensor(y), 0.1)
            duals.append(res.dual)  # -f(alpha): must not decrease
    assert all(b >= a - 1e-12 * abs(a) for a, b in zip(duals, duals[1:]))
    assert duals[-1] > duals[0]


@pytest.mark.parametrize("order", [[1e-3, 1e-2, 0.1], [0.1, 1e-2, 1e-3]])
def test_block_solver_warm_start_path_matches_sklearn(order):
    from captum_dualxda.solver import fit_crammer_singer_path

    x, y = large_c_problem(n=160, seed=14)
    path = fit_crammer_singer_path(x, y, order, backend="bdcd")
    problem_x, problem_y = torch.tensor(x), torch.tensor(y)
    for C, res in zip(order, path):
        assert res.converged and res.C == C and res.backend == "bdcd"
        w_sk, b_sk = sklearn_fit(x, y, C, True)
        problem = make_problem(problem_x, problem_y, C, True, 1.0)
        p_sk = primal_objective(problem, w_sk, b_sk)
        bound = math.sqrt(2 * max(res.primal - res.dual, 0)) + math.sqrt(2 * max(p_sk - res.dual, 0))
        w_ours = torch.cat([res.weight, res.intercept[:, None]], 1)
        assert float((w_ours - torch.cat([w_sk, b_sk[:, None]], 1)).norm()) <= bound * (1 + 1e-9)


# ----------------------------------------------------------------------------- backend choice
def test_choose_backend_rule():
    from captum_dualxda.solver.fit import ACCELERATOR_MIN_WORK, choose_backend

    both = ("bdcd", "sequential")
    k = 100
    big_d = int(ACCELERATOR_MIN_WORK // k)  # (d + 1) K just above the threshold
    # CPU: the sequential method at every size and C when numba is there
    for n, d, C in [(100, 16, 1e-5), (10**6, 2048, 1.0)]:
        assert choose_backend("cpu", n, d, k, C, 100.0, both) == "sequential"
        assert choose_backend("cpu", n, d, k, C, 100.0, ("bdcd",)) == "bdcd"
    # accelerators: the crossover in the work per sample, whatever n and C
    for n, C in [(500, 1e-3), (1_281_167, 0.1)]:
        assert choose_backend("cuda", n, big_d, k, C, 100.0, both) == "bdcd"
        assert choose_backend("cuda", n, big_d - 2, k, C, 100.0, both) == "sequential"
    assert choose_backend("cuda", 10**6, 2048, 1000, 1e-3, 500.0, both) == "bdcd"  # ImageNet
    assert choose_backend("cuda", 50_000, 512, 10, 1e-3, 500.0, both) == "sequential"  # CIFAR-10
    assert choose_backend(torch.device("cuda", 0), 50_000, 512, 10, 1e-3, 1.0, ("bdcd",)) == "bdcd"
    assert choose_backend("mps", 100, 2048, 1000, 1e-3, 100.0, both) == "bdcd"


def test_auto_backend_follows_the_rule(monkeypatch):
    import captum_dualxda.solver.fit as fit_module

    x, y = clustered_features(n=120, d=8, k=3, seed=15)
    seen = []
    real = fit_module.choose_backend

    def spy(device, n, d, k, C, mean_squared_norm, available):
        seen.append((torch.device(device).type, n, d, k, C))
        return real(device, n, d, k, C, mean_squared_norm, available)

    monkeypatch.setattr(fit_module, "choose_backend", spy)
    res = fit_crammer_singer(x, y, C=0.02)
    assert seen == [("cpu", 120, 8, 3, 0.02)]
    assert res.backend == ("sequential" if "sequential" in BACKENDS else "bdcd")
    monkeypatch.setattr(fit_module, "choose_backend", lambda *args: "bdcd")
    assert fit_crammer_singer(x, y, C=0.02).backend == "bdcd"
