"""DualDA as a Captum DataInfluence: conventions, exact formulas, cache, errors."""

from __future__ import annotations

import os

import pytest
import torch
from captum.influence._utils.common import KMostInfluentialResults
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import captum_dualxda._core.cache as cache_module
from captum_dualxda import DualDA
from captum_dualxda._core.features import batch_features


@pytest.fixture(scope="module")
def setup(digits, digits_cnn):
    x, y, xt, yt = digits
    train = TensorDataset(x[:600], y[:600])
    dualda = DualDA(digits_cnn, "fc", train, C=0.01, batch_size=100)
    return dualda, train, xt[:25], digits_cnn


def test_attributes(setup):
    dualda, train, _, net = setup
    n, K = 600, 10
    assert dualda.coefficients.shape == (n, K) and dualda.coefficients.dtype == torch.float32
    assert dualda.support_indices.dtype == torch.long
    nonzero_rows = (dualda.coefficients != 0).any(1).nonzero().flatten()
    assert torch.equal(nonzero_rows, dualda.support_indices)
    assert dualda.sparsity == pytest.approx(1 - len(nonzero_rows) / n)
    assert 0 < dualda.sparsity < 1
    stats = dualda.fit_stats
    assert stats["n_support"] == len(nonzero_rows) and stats["converged"] and 0 <= stats["gap"] < 1e-4
    phi = batch_features(net, net.fc, (train.tensors[0],))
    assert torch.allclose(dualda.weight, dualda.coefficients.T @ phi, atol=1e-4, rtol=1e-4)
    assert dualda.weight.shape == (K, 32) and dualda.intercept.shape == (K,)
    # Hinge loss by brute force; samples with zero loss and zero margin slack are non-SVs or free.
    scores = phi.double() @ dualda.weight.double().T + dualda.intercept.double()
    y = train.tensors[1]
    brute = torch.stack(
        [max(1 - float(m == y[i]) + scores[i, m] for m in range(K)) - scores[i, y[i]] for i in range(n)]
    )
    assert torch.allclose(dualda.train_hinge_loss.double(), brute, atol=1e-4)
    assert float(dualda.train_hinge_loss.min()) >= 0


def test_scores_equal_brute_force_formula(setup):
    dualda, train, xt, net = setup
    pred = net(xt).argmax(1)
    scores = dualda.influence((xt, pred))
    assert scores.shape == (len(xt), 600)
    phi_train = batch_features(net, net.fc, (train.tensors[0],)).double()
    phi_test = batch_features(net, net.fc, (xt,)).double()
    a = dualda.coefficients.double()
    brute = torch.stack([a[:, c] * (phi_train @ phi_test[i]) for i, c in enumerate(pred.tolist())])
    assert torch.allclose(scores.double(), brute, rtol=1e-4, atol=1e-5)
    # Efficiency: scores over the training set sum to the surrogate logit without intercept.
    logits = (phi_test @ dualda.weight.double().T).gather(1, pred[:, None]).squeeze(1)
    assert torch.allclose(scores.double().sum(1), logits, rtol=1e-4, atol=1e-4)
    # Non-support vectors score exactly zero.
    off = torch.ones(600, dtype=torch.bool)
    off[dualda.support_indices] = False
    assert torch.all(scores[:, off] == 0)


def test_coefficients_give_scikit_learns_svm_and_every_target_class_scores(setup):
    dualda, train, xt, net = setup
    from sklearn.svm import LinearSVC

    phi = batch_features(net, net.fc, (train.tensors[0],))
    alpha = dualda.coefficients.double()
    # An independent reference: scikit-learn's LIBLINEAR solves the same primal; W = alpha^T phi
    # and the intercept (s = 1) = alpha.sum(0) must match its coef_ and intercept_.
    sk = LinearSVC(C=0.01, multi_class="crammer_singer", tol=1e-8, max_iter=1_000_000).fit(
        phi.double().numpy(), train.tensors[1].numpy()
    )
    coef, scale = torch.from_numpy(sk.coef_), float(abs(sk.coef_).max())
    assert float((alpha.T @ phi.double() - coef).abs().max()) <= 2e-3 * scale
    assert float((alpha.sum(0) - torch.from_numpy(sk.intercept_)).abs().max()) <= 2e-3 * scale
    assert float((dualda.weight.double() - coef).abs().max()) <= 2e-3 * scale
    # Every class as target (incl. classes a support vector has no coefficient for), repeated.
    targets = torch.arange(25) % 10
    scores = dualda.influence((xt, targets))
    phi_test = batch_features(net, net.fc, (xt,)).double()
    brute = (phi_test @ phi.double().T) * alpha.T[targets]
    assert torch.allclose(scores.double(), brute, rtol=1e-4, atol=1e-6)
    # Pair lookup without the dense matrix: support and non-support rows, every class.
    rows = torch.cat([dualda.support_indices[:20], torch.arange(600)[:20]])[:, None]
    assert torch.equal(dualda.coefficients_at(rows, torch.arange(10)), dualda.coefficients[rows, torch.arange(10)])
    with pytest.raises(ValueError, match="`indices`"):
        dualda.coefficients_at(torch.tensor([600]), torch.tensor([0]))
    with pytest.raises(ValueError, match="`classes`"):
        dualda.coefficients_at(torch.tensor([0]), torch.tensor([10]))


@pytest.mark.parametrize("proponents", [True, False])
def test_k_mode_agrees_with_argsort(setup, proponents):
    dualda, _, xt, net = setup
    pred = net(xt).argmax(1)
    scores = dualda.influence((xt, pred))
    k = 7
    top = dualda.influence((xt, pred), k=k, proponents=proponents)
    assert isinstance(top, KMostInfluentialResults)
    assert top.indices.shape == (len(xt), k) and top.indices.dtype == torch.long
    expected = torch.sort(scores, dim=1, descending=proponents).values[:, :k]
    assert torch.allclose(top.influence_scores, expected)
    assert torch.allclose(scores.gather(1, top.indices), top.influence_scores)
    if proponents:
        assert torch.all(top.influence_scores[:, :-1] >= top.influence_scores[:, 1:])
    else:
        assert torch.all(top.influence_scores[:, :-1] <= top.influence_scores[:, 1:])


def test_k_larger_than_train_is_clipped_and_fills_with_zeros(setup):
    dualda, _, xt, net = setup
    pred = net(xt[:2]).argmax(1)
    top = dualda.influence((xt[:2], pred), k=10_000)
    assert top.indices.shape == (2, 600)
    assert torch.equal(top.indices.sort(1).values, torch.arange(600).expand(2, 600))


def test_self_influence_is_the_diagonal(setup):
    dualda, train, _, _ = setup
    x, y = train.tensors
    si = dualda.self_influence()
    diag = torch.stack([dualda.influence((x[i : i + 1], y[i : i + 1]))[0, i] for i in range(0, 600, 37)])
    assert torch.allclose(si[::37], diag, rtol=1e-4, atol=1e-6)
    assert torch.equal(dualda.self_influence(train), si)
    assert torch.equal(dualda.self_influence(DataLoader(train, batch_size=33)), si)
    assert torch.all(si >= 0)
    with pytest.raises(ValueError, match="`inputs`"):
        dualda.self_influence(TensorDataset(x[:10], y[:10]))


def test_dataset_and_dataloader_agree_and_progress_changes_nothing(setup, digits_cnn):
    dualda, train, xt, net = setup
    other = DualDA(digits_cnn, digits_cnn.fc, DataLoader(train, batch_size=17), C=0.01, show_progress=True)
    quiet = DualDA(digits_cnn, digits_cnn.fc, DataLoader(train, batch_size=17), C=0.01)
    assert torch.equal(other.coefficients, quiet.coefficients)  # the progress bar changes nothing
    # other batch sizes change the features' last bits (the convolutions' blocking): the same
    # solution up to that rounding, not bit for bit
    assert torch.allclose(other.coefficients, dualda.coefficients, rtol=0, atol=1e-8)
    pred = net(xt).argmax(1)
    a = dualda.influence((xt, pred))
    b = other.influence(DataLoader(TensorDataset(xt, pred), batch_size=4), show_progress=True)
    assert torch.allclose(a, b, atol=1e-6)
    ka = dualda.influence((xt, pred), k=3)
    kb = dualda.influence((xt, pred), k=3, show_progress=True)
    assert torch.equal(ka.indices, kb.indices) and torch.equal(ka.influence_scores, kb.influence_scores)


def test_index_addresses_train_dataset(setup):
    dualda, train, xt, net = setup
    pred = net(xt[:3]).argmax(1)
    top = dualda.influence((xt[:3], pred), k=2)
    for i in range(3):
        for j, score in zip(top.indices[i].tolist(), top.influence_scores[i].tolist()):
            x_j, _ = train[j]
            (x_in,) = dualda.train_inputs([j])
            assert torch.equal(x_in[0], x_j)
            phi_j = batch_features(net, net.fc, (x_j[None],))[0]
            phi_i = batch_features(net, net.fc, (xt[i : i + 1],))[0]
            expected = dualda.coefficients[j, pred[i]] * (phi_j @ phi_i)
            assert score == pytest.approx(float(expected), rel=1e-4, abs=1e-6)


def test_model_mode_restored(digits, digits_cnn):
    x, y, xt, _ = digits
    digits_cnn.train()
    digits_cnn.features[1].eval()  # a frozen BatchNorm inside a model in train mode
    try:
        flags = [m.training for m in digits_cnn.modules()]
        before = {k: v.clone() for k, v in digits_cnn.state_dict().items()}
        dualda = DualDA(digits_cnn, "fc", TensorDataset(x[:200], y[:200]), C=0.1)
        dualda.influence((xt[:4], torch.zeros(4, dtype=torch.long)), k=3)
        assert [m.training for m in digits_cnn.modules()] == flags
        assert digits_cnn.training and not digits_cnn.features[1].training
        after = digits_cnn.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)  # BN stats untouched (eval mode)
    finally:
        digits_cnn.eval()


def test_cache_round_trip_and_stale_refit(tmp_path, digits, digits_cnn, monkeypatch):
    x, y, xt, _ = digits
    train = TensorDataset(x[:300], y[:300])
    first = DualDA(digits_cnn, "fc", train, C=0.02, cache_dir=str(tmp_path))
    assert not first.fit_stats["from_cache"] and os.path.exists(first.cache_path)
    second = DualDA(digits_cnn, "fc", train, C=0.02, cache_dir=str(tmp_path))
    assert second.fit_stats["from_cache"]
    assert torch.equal(second.coefficients, first.coefficients)
    pred = digits_cnn(xt[:5]).argmax(1)
    assert torch.equal(second.influence((xt[:5], pred)), first.influence((xt[:5], pred)))
    # Anything different refits: C, data, labels, weights.
    assert not DualDA(digits_cnn, "fc", train, C=0.03, cache_dir=str(tmp_path)).fit_stats["from_cache"]
    y2 = y[:300].clone()
    y2[0] = (y2[0] + 1) % 10
    assert not DualDA(digits_cnn, "fc", TensorDataset(x[:300], y2), C=0.02, cache_dir=str(tmp_path)).fit_stats[
        "from_cache"
    ]
    changed = DigitsCNNCopy(digits_cnn)
    with torch.no_grad():
        changed.fc.bias[0] += 1e-3
    assert not DualDA(changed, "fc", train, C=0.02, cache_dir=str(tmp_path)).fit_stats["from_cache"]


def DigitsCNNCopy(net):
    import copy

    return copy.deepcopy(net)


def test_interrupted_cache_write_leaves_nothing_that_loads(tmp_path, digits, digits_cnn, monkeypatch):
    x, y, _, _ = digits
    train = TensorDataset(x[:200], y[:200])
    real_save = torch.save

    def crashing_save(obj, stream, *args, **kwargs):
        real_save(obj, stream, *args, **kwargs)
        stream.flush()
        raise KeyboardInterrupt("simulated kill during write")

    monkeypatch.setattr(cache_module.torch, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        DualDA(digits_cnn, "fc", train, C=0.05, cache_dir=str(tmp_path))
    monkeypatch.setattr(cache_module.torch, "save", real_save)
    # Neither the final file nor the temporary one remains; only the (empty) lock file of the entry.
    left = os.listdir(tmp_path)
    assert all(name.endswith(".pt.lock") for name in left) and len(left) <= 1
    assert all(os.path.getsize(tmp_path / name) == 0 for name in left)
    fresh = DualDA(digits_cnn, "fc", train, C=0.05, cache_dir=str(tmp_path))
    assert not fresh.fit_stats["from_cache"]
    # A corrupt file at the final name (e.g. disk full elsewhere) is ignored with a warning.
    with open(fresh.cache_path, "wb") as stream:
        stream.write(b"not a torch file")
    with pytest.warns(UserWarning, match="unreadable"):
        again = DualDA(digits_cnn, "fc", train, C=0.05, cache_dir=str(tmp_path))
    assert not again.fit_stats["from_cache"]
    assert DualDA(digits_cnn, "fc", train, C=0.05, cache_dir=str(tmp_path)).fit_stats["from_cache"]


def test_bad_inputs(setup, digits, digits_cnn, tmp_path):
    dualda, train, xt, net = setup
    x, y, _, _ = digits
    small = TensorDataset(x[:50], y[:50])
    with pytest.raises(ValueError, match="`final_fc_layer`.*not a submodule"):
        DualDA(net, "nope", small)
    with pytest.raises(TypeError, match="`final_fc_layer` must be the final nn.Linear"):
        DualDA(net, "head.2", small)
    with pytest.raises(ValueError, match="`C`"):
        DualDA(net, "fc", small, C=0)
    with pytest.raises(ValueError, match="`C`"):
        DualDA(net, "fc", small, C=float("inf"))
    with pytest.raises(ValueError, match="empty"):
        DualDA(net, "fc", TensorDataset(x[:0], y[:0]))
    with pytest.raises(ValueError, match="labels must lie"):
        DualDA(net, "fc", TensorDataset(x[:50], y[:50] + 10))
    with pytest.raises(ValueError, match="at least 2"):
        DualDA(net, "fc", TensorDataset(x[:5], torch.zeros(5, dtype=torch.long)))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="`cache_dir`"):
        DualDA(net, "fc", small, cache_dir=str(blocker))
    nan_net = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.Linear(8, 10))
    with torch.no_grad():
        nan_net[1].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        DualDA(nan_net, "2", small)
    pred = net(xt[:4]).argmax(1)
    with pytest.raises(ValueError, match="`inputs` must be a tuple"):
        dualda.influence(xt[:4])
    with pytest.raises(ValueError, match="`inputs` must be a tuple"):
        dualda.influence((xt[:4],))
    with pytest.raises(ValueError, match="targets must lie"):
        dualda.influence((xt[:4], pred + 10))
    with pytest.raises(ValueError, match="`k`"):
        dualda.influence((xt[:4], pred), k=0)
    with pytest.raises(ValueError, match="samples but"):
        dualda.influence((xt[:4], pred[:2]))
    with pytest.raises(ValueError, match="`indices`"):
        dualda.train_inputs([600])


@pytest.mark.parametrize(
    "device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]
)
def test_device_argument_moves_tensors(device, digits_cnn, digits):
    x, y, xt, _ = digits
    train = TensorDataset(x[:200], y[:200])
    dd = DualDA(digits_cnn, "fc", train, C=0.05, device=device)
    default = DualDA(digits_cnn, "fc", train, C=0.05)
    assert dd.device == torch.device(device)
    assert dd.self_influence().device.type == device
    pred = digits_cnn(xt[:3]).argmax(1)
    scores = dd.influence((xt[:3], pred))
    assert scores.device.type == device and dd.influence((xt[:3], pred), k=2).indices.device.type == device
    assert torch.allclose(scores.cpu(), default.influence((xt[:3], pred)), atol=1e-5)
    # Targets as int32 or a list are accepted and give the same scores.
    assert torch.equal(dd.influence((xt[:3], pred.int())), scores)
    assert torch.equal(dd.influence((xt[:3], pred.tolist())), scores)


def test_an_inner_layer_is_refused_before_fitting(tmp_path):
    """A Linear layer whose outputs are not the class scores (an inner layer of the head) is refused:
    its input is not what the model classifies, and the SVM would learn the wrong classes."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3), nn.LogSoftmax(-1))
    data = TensorDataset(torch.randn(30, 4), torch.arange(30) % 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"`final_fc_layer` has 8 outputs .* logits of shape \(\d+, 3\)"):
        DualDA(model, model[0], data, cache_dir=str(tmp_path))
    assert not [p for p in tmp_path.iterdir() if p.suffix != ".lock"]  # nothing cached
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and not model._forward_pre_hooks
    # the right layer works, with log-probabilities as the output (shapes agree)
    dualda = DualDA(model, model[2], data, cache_dir=str(tmp_path))
    assert tuple(dualda.weight.shape) == (3, 8)
