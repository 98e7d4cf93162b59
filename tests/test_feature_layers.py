"""``DualDA(feature_layers=...)``: the inputs of earlier layers concatenated after ``phi``.

The reference builds the features by hand (torch forward hooks of this file's own, NumPy block
scaling, NumPy whitening) and solves them with the package's solver (and scikit-learn's
``LinearSVC(multi_class="crammer_singer")`` for the surrogate); every score is the brute-force
formula ``a_j^c psi(x_j)^T M psi(x)``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset
from whitening_reference import numpy_whitening

from captum_dualxda import DualDA
from captum_dualxda.solver import fit_crammer_singer

N, D, H1, H2, K = 150, 6, 12, 8, 3
C = 0.05
LAYERS = ["0", "2"]


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g)
    y = torch.randint(0, K, (N,), generator=g)
    return x, y, torch.randn(7, D, generator=g), torch.randint(0, K, (7,), generator=g)


def make_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(D, H1), nn.ReLU(), nn.Linear(H1, H2), nn.ReLU(), nn.Linear(H2, K))
    with torch.no_grad():
        net[0].weight.mul_(3.0)  # blocks of different scales: the scaling matters
    return net


def hand_blocks(net: nn.Module, x: torch.Tensor) -> list[np.ndarray]:
    """``[phi, input of net[0], input of net[2]]`` captured with hooks of this test's own."""
    seen: dict[int, torch.Tensor] = {}
    handles = [
        net[i].register_forward_pre_hook(lambda m, a, i=i: seen.__setitem__(i, a[0].detach())) for i in (0, 2, 4)
    ]
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in handles:
            h.remove()
    return [seen[i].double().numpy() for i in (4, 0, 2)]


def hand_psi(net: nn.Module, x_train: torch.Tensor, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """``psi`` of the training and test inputs, each extra block scaled to phi's mean squared norm."""
    train, test = hand_blocks(net, x_train), hand_blocks(net, x)
    ref = np.mean(np.sum(train[0] ** 2, 1))
    scales = [1.0] + [float(np.sqrt(ref / np.mean(np.sum(b**2, 1)))) for b in train[1:]]
    return (
        np.concatenate([b * s for b, s in zip(train, scales)], 1),
        np.concatenate([b * s for b, s in zip(test, scales)], 1),
        scales,
    )


def no_hooks(net: nn.Module) -> bool:
    return all(not m._forward_pre_hooks and not m._forward_hooks for m in net.modules())


@pytest.mark.parametrize("whiten", [None, 0.1])
def test_scores_equal_the_brute_force_formula_on_hand_made_features(data, whiten):
    x, y, xt, yt = data
    net = make_net()
    dualda = DualDA(net, net[4], TensorDataset(x, y), C=C, tol=1e-7, feature_layers=LAYERS, whiten=whiten)
    psi, psi_t, scales = hand_psi(net, x, xt)
    assert dualda.feature_layers == LAYERS and dualda.feature_widths == [H2, D, H1]
    np.testing.assert_allclose(dualda.feature_scale.double().numpy(), np.repeat(scales, [H2, D, H1]), rtol=1e-5)
    np.testing.assert_allclose(dualda.train_features.double().numpy(), psi, rtol=1e-5, atol=1e-6)
    t = np.eye(psi.shape[1]) if whiten is None else numpy_whitening(psi, whiten)
    # the duals need not be unique, the primal is: an independent solve on the hand-made features
    ref = fit_crammer_singer(torch.from_numpy(psi @ t).float(), y, C=C, n_classes=K, tol=1e-7)
    alpha = dualda.coefficients.double().numpy()
    w_ref = ref.weight.double().numpy()
    np.testing.assert_allclose(alpha.T @ (psi @ t), w_ref, atol=1e-3 * np.abs(w_ref).max())
    expected = (psi_t @ t @ t @ psi.T) * alpha[:, yt.numpy()].T
    scores = dualda.influence((xt, yt)).double().numpy()
    np.testing.assert_allclose(scores, expected, atol=1e-5 * np.abs(expected).max())
    # the surrogate's weights are on psi (W_T T when whitened)
    np.testing.assert_allclose(
        psi_t @ dualda.weight.double().numpy().T, psi_t @ t @ w_ref.T, atol=1e-3 * np.abs(psi_t @ t @ w_ref.T).max()
    )
    diag = alpha[np.arange(N), y.numpy()] * np.sum((psi @ t) ** 2, 1)
    np.testing.assert_allclose(dualda.self_influence().double().numpy(), diag, atol=1e-5 * np.abs(diag).max())
    top = dualda.influence((xt, yt), k=4)
    np.testing.assert_allclose(
        top.influence_scores.double().numpy(), -np.sort(-scores, 1)[:, :4], atol=1e-6 * np.abs(scores).max()
    )
    assert no_hooks(net)


def test_the_surrogate_agrees_with_scikit_learn_on_hand_made_features(data):
    from sklearn.svm import LinearSVC

    x, y, xt, _ = data
    net = make_net()
    dualda = DualDA(net, "4", TensorDataset(x, y), C=C, tol=1e-8, fit_intercept=False, feature_layers=LAYERS)
    psi, psi_t, _ = hand_psi(net, x, xt)
    svc = LinearSVC(multi_class="crammer_singer", C=C, fit_intercept=False, tol=1e-8, max_iter=100_000).fit(psi, y)
    np.testing.assert_allclose(dualda.weight.double().numpy(), svc.coef_, atol=2e-3 * np.abs(svc.coef_).max())
    assert np.mean((psi_t @ dualda.weight.double().numpy().T).argmax(1) == svc.predict(psi_t)) == 1.0


def test_layer_names_and_modules_give_the_same_fit(data):
    x, y, xt, yt = data
    net = make_net()
    a = DualDA(net, "4", TensorDataset(x, y), C=C, feature_layers=LAYERS)
    b = DualDA(net, net[4], TensorDataset(x, y), C=C, feature_layers=(net[0], net[2]))
    torch.testing.assert_close(a.influence((xt, yt)), b.influence((xt, yt)))
    assert "feature_layers=['0', '2']" in repr(a)


def test_the_cache_keeps_feature_layer_fits_apart(tmp_path, data):
    x, y, xt, yt = data
    net = make_net()
    train = TensorDataset(x, y)
    fits = {
        "plain": DualDA(net, "4", train, C=C, cache_dir=str(tmp_path)),
        "one": DualDA(net, "4", train, C=C, cache_dir=str(tmp_path), feature_layers=["2"]),
        "two": DualDA(net, "4", train, C=C, cache_dir=str(tmp_path), feature_layers=LAYERS),
        "swapped": DualDA(net, "4", train, C=C, cache_dir=str(tmp_path), feature_layers=["2", "0"]),
        "white": DualDA(net, "4", train, C=C, cache_dir=str(tmp_path), feature_layers=LAYERS, whiten=0.1),
    }
    assert len({f.cache_path for f in fits.values()}) == len(fits)
    assert not any(f.fit_stats["from_cache"] for f in fits.values())
    for name, layers, whiten in (("two", LAYERS, None), ("white", LAYERS, 0.1), ("one", ["2"], None)):
        again = DualDA(net, "4", train, C=C, cache_dir=str(tmp_path), feature_layers=layers, whiten=whiten)
        assert again.fit_stats["from_cache"] and again.cache_path == fits[name].cache_path
        assert again.feature_widths == fits[name].feature_widths
        assert torch.equal(again.feature_scale, fits[name].feature_scale)
        assert torch.equal(again.influence((xt, yt)), fits[name].influence((xt, yt)))
    assert fits["plain"].feature_layers is None and fits["plain"].feature_scale is None
    assert no_hooks(net)


def test_a_checkpoint_ensemble_is_the_mean_of_single_fits(tmp_path, data):
    x, y, xt, yt = data
    train = TensorDataset(x, y)
    paths = []
    for seed in (0, 1):
        paths.append(str(tmp_path / f"ckpt{seed}.pt"))
        torch.save(make_net(seed).state_dict(), paths[-1])
    net = make_net(0)
    ensemble = DualDA(net, "4", train, C=C, whiten=0.1, feature_layers=LAYERS, checkpoints=paths)
    singles = []
    for seed in (0, 1):
        member = make_net(seed)
        singles.append(DualDA(member, "4", train, C=C, whiten=0.1, feature_layers=LAYERS).influence((xt, yt)))
    torch.testing.assert_close(ensemble.influence((xt, yt)), (singles[0] + singles[1]) / 2)
    assert no_hooks(net)


def test_label_issues_and_fidelity_use_the_concatenated_features(data):
    from captum_dualxda import rank_label_issues
    from captum_dualxda.metrics import surrogate_fidelity

    x, y, xt, _ = data
    net = make_net()
    dualda = DualDA(net, "4", TensorDataset(x, y), C=C, feature_layers=LAYERS)
    psi, psi_t, _ = hand_psi(net, x, xt)
    issues = rank_label_issues(dualda, C=0.01, folds=1)
    ref = fit_crammer_singer(torch.from_numpy(psi).float(), y, C=0.01, n_classes=K)
    s = psi @ ref.weight.double().numpy().T + ref.intercept.double().numpy()
    s_y = s[np.arange(N), y.numpy()]
    s[np.arange(N), y.numpy()] = -np.inf
    margin = s.max(1) - s_y
    np.testing.assert_allclose(issues.scores.double().numpy()[np.argsort(issues.indices.numpy())], margin, atol=2e-3)
    fidelity = surrogate_fidelity(dualda, xt)
    sur = psi_t @ dualda.weight.double().numpy().T + dualda.intercept.double().numpy()
    with torch.no_grad():
        net_pred = net(xt).argmax(1).numpy()
    assert fidelity.agreement == pytest.approx(np.mean(sur.argmax(1) == net_pred))


class Counting(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y, self.reads = x, y, 0

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        self.reads += 1
        return self.x[i], self.y[i]


class After(nn.Module):
    """A model with a module after the final layer, one that is never run, one run twice, and one
    whose input is a tuple."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(D, H1)
        self.twice = nn.ReLU()
        self.unused = nn.Linear(H1, H1)
        self.pair = Pair()
        self.fc = nn.Linear(H1, K)
        self.post = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.twice(self.twice(self.body(x)))
        h = self.pair((h, h))
        return self.post(self.fc(h))


class Pair(nn.Module):
    def forward(self, pair):
        return pair[0]


@pytest.mark.parametrize(
    "layers, error, match",
    [
        (["nope"], ValueError, "not a submodule"),
        ([nn.Linear(2, 2)], ValueError, "not part of `model`"),
        (["fc"], ValueError, "final_fc_layer"),
        (["post"], ValueError, "after `final_fc_layer`"),
        (["unused"], ValueError, "did not run"),
        (["twice"], ValueError, "ran 2 times"),
        (["pair"], TypeError, "is a tuple, expected a tensor"),
        ("body", TypeError, "list or tuple"),
        ([], ValueError, "empty"),
        (["body", "body"], ValueError, "twice"),
        ([3], TypeError, "modules or dotted names"),
    ],
)
def test_bad_feature_layers_are_refused_before_the_fit(data, layers, error, match):
    x, y, _, _ = data
    model = After()
    train = Counting(x, y)
    with pytest.raises(error, match=match):
        DualDA(model, "fc", train, C=C, feature_layers=layers)
    assert train.reads <= 1  # refused on the first sample, before the extraction
    assert no_hooks(model)


def test_distributed_and_memory_budget_are_refused(tmp_path, data):
    x, y, _, _ = data
    net = make_net()
    with pytest.raises(ValueError, match="feature_layers.*memory_budget"):
        DualDA(net, "4", TensorDataset(x, y), C=C, feature_layers=LAYERS, cache_dir=str(tmp_path), memory_budget=1)
    with pytest.raises(ValueError, match="feature_layers.*distributed"):
        DualDA(net, "4", TensorDataset(x, y), C=C, feature_layers=LAYERS, distributed=True)


class TokenModel(nn.Module):
    """Dict inputs (Hugging Face style); ``mix`` sees ``(N, T, d)``, ``head`` the pooled ``(N, d)``."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.mix = nn.Linear(8, 8)
        self.head = nn.Linear(8, 8)
        self.fc = nn.Linear(8, K)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        h = self.mix(self.embed(input_ids)).mean(1)
        return self.fc(torch.relu(self.head(h)))


class DictData(Dataset):
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 20, (40, 5), generator=g)
        self.y = torch.randint(0, K, (40,), generator=g)

    def __len__(self) -> int:
        return 40

    def __getitem__(self, i: int):
        return {"input_ids": self.ids[i], "labels": self.y[i]}


def test_token_models_refuse_a_sequence_input_and_accept_a_pooled_one():
    model = TokenModel()
    with pytest.raises(ValueError, match="sequence"):
        DualDA(model, "fc", DictData(), C=C, feature_layers=["mix"])
    dualda = DualDA(model, "fc", DictData(), C=C, feature_layers=["head"])
    assert dualda.feature_widths == [8, 8]
    batch = {"input_ids": DictData().ids[:3], "labels": torch.zeros(3, dtype=torch.long)}
    assert dualda.influence(batch).shape == (3, 40)
    assert no_hooks(model)


def test_conv_inputs_are_flattened_per_sample():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, K))
    x = torch.randn(30, 1, 6, 6)
    y = torch.randint(0, K, (30,))
    dualda = DualDA(net, "3", TensorDataset(x, y), C=C, feature_layers=["0"])
    assert dualda.feature_widths == [32, 36]
    assert dualda.influence((x[:2], y[:2])).shape == (2, 30)


# ------------------------------------------------------------------------------------------
# XDA of fits with feature_layers
# ------------------------------------------------------------------------------------------
def bias_free_net(seed: int = 0) -> nn.Module:
    """Bias-free ReLU network: gradient times input conserves exactly."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(D, H1, bias=False), nn.ReLU(), nn.Linear(H1, H2, bias=False), nn.ReLU(), nn.Linear(H2, K)
    )


def composites():
    from zennit.composites import EpsilonPlusFlat

    return [None, EpsilonPlusFlat(zero_params="bias")]


@pytest.mark.parametrize("which", [0, 1])
def test_one_backward_pass_is_the_sum_of_one_pass_per_block(data, which):
    from captum_dualxda import XDA

    x = data[2][:4]
    net = bias_free_net()
    xda = XDA(net, "4", composites()[which], feature_layers=LAYERS)
    feats = xda.features(x)
    assert feats.shape == (4, H2 + D + H1)
    np.testing.assert_allclose(feats.double().numpy(), np.concatenate(hand_blocks(net, x), 1), rtol=1e-6)
    g = torch.Generator().manual_seed(3)
    relevance = feats * torch.randn(4, H2 + D + H1, generator=g)  # as XDA's: zero where the feature is
    _, full = xda(x, relevance)
    total = torch.zeros_like(full)
    edges = [0, H2, H2 + D, H2 + D + H1]
    for b in range(3):
        mask = torch.zeros(H2 + D + H1)
        mask[edges[b] : edges[b + 1]] = 1.0
        _, part = xda(x, relevance * mask)
        # each block's relevance arrives whole at the input (conserving rules, bias-free network)
        torch.testing.assert_close(part.sum(1), (relevance * mask).sum(1), rtol=1e-3, atol=1e-5)
        total += part
    torch.testing.assert_close(full, total, rtol=1e-4, atol=1e-6)
    # the input block starts at the input itself: its relevance is its own (times nothing)
    mask = torch.zeros(H2 + D + H1)
    mask[H2 : H2 + D] = 1.0
    _, part = xda(x, relevance * mask)
    torch.testing.assert_close(part, relevance[:, H2 : H2 + D], rtol=1e-5, atol=1e-6)
    assert no_hooks(net)


@pytest.mark.parametrize("whiten", [None, 0.1])
@pytest.mark.parametrize("which", [0, 1])
def test_xda_pairs_of_a_feature_layers_fit_add_up_to_its_scores(data, whiten, which):
    from captum_dualxda import XDA, xda_pairs

    x, y, xt, yt = data
    net = bias_free_net()
    dualda = DualDA(net, "4", TensorDataset(x, y), C=C, feature_layers=LAYERS, whiten=whiten)
    xda = XDA(net, "4", composites()[which], feature_layers=LAYERS)
    idx = dualda.influence((xt, yt), k=3).indices
    pairs = xda_pairs(dualda, xda, xt, yt, idx)
    torch.testing.assert_close(pairs.scores, dualda.influence((xt, yt)).gather(1, idx), rtol=1e-4, atol=1e-6)
    # the relevance at the features: NumPy reference a_j psi(x_i) * (M psi(x_j)) (unscaled features seen by XDA)
    psi, psi_t, _ = hand_psi(net, x, xt)
    m = np.eye(psi.shape[1]) if whiten is None else np.linalg.matrix_power(numpy_whitening(psi, whiten), 2)
    alpha = dualda.coefficients.double().numpy()
    a = alpha[idx.numpy(), yt.numpy()[:, None]]
    reference = a[..., None] * psi_t[:, None, :] * (psi[idx.numpy()] @ m)
    np.testing.assert_allclose(pairs.feature_relevance.double().numpy(), reference, atol=1e-4 * np.abs(reference).max())
    assert pairs.feature_relevance.shape[-1] == H2 + D + H1
    for heat in (pairs.train_relevance, pairs.test_relevance):
        torch.testing.assert_close(heat.flatten(2).sum(-1), pairs.scores, rtol=1e-3, atol=1e-6)
    assert no_hooks(net)


def test_xda_pairs_refuse_an_xda_on_other_features(data):
    from captum_dualxda import XDA, xda_pairs

    x, y, xt, yt = data
    net = bias_free_net()
    dualda = DualDA(net, "4", TensorDataset(x, y), C=C, feature_layers=LAYERS)
    idx = torch.zeros(len(xt), 1, dtype=torch.long)
    for xda in (XDA(net, "4"), XDA(net, "4", feature_layers=["2"])):
        with pytest.raises(ValueError, match="feature_layers=dualda.feature_layers"):
            xda_pairs(dualda, xda, xt, yt, idx)
    plain = DualDA(net, "4", TensorDataset(x, y), C=C)
    with pytest.raises(ValueError, match="feature_layers"):
        xda_pairs(plain, XDA(net, "4", feature_layers=LAYERS), xt, yt, idx)
    with pytest.raises(ValueError, match="tensor inputs only"):
        XDA(net, "4", feature_layers=LAYERS).features({"x": xt})


def test_xda_pairs_of_an_ensemble_are_the_mean_of_its_members(tmp_path, data):
    from captum_dualxda import XDA, xda_pairs

    x, y, xt, yt = data
    paths = []
    for seed in (0, 1):
        paths.append(str(tmp_path / f"ckpt{seed}.pt"))
        torch.save(bias_free_net(seed).state_dict(), paths[-1])
    net = bias_free_net(0)
    ensemble = DualDA(net, "4", TensorDataset(x, y), C=C, feature_layers=LAYERS, whiten=0.1, checkpoints=paths)
    idx = ensemble.influence((xt, yt), k=2).indices
    pairs = xda_pairs(ensemble, XDA(net, "4", feature_layers=LAYERS), xt, yt, idx)
    torch.testing.assert_close(pairs.scores, ensemble.influence((xt, yt)).gather(1, idx), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(pairs.test_relevance.flatten(2).sum(-1), pairs.scores, rtol=1e-3, atol=1e-6)
    assert no_hooks(net)


class Stream(torch.utils.data.IterableDataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __iter__(self):
        return iter(zip(self.x, self.y))


def test_a_stream_is_checked_while_extracted_and_cached(tmp_path, data):
    x, y, xt, yt = data
    net = make_net()
    ref = DualDA(net, "4", TensorDataset(x, y), C=C, feature_layers=LAYERS, whiten=0.1)
    stream = DualDA(net, "4", Stream(x, y), C=C, feature_layers=LAYERS, whiten=0.1, cache_dir=str(tmp_path))
    torch.testing.assert_close(stream.influence((xt, yt)), ref.influence((xt, yt)))
    again = DualDA(net, "4", Stream(x, y), C=C, feature_layers=LAYERS, whiten=0.1, cache_dir=str(tmp_path))
    assert again.fit_stats["from_cache"] and again.feature_widths == [H2, D, H1]
    torch.testing.assert_close(again.influence((xt, yt)), ref.influence((xt, yt)))
    with pytest.raises(ValueError, match="after `final_fc_layer`"):
        model = After()
        DualDA(model, "fc", Stream(x, y), C=C, feature_layers=["post"])
    assert no_hooks(net) and no_hooks(model)
