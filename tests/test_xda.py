"""XDA: the Zennit attributor from the feature layer to the input, and its pairing with DualDA.

Conservation tolerances. With conserving rules and biases excluded (``zero_params="bias"``)
relevance is conserved layer by layer up to the stabilisers in the denominators: every rule
divides by ``z + eps * sign(z)`` (``epsilon = stabilizer = 1e-6`` by default), which loses a
fraction ``~eps / |z|`` per neuron. Measured on the models below (float32 and float64 alike):
MLP <= 1e-4, conv+BN <= 1e-5, ResNet-18 <= 2e-5 relative to ``|tau|``; it is NOT float32
rounding (float64 gives the same numbers). Hence ``rtol=1e-3`` for the default composites.
With ``epsilon = stabilizer = 1e-12`` in float64 the error drops to ~1e-11, which the float64
tests check with ``rtol=1e-8``.
"""

from __future__ import annotations

import pytest
import torch
from conftest import train_classifier
from torch import nn
from torch.utils.data import TensorDataset
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import COMPOSITES, EpsilonGammaBox, EpsilonPlus, EpsilonPlusFlat

from captum_dualxda.dualda import DualDA
from captum_dualxda.xda import XDA, XDAPairs, xda_pairs

RTOL = 1e-3


# ------------------------------------------------------------------------------------------
# Models and helpers
# ------------------------------------------------------------------------------------------
def make_mlp(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 15), nn.ReLU(), nn.Linear(15, 3)).to(dtype)


def randomize_batch_norm(model, seed=0):
    """Non-trivial running statistics and affine parameters, so merged biases are non-zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
                module.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                module.weight.copy_(torch.rand(n, generator=g) + 0.5)
                module.bias.copy_(torch.randn(n, generator=g) * 0.3)
    return model


def make_conv_bn(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, 4),
    ).to(dtype)
    return randomize_batch_norm(net, seed)


class TinyDigitNet(nn.Module):
    """8x8 digits: conv + BN + ReLU + max-pool, features = the flattened 8x4x4 maps (128-d)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten()
        )
        self.fc = nn.Linear(128, 10)

    def forward(self, x):
        return self.fc(self.body(x))


def tau_from(phi, partner):
    return (phi * partner).sum(1)


def assert_close_rel(heat_sum, tau, rtol):
    err = ((heat_sum - tau).abs() / tau.abs()).max().item()
    assert err < rtol, f"relative conservation error {err:.2e} >= {rtol:.0e}"


def hook_counts(model):
    counts = {}
    for name, module in model.named_modules():
        for attr, value in vars(module).items():
            if "hooks" in attr and isinstance(value, dict):
                counts[(name, attr)] = len(value)
    return counts


class Snapshot:
    """Everything that must be identical after an XDA pass."""

    def __init__(self, model):
        self.model = model
        self.state = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}
        self.param_ids = {n: id(p) for n, p in model.named_parameters()}
        self.requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
        self.training = {n: m.training for n, m in model.named_modules()}
        self.hooks = hook_counts(model)
        self.modules = [n for n, _ in model.named_modules()]

    def check(self):
        model = self.model
        state = model.state_dict(keep_vars=True)
        assert state.keys() == self.state.keys()
        for key, value in self.state.items():
            assert state[key].dtype == value.dtype and torch.equal(state[key].detach(), value), key
        assert {n: id(p) for n, p in model.named_parameters()} == self.param_ids
        assert {n: p.requires_grad for n, p in model.named_parameters()} == self.requires_grad
        assert {n: m.training for n, m in model.named_modules()} == self.training
        assert hook_counts(model) == self.hooks
        assert all(count == 0 for count in self.hooks.values())
        assert [n for n, _ in model.named_modules()] == self.modules
        for module in model.modules():  # no attribute shadows a parameter or buffer
            for name in list(module._parameters) + list(module._buffers):
                assert name not in vars(module), name


# ------------------------------------------------------------------------------------------
# The attributor on its own
# ------------------------------------------------------------------------------------------
def test_mlp_conservation_and_shapes():
    model = make_mlp()
    x = torch.randn(6, 10)
    partner = torch.rand(6, 15) * torch.tensor([1.0, -1.0, 2.0, -0.5, 1.0, 3.0])[:, None]
    xda = XDA(model, "4", EpsilonPlusFlat(zero_params="bias"))
    phi, rel = xda(x, lambda p: p * partner)
    assert phi.shape == (6, 15) and rel.shape == x.shape
    assert not phi.requires_grad and not rel.requires_grad
    assert torch.equal(phi, torch.relu(model[2](torch.relu(model[0](x)))).detach())
    assert_close_rel(rel.flatten(1).sum(1), tau_from(phi, partner), RTOL)
    # the caller's tensor is untouched
    assert not x.requires_grad and x.grad is None


def test_mlp_float64_tight_conservation():
    model = make_mlp(torch.float64)
    x = torch.randn(6, 10, dtype=torch.float64)
    partner = torch.randn(6, 15, dtype=torch.float64)
    xda = XDA(model, model[4], EpsilonPlusFlat(epsilon=1e-12, stabilizer=1e-12, zero_params="bias"))
    phi, rel = xda(x, lambda p: p * partner)
    assert rel.dtype == torch.float64
    assert_close_rel(rel.flatten(1).sum(1), tau_from(phi, partner), 1e-8)


def test_conv_batchnorm_conservation_and_model_unchanged():
    model = make_conv_bn()
    model.train()
    model[5].eval()  # mixed modes must survive
    model[0].weight.requires_grad_(False)
    snap = Snapshot(model)
    x = torch.randn(5, 3, 8, 8)
    partner = torch.rand(5, 32) - 0.3
    composite = EpsilonPlusFlat(zero_params="bias", canonizers=[SequentialMergeBatchNorm()])
    xda = XDA(model, model[9], composite)
    phi, rel = xda(x, lambda p: p * partner)
    snap.check()
    assert rel.shape == x.shape
    # features are the eval-mode features (running statistics), not batch statistics
    ref = xda.features(x)
    assert torch.allclose(phi, ref, rtol=1e-4, atol=1e-4)  # merged BN: rounding only
    assert_close_rel(rel.flatten(1).sum(1), tau_from(phi, partner), RTOL)
    snap.check()


def test_float64_conv_tight_conservation():
    model = make_conv_bn(torch.float64)
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    partner = torch.rand(3, 32, dtype=torch.float64)
    composite = EpsilonPlusFlat(
        epsilon=1e-12, stabilizer=1e-12, zero_params="bias", canonizers=[SequentialMergeBatchNorm()]
    )
    phi, rel = XDA(model, "9", composite)(x, lambda p: p * partner)
    assert_close_rel(rel.flatten(1).sum(1), tau_from(phi, partner), 1e-8)


def test_resnet18_conservation_and_model_unchanged():
    torchvision = pytest.importorskip("torchvision")
    from zennit.torchvision import ResNetCanonizer

    torch.manual_seed(0)
    model = randomize_batch_norm(torchvision.models.resnet18(weights=None, num_classes=5))
    model.eval()
    snap = Snapshot(model)
    x = torch.randn(2, 3, 32, 32)
    partner = torch.rand(2, 512) * torch.tensor([[1.0], [-1.0]])
    xda = XDA(model, "fc", EpsilonPlusFlat(zero_params="bias", canonizers=[ResNetCanonizer()]))
    phi, rel = xda(x, lambda p: p * partner)
    snap.check()
    assert phi.shape == (2, 512) and rel.shape == x.shape
    tau = tau_from(phi, partner)
    assert tau[0] > 0 > tau[1]
    assert_close_rel(rel.flatten(1).sum(1), tau, RTOL)


@pytest.mark.parametrize("name", sorted(COMPOSITES))
def test_every_builtin_composite_runs(name):
    model = make_conv_bn()
    snap = Snapshot(model)
    kwargs = {"low": -3.0, "high": 3.0} if COMPOSITES[name] is EpsilonGammaBox else {}
    composite = COMPOSITES[name](canonizers=[SequentialMergeBatchNorm()], **kwargs)
    x = torch.randn(2, 3, 8, 8)
    phi, rel = XDA(model, "9", composite)(x, lambda p: p * p)
    assert rel.shape == x.shape and torch.isfinite(rel).all() and rel.abs().sum() > 0
    assert phi.shape == (2, 32)
    snap.check()
    assert not composite.handles


@pytest.mark.parametrize("zero_params", [None, "bias"])
def test_matches_hand_written_lrp_epsilon(zero_params):
    """Two-layer MLP, relevance at the input of fc propagated by LRP-epsilon by hand."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    x = torch.randn(4, 6, dtype=torch.float64)
    partner = torch.randn(4, 8, dtype=torch.float64)
    eps = 0.25
    xda = XDA(model, "2", EpsilonPlus(epsilon=eps, zero_params=zero_params))
    phi, rel = xda(x, lambda p: p * partner)

    w, b = model[0].weight.detach(), model[0].bias.detach()
    z_full = x @ w.T + b
    h = torch.relu(z_full)
    r_h = h * partner  # XDA relevance at the feature layer
    z = x @ w.T + (b if zero_params is None else 0.0)  # the rule's pre-activation
    stab = z + eps * (z.sign() + (z == 0).to(z))  # zennit's sign convention: +eps at 0
    expected = x * ((r_h / stab) @ w)
    assert torch.allclose(phi, h)
    assert torch.allclose(rel, expected, rtol=1e-10, atol=1e-12)


def test_without_composite_is_gradient_times_input():
    """``composite=None``: x * d(phi . p)/dx for the pair relevance phi * p; it sums to tau without biases."""
    model = make_mlp(torch.float64)
    x = torch.randn(3, 10, dtype=torch.float64)
    partner = torch.randn(3, 15, dtype=torch.float64)
    phi, rel = XDA(model, "4")(x, lambda phi: phi * partner)
    xr = x.clone().requires_grad_(True)
    feats = torch.relu(model[2](torch.relu(model[0](xr))))
    (grad,) = torch.autograd.grad((feats * partner).sum(), xr)
    assert torch.allclose(rel, x * grad)
    with torch.no_grad():
        for layer in (model[0], model[2]):
            layer.bias.zero_()
    phi, rel = XDA(model, "4")(x, lambda phi: phi * partner)
    assert torch.allclose(rel.sum(1), (phi * partner).sum(1))  # Euler: the network is 1-homogeneous


def test_attr_output_semantics():
    model = make_mlp()
    x = torch.randn(4, 10)
    const = torch.rand(4, 15)
    default = XDA(model, "4", EpsilonPlusFlat(zero_params="bias"))
    phi, rel_id = default(x)  # None = identity: relevance phi
    assert_close_rel(rel_id.sum(1), phi.sum(1), RTOL)
    # tensor = constant; callable of phi; constructor default overridden at call time
    _, rel_const = default(x, const)
    _, rel_call = default(x, lambda p: const)
    assert torch.allclose(rel_const, rel_call)
    with_default = XDA(model, "4", EpsilonPlusFlat(zero_params="bias"), attr_output=const)
    assert torch.allclose(with_default(x)[1], rel_const)
    assert torch.allclose(with_default(x, lambda p: p)[1], rel_id)
    # a (d,) tensor broadcasts over the batch
    _, rel_b = default(x, const[0])
    _, rel_b2 = default(x, const[0].expand(4, 15))
    assert torch.allclose(rel_b, rel_b2)


def test_context_manager_registers_once_and_no_grad_works():
    model = make_conv_bn()
    model.train()
    snap = Snapshot(model)
    composite = EpsilonPlusFlat(zero_params="bias", canonizers=[SequentialMergeBatchNorm()])
    calls = []
    original = composite.register
    composite.register = lambda module: (calls.append(module), original(module))[1]
    xda = XDA(model, "9", composite)
    xs = [torch.randn(2, 3, 8, 8) for _ in range(3)]
    bare = [xda(x, lambda p: p * 2.0)[1] for x in xs]
    assert len(calls) == 3 and not composite.handles
    snap.check()
    with xda:
        assert composite.handles
        assert not model.training  # eval inside the block (canonizers need running statistics)
        inside = [xda(x, lambda p: p * 2.0)[1] for x in xs]
        with torch.no_grad():
            in_no_grad = xda(xs[0], lambda p: p * 2.0)[1]
    assert len(calls) == 4 and not composite.handles
    snap.check()
    for a, b in zip(bare, inside):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
    assert torch.allclose(in_no_grad, bare[0], rtol=1e-5, atol=1e-7)
    with torch.no_grad():
        phi, rel = xda(xs[1], lambda p: p * 2.0)
    assert torch.allclose(rel, bare[1], rtol=1e-5, atol=1e-7) and rel.abs().sum() > 0
    snap.check()


def test_model_restored_after_errors():
    model = make_conv_bn()
    model.train()
    snap = Snapshot(model)
    xda = XDA(model, "9", EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()]))

    def broken(phi):
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        xda(torch.randn(2, 3, 8, 8), broken)
    snap.check()
    with pytest.raises(ValueError, match="attr_output"):
        xda(torch.randn(2, 3, 8, 8), torch.ones(3, 7))
    snap.check()
    with pytest.raises(RuntimeError), xda:
        raise RuntimeError("inside")
    snap.check()


# ------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------
class UnusedHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 3)
        self.fc = nn.Linear(3, 2)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.body(x)


def test_feature_layer_errors():
    model = make_mlp()
    with pytest.raises(ValueError, match="final_fc_layer"):
        XDA(model, "classifier")
    with pytest.raises(TypeError, match="final_fc_layer"):
        XDA(model, "3")  # a ReLU
    with pytest.raises(ValueError, match="final_fc_layer"):
        XDA(model, nn.Linear(15, 3))  # not part of the model
    unused = UnusedHead()
    snap = Snapshot(unused)
    with pytest.raises(RuntimeError, match="final_fc_layer"):
        XDA(unused, "fc", EpsilonPlusFlat())(torch.randn(2, 4))
    snap.check()
    with pytest.raises(TypeError, match="input"):
        XDA(model, "4")(torch.zeros(2, 10, dtype=torch.long))
    with pytest.raises(TypeError, match="composite"):
        XDA(model, "4", composite="epsilon_plus")


def test_composite_registered_to_another_model():
    a, b = make_mlp(seed=0), make_mlp(seed=1)
    composite = EpsilonPlusFlat(zero_params="bias")
    composite.register(a)
    try:
        xda = XDA(b, "4", composite)
        with pytest.raises(ValueError, match="composite"):
            xda(torch.randn(2, 10))
        with pytest.raises(ValueError, match="composite"), xda:
            pass
        assert composite.handles  # still registered to `a`, untouched
        # registered to the same model: fine
        same = XDA(a, "4", composite)
        phi, rel = same(torch.randn(2, 10), lambda p: p)
        assert rel.shape == (2, 10)
    finally:
        composite.remove()
    assert hook_counts(a) == hook_counts(make_mlp())


# ------------------------------------------------------------------------------------------
# Pairing with DualDA
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dual_setup(digits):
    x_train, y_train, x_test, _ = digits
    x_train, y_train = x_train[:300], y_train[:300]
    torch.manual_seed(0)
    net = train_classifier(TinyDigitNet(), x_train, y_train, epochs=3, lr=1e-2, batch_size=50)
    dualda = DualDA(net, "fc", TensorDataset(x_train, y_train), C=1e-2)
    x = x_test[:3]
    with torch.no_grad():
        targets = net(x).argmax(1)
    composite = EpsilonPlusFlat(zero_params="bias", canonizers=[SequentialMergeBatchNorm()])
    xda = XDA(net, "fc", composite)
    return dualda, xda, x, targets


def test_pairs_scores_and_conservation(dual_setup):
    dualda, xda, x, targets = dual_setup
    snap = Snapshot(dualda.model)
    k = 4
    top = dualda.influence((x, targets), k=k, proponents=True)
    bottom = dualda.influence((x, targets), k=k, proponents=False)
    idx = torch.cat([top.indices, bottom.indices], dim=1)
    res = xda_pairs(dualda, xda, x, targets, idx)
    snap.check()
    assert isinstance(res, XDAPairs)
    assert res.scores.shape == (3, 2 * k)
    assert res.train_relevance.shape == (3, 2 * k, 1, 8, 8)
    assert res.test_relevance.shape == (3, 2 * k, 1, 8, 8)
    assert res.feature_relevance.shape == (3, 2 * k, 128)
    assert torch.equal(res.train_indices, idx) and torch.equal(res.targets, targets)
    # the scores agree with DualDA
    full = dualda.influence((x, targets))
    assert torch.allclose(res.scores, full.gather(1, idx).to(res.scores.dtype), rtol=1e-4, atol=1e-6)
    assert torch.allclose(res.scores[:, :k], top.influence_scores, rtol=1e-4, atol=1e-6)
    assert torch.allclose(res.feature_relevance.sum(-1), res.scores, rtol=1e-5, atol=1e-7)
    # coefficients are a_j^{c_i}
    assert torch.equal(res.coefficients, dualda.coefficients[idx, targets[:, None]].to(res.coefficients.dtype))
    # each heatmap sums to tau; signs follow tau
    for heat in (res.train_relevance, res.test_relevance):
        sums = heat.flatten(2).sum(-1)
        nonzero = res.scores.abs() > 1e-6
        assert_close_rel(sums[nonzero], res.scores[nonzero], RTOL)
        assert torch.equal(torch.sign(sums[nonzero]), torch.sign(res.scores[nonzero]))
    assert (res.scores[:, :k] > 0).any() and (res.scores[:, k:] < 0).any()


def test_pairs_batched_equals_single_pairs(dual_setup):
    dualda, xda, x, targets = dual_setup
    idx = dualda.influence((x[:2], targets[:2]), k=3).indices
    res = xda_pairs(dualda, xda, x[:2], targets[:2], idx)
    i, m = 1, 2
    j = int(idx[i, m])
    a = float(dualda.coefficients[j, targets[i]])
    x_j = dualda.train_inputs([j])[0]
    phi_i = xda.features(x[i : i + 1])
    phi_j = xda.features(x_j)
    _, heat_train = xda(x_j, lambda p: p * a * phi_i)
    _, heat_test = xda(x[i : i + 1], lambda p: p * a * phi_j)
    assert torch.allclose(res.train_relevance[i, m], heat_train[0], rtol=1e-4, atol=1e-7)
    assert torch.allclose(res.test_relevance[i, m], heat_test[0], rtol=1e-4, atol=1e-7)


def test_pairs_zero_coefficient_gives_zero_maps(dual_setup):
    dualda, xda, x, targets = dual_setup
    c = int(targets[0])
    zero_rows = (dualda.coefficients[:, c] == 0).nonzero().flatten()
    live_rows = (dualda.coefficients[:, c] != 0).nonzero().flatten()
    assert zero_rows.numel() and live_rows.numel()
    idx = torch.tensor([[int(zero_rows[0]), int(live_rows[0])]])
    res = xda_pairs(dualda, xda, x[:1], targets[:1], idx)
    assert res.scores[0, 0] == 0
    assert torch.count_nonzero(res.train_relevance[0, 0]) == 0
    assert torch.count_nonzero(res.test_relevance[0, 0]) == 0
    assert torch.count_nonzero(res.train_relevance[0, 1]) > 0


def test_pairs_default_targets_and_registered_composite(dual_setup):
    dualda, xda, x, targets = dual_setup
    idx = dualda.influence((x[:2], targets[:2]), k=2).indices
    res_none = xda_pairs(dualda, xda, x[:2], None, idx)
    assert torch.equal(res_none.targets, targets[:2])
    with xda:  # already registered: xda_pairs uses it as is
        res_ctx = xda_pairs(dualda, xda, x[:2], targets[:2], idx)
    assert torch.allclose(res_ctx.train_relevance, res_none.train_relevance, rtol=1e-4, atol=1e-7)
    with torch.no_grad():
        res_ng = xda_pairs(dualda, xda, x[:2], targets[:2], idx)
    assert torch.allclose(res_ng.test_relevance, res_none.test_relevance, rtol=1e-4, atol=1e-7)


def test_pairs_errors(dual_setup):
    dualda, xda, x, targets = dual_setup
    n = dualda.n_train
    good = torch.zeros(2, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="train_indices"):
        xda_pairs(dualda, xda, x[:2], targets[:2], torch.tensor([[0, n]]).expand(2, 2))
    with pytest.raises(ValueError, match="train_indices"):
        xda_pairs(dualda, xda, x[:2], targets[:2], torch.tensor([[0, -1], [0, 0]]))
    with pytest.raises(ValueError, match="train_indices"):
        xda_pairs(dualda, xda, x[:2], targets[:2], torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="train_indices"):
        xda_pairs(dualda, xda, x[:2], targets[:2], torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="train_indices"):
        xda_pairs(dualda, xda, x[:2], targets[:2], good.float())
    with pytest.raises(ValueError, match="targets"):
        xda_pairs(dualda, xda, x[:2], torch.tensor([0, 10]), good)
    with pytest.raises(ValueError, match="targets"):
        xda_pairs(dualda, xda, x[:2], torch.tensor([0, 1, 2]), good)
    # a test input of another size gives features of another dimension (no pooling before fc)
    with pytest.raises(ValueError, match="test_inputs"):
        xda_pairs(dualda, xda, torch.rand(2, 1, 10, 10), targets[:2], good)
    with pytest.raises(ValueError, match="test_inputs"):
        xda_pairs(dualda, xda, x[0], targets[:1], good[:1])
    other = XDA(TinyDigitNet(), "fc")
    with pytest.raises(ValueError, match="xda"):
        xda_pairs(dualda, other, x[:2], targets[:2], good)
    with pytest.raises(TypeError, match="xda"):
        xda_pairs(dualda, EpsilonPlusFlat(), x[:2], targets[:2], good)
