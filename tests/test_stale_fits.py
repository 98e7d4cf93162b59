"""A fit never outlives what it was made from: the cache key covers the whole model state, every
tensor of the training data and the precision; a model changed after the fit is refused.
"""

from __future__ import annotations

import copy
import dataclasses
import threading

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import EpsilonPlusFlat

from captum_dualxda import XDA, DualDA, xda_pairs
from captum_dualxda._core.cache import Fingerprint
from captum_dualxda.exceptions import ModelChangedError

N, D, K = 300, 8, 3


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g)
    y = torch.randint(0, K, (N,), generator=g)
    return x, y, torch.randn(6, D, generator=g)


class Shifted(nn.Module):
    """An input normalisation kept in a non-persistent buffer (not in ``state_dict()``)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.register_buffer("shift", torch.zeros(D), persistent=False)
        self.body = nn.Sequential(nn.Linear(D, 16), nn.ReLU())
        self.fc = nn.Linear(16, K)

    def forward(self, x):
        x = x.x if not isinstance(x, torch.Tensor) else x  # batch objects carry the tensor in `.x`
        return self.fc(self.body(x - self.shift))


def targets(model, x):
    with torch.no_grad():
        return model(x).argmax(1)


# ------------------------------------------------------------------------------------------
# The cache key: the whole model state
# ------------------------------------------------------------------------------------------
def test_a_non_persistent_buffer_is_part_of_the_cache_key(tmp_path, data):
    x, y, xt = data
    net = Shifted()
    train = TensorDataset(x, y)
    DualDA(net, "fc", train, C=0.1, cache_dir=str(tmp_path))
    net.shift.fill_(0.25)
    changed = DualDA(net, "fc", train, C=0.1, cache_dir=str(tmp_path))
    fresh = DualDA(net, "fc", train, C=0.1)
    assert not changed.fit_stats["from_cache"]
    t = targets(net, xt)
    assert torch.allclose(changed.influence((xt, t)), fresh.influence((xt, t)), atol=1e-6)
    assert DualDA(net, "fc", train, C=0.1, cache_dir=str(tmp_path)).fit_stats["from_cache"]


def test_a_plain_tensor_attribute_is_part_of_the_cache_key(tmp_path, data):
    x, y, _ = data

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.scale = torch.ones(D)  # a tensor the forward pass reads, kept without register_buffer
            self.fc = nn.Linear(D, K)

        def forward(self, x):
            return self.fc(x * self.scale)

    net = Scaled()
    train = TensorDataset(x, y)
    DualDA(net, "fc", train, C=0.1, cache_dir=str(tmp_path))
    net.scale[3] = 2.0
    assert not DualDA(net, "fc", train, C=0.1, cache_dir=str(tmp_path)).fit_stats["from_cache"]


# ------------------------------------------------------------------------------------------
# The cache key: every tensor of the training data, whatever object holds it
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class DataclassBatch:
    x: torch.Tensor


class GraphBatch:
    """A graph-batch style object whose repr shows shapes only."""

    def __init__(self, x):
        self.x = x

    def __repr__(self):
        return f"GraphBatch(x={list(self.x.shape)})"


class SlotsBatch:
    __slots__ = ("x",)

    def __init__(self, x):
        self.x = x

    def __repr__(self):
        return "SlotsBatch()"


class Indices(Dataset):
    def __len__(self):
        return N

    def __getitem__(self, i):
        return i


def object_loader(kind, x, y):
    return DataLoader(Indices(), batch_size=N // 2, collate_fn=lambda idx: (kind(x[idx]), y[idx]))


@pytest.mark.parametrize("kind", [DataclassBatch, GraphBatch, SlotsBatch])
def test_tensors_inside_batch_objects_are_hashed_in_full(kind, tmp_path, data):
    x, y, _ = data
    net = Shifted()
    first = DualDA(net, "fc", object_loader(kind, x, y), C=0.1, cache_dir=str(tmp_path))
    assert not first.fit_stats["from_cache"]
    # Equal content in new objects hits; one changed value that the repr abbreviates misses.
    assert DualDA(net, "fc", object_loader(kind, x.clone(), y), C=0.1, cache_dir=str(tmp_path)).fit_stats["from_cache"]
    changed = x.clone()
    changed[N // 4, D // 2] += 3.0
    assert N // 2 * D > 1000 and "..." in repr(changed[: N // 2])  # torch abbreviates this tensor
    refit = DualDA(net, "fc", object_loader(kind, changed, y), C=0.1, cache_dir=str(tmp_path))
    assert not refit.fit_stats["from_cache"]
    assert torch.allclose(
        refit.self_influence(), DualDA(net, "fc", TensorDataset(changed, y), C=0.1).self_influence(), atol=1e-6
    )


class LockedBatch:
    """A batch object holding state that cannot be read (a lock; likewise files, handles)."""

    def __init__(self, x):
        self.x = x
        self.lock = threading.Lock()


def test_a_batch_object_that_cannot_be_fingerprinted_is_refused_with_cache_dir(tmp_path, data):
    x, y, _ = data
    net = Shifted()
    with pytest.raises(TypeError, match=r"_thread.lock inside a .*LockedBatch.*fit without `cache_dir`"):
        DualDA(net, "fc", object_loader(LockedBatch, x, y), C=0.1, cache_dir=str(tmp_path))
    assert not [f for f in tmp_path.iterdir() if f.suffix == ".pt"]
    DualDA(net, "fc", object_loader(LockedBatch, x, y), C=0.1)  # no cache: nothing to fingerprint


def digest(value):
    return Fingerprint().update(value).hexdigest()


def test_fingerprints_of_objects():
    big = torch.arange(2000.0)
    other = big.clone()
    other[1000] += 1
    assert digest(DataclassBatch(big)) == digest(DataclassBatch(big.clone()))
    assert digest(DataclassBatch(big)) != digest(DataclassBatch(other))
    assert digest(GraphBatch(big)) != digest(GraphBatch(other))
    assert digest(SlotsBatch(big)) != digest(SlotsBatch(other))
    assert digest(DataclassBatch(big)) != digest(GraphBatch(big))  # the class is part of it
    assert digest({"a", "b", "c"}) == digest({"c", "b", "a"})
    cyclic = GraphBatch(big)
    cyclic.self = cyclic
    assert digest(cyclic) == digest(cyclic)
    with pytest.raises(TypeError, match="cannot be read"):
        digest(LockedBatch(big))


# ------------------------------------------------------------------------------------------
# The cache key: the precision
# ------------------------------------------------------------------------------------------
def test_autocast_none_runs_at_the_models_own_precision_inside_an_autocast_block(tmp_path, data):
    x, y, xt = data
    net = Shifted()
    train = TensorDataset(x, y)
    full = DualDA(net, "fc", train, C=0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = DualDA(net, "fc", train, C=0.1, cache_dir=str(tmp_path))
        inside_phi = inside.test_features((xt,))
    assert torch.allclose(inside.weight, full.weight, atol=1e-6)
    assert torch.allclose(inside_phi, full.test_features((xt,)), atol=1e-6)
    reloaded = DualDA(net, "fc", train, C=0.1, cache_dir=str(tmp_path))
    assert reloaded.fit_stats["from_cache"]
    assert torch.allclose(reloaded.weight, full.weight, atol=1e-6)
    mixed = DualDA(net, "fc", train, C=0.1, cache_dir=str(tmp_path), autocast=torch.bfloat16)
    assert not mixed.fit_stats["from_cache"]
    assert not torch.allclose(mixed.weight, full.weight, atol=1e-6)  # bfloat16 really is another fit


# ------------------------------------------------------------------------------------------
# The model after the fit
# ------------------------------------------------------------------------------------------
def fitted(data):
    """A fitted DualDA on a small net with batch norm (random weights, eval mode)."""
    x, y, xt = data
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(D, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, K))
    for p in net.parameters():
        nn.init.normal_(p, std=0.5)
    net.eval()
    return net, DualDA(net, "3", TensorDataset(x, y), C=0.1), xt


def test_influence_after_training_further_raises_with_the_fix(data):
    net, dualda, xt = fitted(data)
    t = targets(net, xt)
    before = dualda.influence((xt, t))
    top = dualda.influence((xt, t), k=3)
    saved = copy.deepcopy(net.state_dict())
    x, y, _ = data
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    net.train()
    nn.functional.cross_entropy(net(x), y).backward()
    optimizer.step()
    net.eval()
    for call in (
        lambda: dualda.influence((xt, t)),
        lambda: dualda.influence((xt, t), k=3),
        lambda: dualda.test_features((xt,)),
        lambda: xda_pairs(dualda, XDA(net, "3"), xt, t, top.indices),
    ):
        with pytest.raises(
            ModelChangedError,
            match=r"changed after this DualDA was fitted.*'0\.weight'.*Refit.*"
            r"`DualDA\(model, \.\.\.\)` again.*load_state_dict",
        ):
            call()
    # Putting the fitted weights back makes the fit usable again, with the same scores.
    net.load_state_dict(saved)
    assert torch.equal(dualda.influence((xt, t)), before)


def _load_other(net):
    net.load_state_dict({k: v + 0.1 if v.is_floating_point() else v for k, v in net.state_dict().items()})


def _assign_module(net):
    net[0] = nn.Linear(D, 16)


def _data_assign(net):
    net[0].weight.data = net[0].weight.data + 0.1


def _in_place(net):
    with torch.no_grad():
        net[0].bias.add_(0.1)


def _running_stats(net):
    net.train()
    with torch.no_grad():
        net(torch.randn(32, D) + 1.0)
    net.eval()


@pytest.mark.parametrize(
    "change",
    [_load_other, _assign_module, _data_assign, _in_place, _running_stats, lambda net: net.double()],
    ids=["load_state_dict", "new_module", "data_assignment", "in_place", "batchnorm_stats", "dtype"],
)
def test_every_kind_of_change_is_seen(change, data):
    net, dualda, xt = fitted(data)
    t = targets(net, xt)
    dualda.influence((xt, t))
    change(net)
    with pytest.raises(ModelChangedError, match="changed after this DualDA was fitted"):
        dualda.influence((xt.to(next(net.parameters()).dtype), t))


def test_what_leaves_the_weights_alone_is_no_change(data, tmp_path):
    net, dualda, xt = fitted(data)
    t = targets(net, xt)
    before = dualda.influence((xt, t))
    net.train()
    net.eval()
    net[0].weight.requires_grad_(False)
    net[0].weight.requires_grad_(True)
    torch.optim.SGD(net.parameters(), lr=0.1).zero_grad()
    with torch.no_grad():
        net[0].weight.add_(0)  # bumps the version counter, values stay
    net.load_state_dict(copy.deepcopy(net.state_dict()))
    net.load_state_dict(copy.deepcopy(net.state_dict()), assign=True)  # new Parameter objects, same values
    for _ in range(3):
        assert torch.equal(dualda.influence((xt, t)), before)
    # A checkpoint ensemble on the same model loads other weights for a while and restores them.
    x, y, _ = data
    paths = []
    for seed in (1, 2):
        other = copy.deepcopy(net)
        torch.manual_seed(seed)
        for p in other.parameters():
            nn.init.normal_(p, std=0.5)
        paths.append(str(tmp_path / f"c{seed}.pt"))
        torch.save(other.state_dict(), paths[-1])
    ensemble = DualDA(net, "3", TensorDataset(x, y), C=0.1, checkpoints=paths)
    top = ensemble.influence((xt, t), k=3)
    xda_pairs(ensemble, XDA(net, "3"), xt, t, top.indices)
    assert torch.equal(dualda.influence((xt, t)), before)
    # An ensemble does not depend on the model's current weights: training the model is no change for it.
    with torch.no_grad():
        net[0].bias.add_(1.0)
    assert torch.equal(ensemble.influence((xt, t), k=3).indices, top.indices)


def test_xda_with_canonizers_is_no_change(data):
    """Batch norm merged into the layer before it for the block's duration (``.data`` swapped)."""
    net, dualda, xt = fitted(data)
    t = targets(net, xt)
    before = dualda.influence((xt, t))
    top = dualda.influence((xt, t), k=3)
    xda = XDA(net, "3", EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()]))
    outside = xda_pairs(dualda, xda, xt, t, top.indices)
    fitted_weight = net[0].weight.detach().clone()
    with xda:
        assert not torch.equal(net[0].weight, fitted_weight)  # the canonizer is at work
        inside_scores = dualda.influence((xt, t))
        inside = xda_pairs(dualda, xda, xt, t, top.indices)
    assert torch.allclose(inside_scores, before, atol=1e-5)
    assert torch.allclose(inside.scores, outside.scores, atol=1e-5)
    assert torch.allclose(outside.scores, before.gather(1, top.indices), atol=1e-5)
    assert torch.equal(dualda.influence((xt, t)), before)
    # Trained further before the block: still refused inside it.
    with torch.no_grad():
        net[0].weight.mul_(1.5)
    with xda, pytest.raises(ModelChangedError):
        dualda.influence((xt, t))


class Rewriting(nn.Module):
    """A model whose forward pass rewrites buffers, in eval mode too: a call counter and a table it
    rebuilds for longer inputs (as rotary embeddings do), kept in a non-persistent buffer."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.register_buffer("table", torch.zeros(1), persistent=False)
        self.body = nn.Sequential(nn.Linear(D, 16), nn.ReLU())
        self.fc = nn.Linear(16, K)

    def forward(self, x):
        self.calls += 1
        if self.table.numel() < x.shape[0]:
            self.table = torch.ones(x.shape[0])
        return self.fc(self.body(x) * self.table[: x.shape[0], None])


@pytest.mark.parametrize("cached", [False, True])
def test_a_buffer_the_forward_pass_rewrites_is_no_change(cached, data, tmp_path):
    x, y, xt = data
    kwargs = {"cache_dir": str(tmp_path)} if cached else {}
    if cached:  # fitted before, e.g. in another process (the counter is part of the cache key)
        DualDA(Rewriting(), "fc", TensorDataset(x, y), C=0.1, batch_size=16, **kwargs)
    net = Rewriting()
    dualda = DualDA(net, "fc", TensorDataset(x, y), C=0.1, batch_size=16, **kwargs)
    assert dualda.fit_stats["from_cache"] == cached
    xt = torch.cat([xt] * 4)  # longer than any training batch: the table grows
    # the user's own forward pass; a cached fit has not seen the counter move yet
    t = targets(net, xt) if not cached else torch.zeros(len(xt), dtype=torch.long)
    first = dualda.influence((xt, t))
    assert torch.equal(dualda.influence((xt, t)), first)
    with torch.no_grad():
        net.body[0].weight.mul_(2.0)
    with pytest.raises(ModelChangedError, match="'body.0.weight'"):
        dualda.influence((xt, t))


def _distributed_worker(rank, init_file, out_dir):
    import os

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        g = torch.Generator().manual_seed(0)
        x, y, xt = torch.randn(101, D, generator=g), torch.randint(0, K, (101,), generator=g), torch.randn(4, D)
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(D, 16), nn.ReLU(), nn.Linear(16, K))
        dualda = DualDA(net, "2", TensorDataset(x, y), C=0.1)
        t = targets(net, xt)
        dualda.influence((xt, t))
        if rank == 1:  # only one rank's model changes: both must raise, neither may wait forever
            with torch.no_grad():
                net[0].bias.add_(1.0)
        try:
            dualda.influence((xt, t), k=3)
            outcome = "no error"
        except ModelChangedError as error:
            outcome = str(error)
        with open(os.path.join(out_dir, f"rank{rank}.txt"), "w") as stream:
            stream.write(outcome)
    finally:
        dist.destroy_process_group()


def test_distributed_every_rank_raises_when_one_ranks_model_changed(tmp_path):
    import torch.multiprocessing as mp

    context = mp.start_processes(
        _distributed_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=False, start_method="spawn"
    )
    for _ in range(120):  # never hang the suite: at most 120 s
        if context.join(timeout=1):
            break
    else:
        for process in context.processes:
            process.kill()
        pytest.fail("a rank hung")
    outcomes = [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)]
    assert all("changed after this DualDA was fitted" in outcome for outcome in outcomes)
    assert "'0.bias'" in outcomes[1] and "another rank" in outcomes[0]
