"""Top-k under a process group equals the single-process top-k: values, indices, order (gloo, 2 and 3 ranks).

The top-k order is by score, ties (above all the exact zeros of the samples off the support) broken
towards the lower training index. The reference is a stable sort of the dense score matrix.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from captum_dualxda import DualDA
from captum_dualxda._core.distributed import merge_topk, stable_topk
from captum_dualxda._core.support import SupportSet

N_TRAIN = 31  # uneven shards for 2 and 3 ranks
KS = list(range(1, N_TRAIN + 1)) + [N_TRAIN + 4]  # every k; the last one is clipped to n_train
FEW_KS = list(range(1, 13)) + [16, 20, 25, 30, 31, N_TRAIN + 4]  # fewer collectives for the other problems


def random_net_problem():
    """A small MLP on random data: most training samples are support vectors, few scores per row non-zero."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N_TRAIN + 6, 10, generator=g)
    y = x[:, :3].argmax(1)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3))
    return net, "2", TensorDataset(x[:N_TRAIN], y[:N_TRAIN]), x[N_TRAIN:]


def idle_rank_problem():
    """Linear features; only samples near the origin are support vectors, and none has an odd index
    or an index ``2 mod 3``: rank 1 of 2 and rank 2 of 3 hold no support vector."""
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 3, (N_TRAIN + 4,), generator=g)
    angle = y.double() * 2 * math.pi / 3
    direction = torch.stack([angle.cos(), angle.sin()], 1).float()
    far = torch.tensor([i % 2 == 1 or i % 3 == 2 for i in range(N_TRAIN + 4)])
    x = torch.where(far[:, None], 5 * direction, direction + 0.3 * torch.randn(N_TRAIN + 4, 2, generator=g))
    torch.manual_seed(0)
    net = nn.Sequential(nn.Identity(), nn.Linear(2, 3))
    return net, "1", TensorDataset(x[:N_TRAIN], y[:N_TRAIN]), x[N_TRAIN:]


def synthetic_support_sets():
    """SupportSets with small-integer features and power-of-two coefficients: every score is exact, so
    equal non-zero scores (on different ranks) are real ties. Support vectors: everywhere, only on
    indices ``0 mod 6`` (some ranks hold none), none at all."""
    g = torch.Generator().manual_seed(2)
    sets = {}
    for name, indices in (
        ("dense", torch.arange(0, N_TRAIN, 1)[torch.rand(N_TRAIN, generator=g) < 0.7]),
        ("idle_ranks", torch.arange(0, N_TRAIN, 6)),
        ("empty", torch.zeros(0, dtype=torch.long)),
    ):
        n_sv = indices.numel()
        features = torch.randint(-1, 2, (n_sv, 3), generator=g).float()
        values = torch.tensor([0.0, 0.5, -0.5, 1.0, -2.0])[torch.randint(0, 5, (n_sv, 2), generator=g)]
        classes = torch.randint(0, 3, (n_sv, 2), generator=g)
        classes[:, 1] = (classes[:, 0] + 1) % 3
        sets[name] = SupportSet(indices, values, classes, features, N_TRAIN, 3)
    phi = torch.randint(-1, 2, (6, 3), generator=g).float()
    targets = torch.arange(6) % 3
    return sets, phi, targets


def sharded_top_k(support, phi, targets, k, largest, rank, world):
    """What DualDA does per batch: this rank's shard plus (rank 0) zero-score pads, then the merge."""
    k = min(k, support.n_train)
    local = support.shard(rank, world)
    candidates = local.candidates(k if rank == 0 else 0, support.indices)
    values, indices = local.top_k(phi, targets, k, largest, candidates)
    return merge_topk(values, indices, k, largest)


def dualda_top_k(make, ks):
    net, layer, train, x_test = make()
    dualda = DualDA(net, layer, train, C=0.1, batch_size=8)
    pred = net(x_test).argmax(1)
    results = {"n_local_support": len(dualda._single("n_local_support").local)}
    for k in ks:
        results[k, True] = tuple(dualda.influence((x_test, pred), k=k))
        loader = DataLoader(TensorDataset(x_test, pred), batch_size=4)  # several batches
        results[k, False] = tuple(dualda.influence(loader, k=k, proponents=False))
    return results


def worker(rank, out_dir):
    """Everything once with 3 ranks, then (ranks 0 and 1 in a new group) with 2: one spawn, one import."""
    for world in (3, 2):
        if rank >= world:
            return
        init = os.path.join(out_dir, f"init{world}")
        dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
        try:
            result = {
                "random_net": dualda_top_k(random_net_problem, KS),
                "idle_rank": dualda_top_k(idle_rank_problem, FEW_KS),
            }
            sets, phi, targets = synthetic_support_sets()
            for name, support in sets.items():
                result[name] = {
                    (k, largest): sharded_top_k(support, phi, targets, k, largest, rank, world)[::-1]
                    for k in FEW_KS
                    for largest in (True, False)
                }
            torch.save(result, os.path.join(out_dir, f"world{world}-rank{rank}.pt"))
        finally:
            dist.destroy_process_group()


@pytest.fixture(scope="module")
def spawned(tmp_path_factory):
    out = tmp_path_factory.mktemp("topk")
    mp.spawn(worker, args=(str(out),), nprocs=3, join=True)
    return {
        world: [torch.load(out / f"world{world}-rank{r}.pt", weights_only=False) for r in range(world)]
        for world in (2, 3)
    }


def reference_top_k(scores, k, largest):
    """Brute force: stable sort of the dense ``(n, n_train)`` scores (ties to the lower index)."""
    order = torch.sort(scores, dim=1, descending=largest, stable=True).indices[:, : min(k, scores.shape[1])]
    return order, scores.gather(1, order)


def dense_references():
    references = {}
    for name, make in (("random_net", random_net_problem), ("idle_rank", idle_rank_problem)):
        net, layer, train, x_test = make()
        dualda = DualDA(net, layer, train, C=0.1, batch_size=8)
        references[name] = (dualda.influence((x_test, net(x_test).argmax(1))), dualda.support_indices)
    sets, phi, targets = synthetic_support_sets()
    for name, support in sets.items():
        references[name] = (support.dense_scores(phi, targets), support.indices)
    return references


@pytest.fixture(scope="module")
def references():
    return dense_references()


def check_top_k(got, scores, name):
    for (k, largest), (indices, values) in got.items():
        expected_indices, expected_values = reference_top_k(scores, k, largest)
        assert torch.equal(indices, expected_indices), (name, k, largest)
        assert torch.allclose(values, expected_values, atol=1e-6, rtol=0), (name, k, largest)


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("name", ["random_net", "idle_rank", "dense", "idle_ranks", "empty"])
def test_distributed_top_k_is_the_single_process_top_k(spawned, references, name, world):
    results = spawned[world]
    scores, support = references[name]
    # The regime of the bug: k beyond a row's number of non-zero scores.
    assert int((scores != 0).sum(1).max()) < N_TRAIN
    for result in results:
        check_top_k({key: value for key, value in result[name].items() if key != "n_local_support"}, scores, name)
    if name == "idle_rank":
        held = [result[name]["n_local_support"] for result in results]
        assert sum(held) == support.numel() and held[world - 1] == 0
        assert held[0] > 0


@pytest.mark.parametrize("name", ["random_net", "idle_rank"])
def test_single_process_top_k_breaks_ties_by_index(references, name):
    net, layer, train, x_test = (random_net_problem if name == "random_net" else idle_rank_problem)()
    dualda = DualDA(net, layer, train, C=0.1, batch_size=8)
    pred = net(x_test).argmax(1)
    scores = references[name][0]
    for k in KS:
        for largest in (True, False):
            top = dualda.influence((x_test, pred), k=k, proponents=largest)
            expected_indices, expected_values = reference_top_k(scores, k, largest)
            assert torch.equal(top.indices, expected_indices), (k, largest)
            assert torch.allclose(top.influence_scores, expected_values, atol=1e-6, rtol=0)


def test_stable_topk_equals_a_stable_sort():
    g = torch.Generator().manual_seed(3)
    values = torch.randint(-2, 3, (7, 40), generator=g).float()  # many ties
    values[1, ::3] = -0.0
    values[2, 5] = float("inf")
    values[3, 7] = float("-inf")
    values[4, [2, 9]] = float("nan")
    for largest in (True, False):
        order = torch.sort(values, dim=1, descending=largest, stable=True).indices
        for k in (1, 2, 5, 17, 39, 40, 45):
            top_values, columns = stable_topk(values, k, largest)
            assert torch.equal(columns, order[:, :k])
            torch.testing.assert_close(top_values, values.gather(1, order[:, :k]), rtol=0, atol=0, equal_nan=True)
    sparse = torch.randn(20, 300, generator=g, dtype=torch.float64)
    sparse[torch.rand(20, 300, generator=g) < 0.9] = 0.0
    sparse[:, 150:160] = sparse[:, 10:20]  # equal non-zero values
    for largest in (True, False):
        order = torch.sort(sparse, dim=1, descending=largest, stable=True).indices
        for k in (1, 8, 30, 31, 45, 200, 300):
            assert torch.equal(stable_topk(sparse, k, largest)[1], order[:, :k])
    empty_values, empty_columns = stable_topk(values[:, :0], 3, True)
    assert empty_values.shape == empty_columns.shape == (7, 0)


def test_merge_topk_of_disjoint_parts_in_one_process():
    """merge_topk's ordering (value, then lower index) applied to candidates in any order."""
    values = torch.tensor([[0.0, 1.0, 0.0, 1.0, -1.0]])
    indices = torch.tensor([[9, 4, 2, 3, 0]])
    top_values, top_indices = merge_topk(values, indices, 4, largest=True)
    assert top_indices.tolist() == [[3, 4, 2, 9]] and top_values.tolist() == [[1.0, 1.0, 0.0, 0.0]]
    top_values, top_indices = merge_topk(values, indices, 3, largest=False)
    assert top_indices.tolist() == [[0, 2, 9]] and top_values.tolist() == [[-1.0, 0.0, 0.0]]


def test_candidates_pad_only_with_samples_off_every_shard():
    sets, _, _ = synthetic_support_sets()
    support = sets["dense"]
    for world in (2, 3):
        for rank in range(world):
            candidates = support.shard(rank, world).candidates(N_TRAIN, support.indices)
            pads = candidates[~torch.isin(candidates, support.indices[support.indices % world == rank])]
            assert not torch.isin(pads, support.indices).any()
            assert torch.equal(candidates, torch.sort(candidates).values)
