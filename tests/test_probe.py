"""The model through this package's passes: what the final layer sees, what the model returns,
and the model given back so that the user's training goes on (optimizer, cached tensors)."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from captum_dualxda import DualDA
from captum_dualxda._core.checkpoints import weights_restored
from captum_dualxda._core.features import batch_features


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(90, 6, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] - x[:, 2] > 0).long()
    return x, y, TensorDataset(x, y), torch.randn(7, 6, generator=g)


class Net(nn.Module):
    """``body`` then the final layer ``head.fc`` (3 classes); ``views`` forward passes averaged."""

    def __init__(self, views: int = 1, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU())
        self.head = nn.Sequential()
        self.head.fc = nn.Linear(16, 3)
        self.views = views

    def forward(self, x):
        return sum(self.head.fc(self.body(x.roll(v, 1))) for v in range(self.views)) / self.views


# ------------------------------------------------------------------------------------------
# The final layer runs once per forward pass
# ------------------------------------------------------------------------------------------
class SharedHead(Net):
    """A Siamese-style model: one head scores the input and a shifted copy, the difference is returned."""

    def forward(self, x):
        return self.head.fc(self.body(x)) - self.head.fc(self.body(x + 1.0))


@pytest.mark.parametrize("model, calls", [(Net(views=2), 2), (Net(views=3), 3), (SharedHead(), 2)])
def test_a_final_layer_run_several_times_per_pass_is_refused_naming_it_and_the_count(model, calls, data):
    x, _, train, _ = data
    model.train()
    message = rf"`final_fc_layer` \(`head\.fc`.*ran {calls} times in one forward pass"
    with pytest.raises(ValueError, match=message):
        DualDA(model, "head.fc", train, C=1.0)
    with pytest.raises(ValueError, match=message):
        batch_features(model, model.head.fc, (x[:5],))
    assert model.training and not model.head.fc._forward_pre_hooks  # given back as found


def test_a_head_applied_once_to_every_position_still_gives_the_pooled_position():
    """The decoder-classifier case: ``score`` runs once on ``(N, T, d)``, the model keeps one position."""

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.embed = nn.Linear(4, 8)
            self.score = nn.Linear(8, 3)

        def forward(self, x, last):
            scores = self.score(torch.tanh(self.embed(x)))  # (N, T, 3)
            return scores[torch.arange(x.shape[0]), last]

    model = Decoder().eval()
    x, last = torch.randn(5, 6, 4), torch.tensor([5, 2, 0, 3, 4])
    expected = torch.tanh(model.embed(x))[torch.arange(5), last]
    assert torch.allclose(batch_features(model, model.score, (x, last)), expected, atol=1e-6)


# ------------------------------------------------------------------------------------------
# What the model returns
# ------------------------------------------------------------------------------------------
class FeaturesAndLogits(Net):
    def forward(self, x):
        h = self.body(x)
        return h, self.head.fc(h)


def test_a_model_returning_features_and_logits_is_fitted_on_its_logits(data):
    x, _, train, x_test = data
    model = FeaturesAndLogits().eval()
    plain = Net().eval()  # the same weights (same seed), returning the logits alone
    scores = DualDA(model, "head.fc", train, C=1.0).influence((x_test, torch.zeros(7, dtype=torch.long)))
    expected = DualDA(plain, "head.fc", train, C=1.0).influence((x_test, torch.zeros(7, dtype=torch.long)))
    assert torch.allclose(scores, expected, atol=1e-6)
    assert torch.equal(batch_features(model, model.head.fc, (x[:4],)), batch_features(plain, plain.head.fc, (x[:4],)))


class TwoLogitShapedOutputs(Net):
    def forward(self, x):
        logits = self.head.fc(self.body(x))
        return logits.softmax(1), logits


class NoLogitShapedOutput(Net):
    def forward(self, x):
        h = self.body(x)
        return h, self.head.fc(h)[:, :2]


@pytest.mark.parametrize(
    "model, found", [(TwoLogitShapedOutputs(), r"2 \(\[0\], \[1\]\) have"), (NoLogitShapedOutput(), "none has")]
)
def test_a_tuple_without_one_logit_shaped_element_is_a_clear_error(model, found, data):
    _, _, train, _ = data
    with pytest.raises(ValueError, match=rf"returns a tuple of 2 elements .*{found} the logits' shape \(N, 3\)"):
        DualDA(model, "head.fc", train, C=1.0)


def test_a_head_that_sees_more_rows_than_samples_says_what_it_found(data):
    _, _, train, _ = data

    class Flattened(Net):
        """Each sample as 2 vectors of 3: the head runs on ``(2N, 16)``, the logits averaged after it."""

        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(3, 16), nn.ReLU())

        def forward(self, x):
            return self.head.fc(self.body(x.reshape(-1, 3))).reshape(x.shape[0], 2, 3).mean(1)

    with pytest.raises(
        ValueError,
        match=r"`final_fc_layer` received 128 rows .* logits of shape \(64, 3\), for 64 "
        r"samples.*\(N\*T, d\)",
    ):
        DualDA(Flattened(), "head.fc", train, C=1.0, batch_size=64)


# ------------------------------------------------------------------------------------------
# The user's training goes on afterwards
# ------------------------------------------------------------------------------------------
def _sgd_step_moves_every_parameter(model, optimizer, x, y):
    """One real optimizer step; True if it changed each parameter of ``model`` by ``-lr * grad`` (not all by 0)."""
    model.train()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    lr = optimizer.param_groups[0]["lr"]
    moved = all(
        p.grad is not None and torch.allclose(p.detach(), before[name] - lr * p.grad, atol=1e-7)
        for name, p in model.named_parameters()
    )
    return moved and any(not torch.equal(p.detach(), before[name]) for name, p in model.named_parameters())


def test_an_assigning_checkpoint_loader_leaves_the_users_optimizer_training_the_model(data, tmp_path):
    x, y, train, x_test = data
    paths = []
    for seed in (1, 2):
        paths.append(str(tmp_path / f"epoch{seed}.pt"))
        torch.save(Net(seed=seed).state_dict(), paths[-1])
    model = Net(seed=9)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    objects = {name: t for name, t in [*model.named_parameters(), *model.named_buffers()]}
    values = {name: t.detach().clone() for name, t in objects.items()}

    def assign(module, path):
        module.load_state_dict(torch.load(path, weights_only=True), assign=True)

    ensemble = DualDA(model, "head.fc", train, C=1.0, checkpoints=paths, checkpoints_load_func=assign)
    targets = torch.zeros(7, dtype=torch.long)
    scores = ensemble.influence((x_test, targets))  # loads the checkpoints again
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        assert t is objects[name] and torch.equal(t, values[name]), name
    # The scores are those of the ensemble loaded in place.
    reference = DualDA(Net(seed=9), "head.fc", train, C=1.0, checkpoints=paths).influence((x_test, targets))
    assert torch.allclose(scores, reference, atol=1e-6)
    assert _sgd_step_moves_every_parameter(model, optimizer, x, y)


def test_weights_restored_puts_back_objects_values_submodules_and_flags_after_an_error(tmp_path):
    model = Net(seed=9).eval()
    model.body[0].weight.requires_grad_(False)
    head, fc = model.head, model.head.fc
    tensors = {name: t for name, t in [*model.named_parameters(), *model.named_buffers()]}
    values = {name: t.detach().clone() for name, t in tensors.items()}
    with pytest.raises(KeyError), weights_restored(model):
        model.load_state_dict(Net(seed=1).state_dict(), assign=True)  # new Parameter and buffer objects
        model.body[1].running_mean.add_(1.0)  # an in-place change of a new buffer
        model.head = nn.Sequential(nn.Linear(16, 3))  # a replaced submodule
        model.body[0].weight.requires_grad_(True)
        model.train()
        raise KeyError("a loader that fails half way")
    assert model.head is head and model.head.fc is fc and not model.training
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        assert t is tensors[name] and torch.equal(t, values[name]), name
    assert not model.body[0].weight.requires_grad


_TABLES: dict = {}


@functools.cache
def _global_table(d: int) -> torch.Tensor:
    """A module-level cache of the kind rotary embeddings keep (built on first use)."""
    return torch.linspace(0.5, 1.5, d)


class Caching(Net):
    """Keeps a tensor it builds in its first ``forward`` (a mask, a rotary table) in one place, ``where``."""

    shared = None

    def __init__(self, where: str):
        super().__init__()
        self.where = where
        self.masks: list = []
        self.tables: dict = {}
        self.register_buffer("steps", None)

    def cached(self) -> torch.Tensor:
        d, where = 16, self.where
        if where == "submodule attribute":
            if getattr(self.body, "mask", None) is None:
                self.body.mask = torch.linspace(0.5, 1.5, d)
            return self.body.mask
        if where == "list":
            if not self.masks:
                self.masks.append(torch.linspace(0.5, 1.5, d))
            return self.masks[0]
        if where == "tuple in a dict":
            if "rotary" not in self.tables:
                self.tables["rotary"] = (torch.linspace(0.5, 1.5, d), torch.ones(d))
            return self.tables["rotary"][0]
        if where == "buffer counted in place":
            if self.steps is None:
                self.steps = torch.linspace(0.5, 1.5, d)
            elif self.training:
                self.steps += 1.0
            return self.steps
        if where == "class attribute":
            if type(self).shared is None:
                type(self).shared = torch.linspace(0.5, 1.5, d)
            return type(self).shared
        if where == "global dict":
            if "scale" not in _TABLES:
                _TABLES["scale"] = torch.linspace(0.5, 1.5, d)
            return _TABLES["scale"]
        return _global_table(d)  # "lru_cache"

    def forward(self, x):
        return self.head.fc(self.body(x) * self.cached())


@pytest.mark.parametrize(
    "where",
    [
        "submodule attribute",
        "list",
        "tuple in a dict",
        "buffer counted in place",
        "class attribute",
        "global dict",
        "lru_cache",
    ],
)
def test_a_model_that_caches_tensors_in_forward_trains_after_every_call(where, data):
    x, y, train, x_test = data
    _TABLES.clear()
    _global_table.cache_clear()
    Caching.shared = None
    model = Caching(where)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    dualda = DualDA(model, "head.fc", train, C=1.0)  # its first forward pass builds the cache
    assert _sgd_step_moves_every_parameter(model, optimizer, x, y)
    dualda = DualDA(model, "head.fc", train, C=1.0)  # refit for the trained weights (else ModelChangedError)
    dualda.influence((x_test, torch.zeros(7, dtype=torch.long)))
    assert _sgd_step_moves_every_parameter(model, optimizer, x, y)
