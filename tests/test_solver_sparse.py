"""Row-sparse dual variables: storage, restricted projection, and a sparse solve equal to dense."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import clustered_features
from test_solver import check_feasible, sklearn_fit

import captum_dualxda.solver.fit as fit_module
from captum_dualxda import DualDA
from captum_dualxda.solver import fit_crammer_singer, make_problem, primal_objective, project_crammer_singer
from captum_dualxda.solver.fit import clean_dust
from captum_dualxda.solver.gap import evaluate_optimality
from captum_dualxda.solver.problem import support_mask
from captum_dualxda.solver.sparse_dual import RowSparseDual, dual_rows, dual_to_dense


def random_sparse_rows(n=40, k=9, max_nnz=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    dense = torch.zeros(n, k, dtype=torch.float64)
    for i in range(n):
        count = int(torch.randint(0, max_nnz + 1, (1,), generator=g))
        cols = torch.randperm(k, generator=g)[:count]
        dense[i, cols] = torch.randn(count, generator=g, dtype=torch.float64)
    return dense


def test_round_trip_and_row_access():
    dense = random_sparse_rows()
    sparse = RowSparseDual.from_dense(dense, capacity=2)  # grows to the largest row count
    assert sparse.capacity >= int((dense != 0).sum(1).max())
    assert torch.equal(sparse.to_dense(), dense)
    assert torch.equal(sparse.row_nnz(), (dense != 0).sum(1))
    idx = torch.tensor([5, 0, 39, 5])
    assert torch.equal(sparse.rows(idx), dense[idx])
    assert torch.equal(dual_rows(sparse, slice(3, 11)), dense[3:11])
    assert sparse.shape == (40, 9) and sparse.nbytes() == 40 * sparse.capacity * 12
    assert torch.equal(sparse.scaled(0.5).to_dense(), dense * 0.5)


def test_set_rows_widens_storage_and_keeps_other_rows():
    sparse = RowSparseDual(5, 6, capacity=1)
    first = torch.tensor([[0.0, 2.0, 0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    sparse.set_rows(torch.tensor([1]), first)
    wide = torch.tensor([[1.0, 0.0, -3.0, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 7.0]], dtype=torch.float64)
    sparse.set_rows(torch.tensor([3, 4]), wide)
    assert sparse.capacity == 3
    expected = torch.zeros(5, 6, dtype=torch.float64)
    expected[1], expected[3:] = first[0], wide
    assert torch.equal(sparse.to_dense(), expected)
    # capacity never exceeds K
    full = torch.arange(1, 7, dtype=torch.float64)[None]
    sparse.set_rows(torch.tensor([0]), full)
    assert sparse.capacity == 6 and torch.equal(sparse.rows(torch.tensor([0])), full)


def test_bad_arguments():
    with pytest.raises(ValueError, match="`capacity`"):
        RowSparseDual(3, 4, capacity=5)
    with pytest.raises(ValueError, match="`n_classes`"):
        RowSparseDual(3, 0)
    with pytest.raises(ValueError, match="`dense`"):
        RowSparseDual.from_dense(torch.zeros(3))


def test_restricted_projection_equals_projection_of_the_subvector():
    g = torch.Generator().manual_seed(0)
    b, k, C = 60, 7, 0.7
    v = torch.randn(b, k, generator=g, dtype=torch.float64)
    y = torch.randint(0, k, (b,), generator=g)
    allowed = torch.rand(b, k, generator=g) < 0.5
    allowed[torch.arange(b), y] = True
    out = project_crammer_singer(v, y, C, allowed)
    assert bool((out[~allowed] == 0).all())
    for i in range(b):
        cols = allowed[i].nonzero().flatten()
        label = int((cols == y[i]).nonzero())
        sub = project_crammer_singer(v[i, cols][None], torch.tensor([label]), C)[0]
        assert torch.allclose(out[i, cols], sub, atol=1e-12)
    # all classes allowed: the plain projection
    assert torch.allclose(
        project_crammer_singer(v, y, C, torch.ones(b, k, dtype=torch.bool)), project_crammer_singer(v, y, C)
    )


def test_measures_agree_on_both_layouts():
    x, y = clustered_features(n=300, d=12, k=5, seed=4)
    dense = fit_crammer_singer(torch.tensor(x), torch.tensor(y), C=0.2, backend="bdcd", sparse_alpha=False).alpha
    sparse = RowSparseDual.from_dense(dense)
    problem = make_problem(torch.tensor(x), torch.tensor(y), 0.2, True, 1.0)
    a, b = evaluate_optimality(problem, dense), evaluate_optimality(problem, sparse)
    assert torch.allclose(a.weight, b.weight, atol=1e-13) and math.isclose(a.gap, b.gap, rel_tol=1e-9, abs_tol=1e-12)
    assert a.residual == pytest.approx(b.residual, abs=1e-13)
    assert torch.equal(support_mask(dense, 0.2), support_mask(sparse, 0.2))
    noisy = dense.clone()
    noisy[noisy != 0] += 1e-14
    assert torch.equal(
        clean_dust(noisy.clone(), problem.labels, 0.2),
        clean_dust(RowSparseDual.from_dense(noisy), problem.labels, 0.2).to_dense(),
    )


@pytest.mark.parametrize("capacity", [None, 1])
def test_sparse_solve_matches_sklearn_and_dense(capacity):
    x, y = clustered_features(n=250, d=20, k=6, seed=1)
    C = 0.05
    options = {} if capacity is None else {"capacity": capacity}
    sparse = fit_crammer_singer(
        torch.tensor(x), torch.tensor(y), C=C, backend="bdcd", sparse_alpha=True, tol=1e-6, **options
    )
    dense = fit_crammer_singer(torch.tensor(x), torch.tensor(y), C=C, backend="bdcd", sparse_alpha=False, tol=1e-6)
    assert isinstance(sparse.alpha, RowSparseDual) and isinstance(dense.alpha, torch.Tensor)
    assert sparse.converged and sparse.residual <= 1e-6
    alpha = sparse.alpha.to_dense()
    check_feasible(alpha, torch.tensor(y), C)
    # the unique optimum W: both within sqrt(2 gap) of it
    bound = math.sqrt(2 * (sparse.primal - sparse.dual)) + math.sqrt(2 * (dense.primal - dense.dual))
    assert float((sparse.weight - dense.weight).norm()) <= bound + 1e-12
    w_sk, b_sk = sklearn_fit(x, y, C, True, tol=1e-6)
    w_ref = torch.cat([w_sk, b_sk[:, None]], 1)
    w_ours = torch.cat([sparse.weight, sparse.intercept[:, None]], 1)
    assert float((w_ours - w_ref).norm()) / float(w_ref.norm()) < 1e-3
    problem = make_problem(torch.tensor(x), torch.tensor(y), C, True, 1.0)
    assert primal_objective(problem, sparse.weight, sparse.intercept) == pytest.approx(sparse.primal, rel=1e-9)
    if capacity == 1:  # started with one slot per row: widened, never beyond K
        assert 1 < sparse.alpha.capacity <= 6


def test_sparse_warm_start_and_sequential_compression():
    x, y = clustered_features(n=200, d=10, k=4, seed=2)
    first = fit_crammer_singer(torch.tensor(x), torch.tensor(y), C=0.1, backend="bdcd", sparse_alpha=True)
    second = fit_crammer_singer(
        torch.tensor(x), torch.tensor(y), C=0.05, backend="bdcd", warm_start=first, sparse_alpha=True
    )
    cold = fit_crammer_singer(torch.tensor(x), torch.tensor(y), C=0.05, backend="bdcd", sparse_alpha=False)
    assert second.converged
    assert (
        float((second.weight - cold.weight).norm())
        <= math.sqrt(2 * (second.primal - second.dual)) + math.sqrt(2 * (cold.primal - cold.dual)) + 1e-12
    )
    if "sequential" in fit_module.available_backends():
        seq = fit_crammer_singer(
            torch.tensor(x), torch.tensor(y), C=0.05, backend="sequential", sparse_alpha=True, warm_start=first
        )
        dense = fit_crammer_singer(torch.tensor(x), torch.tensor(y), C=0.05, backend="sequential", seed=3)
        assert isinstance(seq.alpha, RowSparseDual)
        check_feasible(seq.alpha.to_dense(), torch.tensor(y), 0.05)
        assert float((seq.weight - dense.weight).norm()) < 1e-2 * float(dense.weight.norm())


def test_auto_switches_to_sparse_above_the_threshold(monkeypatch):
    x, y = clustered_features(n=120, d=8, k=3, seed=5)
    small = fit_crammer_singer(torch.tensor(x), torch.tensor(y), C=0.1, backend="bdcd")
    assert isinstance(small.alpha, torch.Tensor)
    monkeypatch.setattr(fit_module, "SPARSE_ALPHA_ENTRIES", 100)
    big = fit_crammer_singer(torch.tensor(x), torch.tensor(y), C=0.1, backend="bdcd")
    assert isinstance(big.alpha, RowSparseDual)
    assert torch.equal(big.support_indices, torch.nonzero(dual_to_dense(big.alpha).abs().amax(1) > 1e-9).flatten())


def test_dualda_with_sparse_dual_equals_dense(monkeypatch):
    torch.manual_seed(0)
    x = torch.randn(150, 6)
    y = (x[:, :3].argmax(1) + (torch.rand(150) < 0.1).long()) % 3
    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    data = torch.utils.data.TensorDataset(x, y)
    dense = DualDA(net, "2", data, C=0.05, backend="bdcd", tol=1e-6)
    monkeypatch.setattr(fit_module, "SPARSE_ALPHA_ENTRIES", 10)
    sparse = DualDA(net, "2", data, C=0.05, backend="bdcd", tol=1e-6)
    assert torch.equal(sparse.support_indices, dense.support_indices)
    assert torch.allclose(sparse.coefficients, dense.coefficients, atol=1e-6)
    assert torch.allclose(sparse.self_influence(), dense.self_influence(), atol=1e-5)
    test = (x[:7], net(x[:7]).argmax(1))
    assert torch.allclose(sparse.influence(test), dense.influence(test), atol=1e-5)
