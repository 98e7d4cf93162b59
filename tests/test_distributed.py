"""Scale-out paths: sharded extraction, distributed scoring, out-of-core features (gloo, 2 CPU processes)."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from captum_dualxda import DualDA
from captum_dualxda.distributed import shard_indices
from captum_dualxda.features import extract_features

WORLD = 2
N_TRAIN = 301  # odd: the shards are uneven


def make_problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N_TRAIN + 12, 10, generator=g)
    y = (x[:, :3].argmax(1) + (torch.rand(N_TRAIN + 12, generator=g) < 0.1).long()) % 3
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3))
    return net, TensorDataset(x[:N_TRAIN], y[:N_TRAIN]), x[N_TRAIN:]


def run_all(net, train, x_test, **kwargs):
    dualda = DualDA(net, "2", train, C=0.05, batch_size=32, **kwargs)
    pred = net(x_test).argmax(1)
    features, labels = extract_features(net, net[2], DataLoader(train, batch_size=32), distributed=kwargs.get("distributed", False))
    return {
        "features": features,
        "labels": labels,
        "coefficients": dualda.coefficients,
        "scores": dualda.influence((x_test, pred)),
        "proponents": tuple(dualda.influence((x_test, pred), k=7)),
        "opponents": tuple(dualda.influence(DataLoader(TensorDataset(x_test, pred), batch_size=5), k=7, proponents=False)),
        "self_influence": dualda.self_influence(),
        "n_local_support": dualda._support_features.shape[0],
        "n_support": dualda.support_indices.numel(),
    }


def worker(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        net, train, x_test = make_problem()
        result = run_all(net, train, x_test)  # distributed=None: automatic
        result["out_of_core"] = run_all(
            net, train, x_test, distributed=True, cache_dir=os.path.join(out_dir, "cache"), memory_budget=0
        )["scores"]
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def distributed_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    mp.spawn(worker, args=(str(out / "init"), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.fixture(scope="module")
def single_results():
    net, train, x_test = make_problem()
    return run_all(net, train, x_test)


def test_shards_cover_every_index_once():
    for n in [0, 1, 2, 7, 100, 301]:
        for world in [1, 2, 3, 4, 8]:
            seen = sorted(j for r in range(world) for j in shard_indices(n, r, world))
            assert seen == list(range(n))
    with pytest.raises(ValueError, match="`rank`"):
        shard_indices(10, 2, 2)


def test_sharded_extraction_equals_single_process(distributed_results, single_results):
    for result in distributed_results:
        assert torch.equal(result["features"], single_results["features"])
        assert torch.equal(result["labels"], single_results["labels"])


def test_distributed_fit_and_scores_equal_single_process(distributed_results, single_results):
    for result in distributed_results:
        assert torch.equal(result["coefficients"], single_results["coefficients"])
        assert torch.allclose(result["scores"], single_results["scores"], atol=1e-6, rtol=0)
        assert torch.allclose(result["self_influence"], single_results["self_influence"])
    # The support vectors were really split between the ranks.
    local = [r["n_local_support"] for r in distributed_results]
    assert sum(local) == single_results["n_support"] and min(local) > 0


@pytest.mark.parametrize("key", ["proponents", "opponents"])
def test_distributed_topk_equals_single_process(distributed_results, single_results, key):
    ref_indices, ref_values = single_results[key]
    for result in distributed_results:
        indices, values = result[key]
        assert torch.allclose(values, ref_values, atol=1e-6, rtol=0)
        # Indices agree wherever scores are not tied.
        scores = single_results["scores"]
        assert torch.allclose(scores.gather(1, indices), values, atol=1e-6, rtol=0)
        assert len(set(indices[0].tolist())) == indices.shape[1]


def test_out_of_core_equals_in_memory(distributed_results, single_results, tmp_path):
    for result in distributed_results:
        assert torch.allclose(result["out_of_core"], single_results["scores"], atol=1e-6, rtol=0)
    net, train, x_test = make_problem()
    pred = net(x_test).argmax(1)
    mapped = DualDA(net, "2", train, C=0.05, cache_dir=str(tmp_path), memory_budget=1000)
    in_memory = DualDA(net, "2", train, C=0.05)
    assert torch.equal(mapped.coefficients, in_memory.coefficients)
    assert torch.allclose(mapped.influence((x_test, pred)), in_memory.influence((x_test, pred)), atol=1e-6)
    # The memory-mapped feature file is removed after the fit; only the cached fit remains.
    assert [f for f in os.listdir(tmp_path) if f.startswith("features-")] == []
    with pytest.raises(ValueError, match="`memory_budget` needs `cache_dir`"):
        DualDA(net, "2", train, memory_budget=10)


def test_memory_mapped_extraction_is_a_file_backed_tensor(tmp_path):
    net, train, _ = make_problem()
    path = str(tmp_path / "f.npy")
    mapped, labels = extract_features(net, net[2], DataLoader(train, batch_size=50), out_path=path)
    plain, _ = extract_features(net, net[2], DataLoader(train, batch_size=50))
    assert torch.equal(mapped, plain)
    assert np.load(path, mmap_mode="r").shape == (N_TRAIN, 16)
