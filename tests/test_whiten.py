"""``DualDA(whiten=...)``: the SVM fitted and scored in ``phi T``, ``T = s (G + lambda I)^{-1/2}``.

Every score is checked against a brute-force NumPy construction of ``T`` (eigendecomposition of the
training features' second moment) and an independent solve on the NumPy-whitened features.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset
from whitening_reference import numpy_whitening
from zennit.composites import EpsilonPlusFlat

from captum_dualxda import XDA, DualDA, xda_pairs
from captum_dualxda._core.whitening import whiten_rows, whitening_matrix
from captum_dualxda.solver import fit_crammer_singer

N, D, H, K = 200, 6, 10, 3
C = 0.05


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g)
    y = torch.randint(0, K, (N,), generator=g)
    return x, y, torch.randn(9, D, generator=g), torch.randint(0, K, (9,), generator=g)


def make_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    # features with very different scales per direction: whitening changes the kernel a lot
    net = nn.Sequential(nn.Linear(D, H), nn.ReLU(), nn.Linear(H, K))
    with torch.no_grad():
        net[0].weight.mul_(torch.logspace(-1, 1, H)[:, None])
    return net


def features(net: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return net[1](net[0](x)).double().numpy()


@pytest.mark.parametrize("ratio", [1e-3, 0.1])
def test_whitened_scores_equal_the_brute_force_formula(data, ratio):
    x, y, xt, yt = data
    net = make_net()
    dualda = DualDA(net, net[2], TensorDataset(x, y), C=C, whiten=ratio, tol=1e-7)
    phi, phi_t = features(net, x), features(net, xt)
    t = numpy_whitening(phi, ratio)
    # the duals need not be unique; the SVM (primal) is: an independent solve on the NumPy-whitened
    # features has the same weights
    ref = fit_crammer_singer(torch.from_numpy(phi @ t).float(), y, C=C, n_classes=K, tol=1e-7)
    alpha = dualda.coefficients.double().numpy()
    np.testing.assert_allclose(
        alpha.T @ (phi @ t), ref.weight.double().numpy(), atol=1e-3 * np.abs(ref.weight.numpy()).max()
    )
    expected = (phi_t @ t @ t @ phi.T) * alpha[:, yt.numpy()].T
    scores = dualda.influence((xt, yt)).double().numpy()
    np.testing.assert_allclose(scores, expected, atol=1e-5 * np.abs(expected).max())
    assert np.abs(scores - (phi_t @ phi.T) * alpha[:, yt.numpy()].T).max() > 1e-2 * np.abs(expected).max()
    np.testing.assert_allclose(dualda.feature_transform.double().numpy(), t, rtol=1e-5, atol=1e-6 * np.abs(t).max())
    # the surrogate on phi: weight = W_T T, so phi @ weight.T is the whitened surrogate's score
    np.testing.assert_allclose(
        phi_t @ dualda.weight.double().numpy().T,
        (phi_t @ t) @ ref.weight.double().numpy().T,
        atol=1e-4 * np.abs(phi_t @ t @ ref.weight.double().numpy().T).max(),
    )
    # self-influence is the diagonal of the whitened influence on the training set
    diag = alpha[np.arange(N), y.numpy()] * np.sum((phi @ t) ** 2, 1)
    np.testing.assert_allclose(dualda.self_influence().double().numpy(), diag, atol=1e-5 * np.abs(diag).max())
    # top-k agrees with the dense scores
    top = dualda.influence((xt, yt), k=5)
    np.testing.assert_allclose(
        top.influence_scores.double().numpy(), -np.sort(-scores, 1)[:, :5], atol=1e-6 * np.abs(scores).max()
    )


def test_the_whitening_matrix_whitens_and_keeps_the_mean_squared_norm():
    g = torch.Generator().manual_seed(1)
    phi = torch.randn(500, 5, generator=g, dtype=torch.float64) * torch.tensor([0.01, 0.1, 1.0, 10.0, 100.0])
    t = whitening_matrix(phi, 1e-12)
    white = whiten_rows(phi, t).double()
    assert torch.allclose(t, t.T)
    assert float((white**2).sum(1).mean()) == pytest.approx(float((phi**2).sum(1).mean()), rel=1e-5)
    second = white.T @ white / len(white)
    scale = second.diagonal().mean()
    assert torch.allclose(second / scale, torch.eye(5, dtype=torch.float64), atol=1e-4)
    # a large ridge is (up to scale) no whitening at all
    t_big = whitening_matrix(phi, 1e9)
    assert torch.allclose(t_big / t_big[0, 0], torch.eye(5, dtype=torch.float64), atol=1e-6)


def test_the_cache_keeps_whitened_and_plain_fits_apart(tmp_path, data):
    x, y, xt, yt = data
    net = make_net()
    train = TensorDataset(x, y)
    plain = DualDA(net, net[2], train, C=C, cache_dir=str(tmp_path))
    white = DualDA(net, net[2], train, C=C, cache_dir=str(tmp_path), whiten=0.01)
    other = DualDA(net, net[2], train, C=C, cache_dir=str(tmp_path), whiten=0.1)
    assert len({plain.cache_path, white.cache_path, other.cache_path}) == 3
    assert not white.fit_stats["from_cache"] and not other.fit_stats["from_cache"]
    again = DualDA(net, net[2], train, C=C, cache_dir=str(tmp_path), whiten=0.01)
    assert again.fit_stats["from_cache"] and again.cache_path == white.cache_path
    assert torch.equal(again.feature_transform, white.feature_transform)
    assert torch.equal(again.influence((xt, yt)), white.influence((xt, yt)))
    assert plain.feature_transform is None
    assert "whiten=0.01" in repr(white) and "whiten" not in repr(plain)
    assert not torch.allclose(plain.influence((xt, yt)), white.influence((xt, yt)))
    plain_again = DualDA(net, net[2], train, C=C, cache_dir=str(tmp_path))
    assert plain_again.fit_stats["from_cache"] and plain_again.feature_transform is None


def test_a_whitened_checkpoint_ensemble_is_the_mean_of_whitened_fits(tmp_path, data):
    x, y, xt, yt = data
    train = TensorDataset(x, y)
    paths = []
    for seed in (0, 1):
        paths.append(str(tmp_path / f"ckpt{seed}.pt"))
        torch.save(make_net(seed).state_dict(), paths[-1])
    net = make_net(0)
    ensemble = DualDA(net, net[2], train, C=C, whiten=0.01, checkpoints=paths)
    singles = []
    for seed in (0, 1):
        member = make_net(seed)
        singles.append(DualDA(member, member[2], train, C=C, whiten=0.01).influence((xt, yt)))
    torch.testing.assert_close(ensemble.influence((xt, yt)), (singles[0] + singles[1]) / 2)


def test_whiten_is_validated_and_refused_where_unsupported(tmp_path, data):
    x, y, xt, yt = data
    net = make_net()
    train = TensorDataset(x, y)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError):
            DualDA(net, net[2], train, C=C, whiten=bad)
    with pytest.raises(ValueError, match="memory_budget"):
        DualDA(net, net[2], train, C=C, whiten=0.1, cache_dir=str(tmp_path), memory_budget=1)


@pytest.mark.parametrize("composite", [None, "epsilon"])
def test_whitened_xda_pairs_equal_a_numpy_reference_and_add_up_to_the_score(data, composite):
    """The relevance at the features is ``a_j phi(x) * (T T phi(x_j))`` (test side) and
    ``a_j phi(x_j) * (T T phi(x))`` (training side); each heatmap sums to the whitened score."""
    x, y, xt, yt = data
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(D, H, bias=False), nn.ReLU(), nn.Linear(H, K))  # bias-free: x * grad conserves
    with torch.no_grad():
        net[0].weight.mul_(torch.logspace(-1, 1, H)[:, None])
    dualda = DualDA(net, net[2], TensorDataset(x, y), C=C, whiten=0.01)
    rules = None if composite is None else EpsilonPlusFlat(zero_params="bias")
    idx = dualda.influence((xt, yt), k=3).indices
    pairs = xda_pairs(dualda, XDA(net, net[2], rules), xt, yt, idx)
    phi, phi_t = features(net, x), features(net, xt)
    t = numpy_whitening(phi, 0.01)
    alpha = dualda.coefficients.double().numpy()
    a = alpha[idx.numpy(), yt.numpy()[:, None]]  # (n_test, k)
    test_side = a[..., None] * phi_t[:, None, :] * (phi[idx.numpy()] @ t @ t)
    np.testing.assert_allclose(pairs.feature_relevance.double().numpy(), test_side, atol=1e-4 * np.abs(test_side).max())
    scores = dualda.influence((xt, yt)).gather(1, idx)
    torch.testing.assert_close(pairs.scores, scores, rtol=1e-4, atol=1e-6)
    assert not np.allclose(test_side.sum(-1), a * np.sum(phi_t[:, None, :] * phi[idx.numpy()], -1), rtol=1e-2)
    for heat in (pairs.train_relevance, pairs.test_relevance):
        torch.testing.assert_close(heat.flatten(2).sum(-1), pairs.scores, rtol=1e-3, atol=1e-6)
    # the training side's relevance at the features is a_j phi(x_j) * (T T phi(x)): one partner by hand
    i, m = 1, 2
    j = int(idx[i, m])
    partner = torch.from_numpy(a[i, m] * (phi_t[i] @ t @ t)).float()
    _, heat = XDA(net, net[2], rules)(x[j : j + 1], lambda f: f * partner)
    torch.testing.assert_close(heat[0], pairs.train_relevance[i, m], rtol=1e-4, atol=1e-6)


def test_label_issues_of_a_whitened_fit_rank_on_phi_itself(data):
    """``train_features`` keeps the raw ``phi`` (not ``phi T``), so ``rank_label_issues`` gives the
    same answer for a whitened and a plain fit of the same network: its surrogate is fitted on ``phi``."""
    from captum_dualxda import rank_label_issues

    x, y, _, _ = data
    net = make_net()
    plain = DualDA(net, net[2], TensorDataset(x, y), C=C, tol=1e-7)
    white = DualDA(net, net[2], TensorDataset(x, y), C=C, whiten=0.01, tol=1e-7)
    np.testing.assert_allclose(white.train_features.double().numpy(), features(net, x), rtol=1e-5, atol=1e-6)
    a, b = rank_label_issues(plain, C=0.01), rank_label_issues(white, C=0.01)
    torch.testing.assert_close(a.scores, b.scores)
    assert torch.equal(a.is_issue, b.is_issue)
