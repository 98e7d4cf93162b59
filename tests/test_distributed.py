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
from captum_dualxda._core.distributed import assemble_strided, shard_indices
from captum_dualxda._core.store import extract_features, shard_path

WORLD = 2
N_TRAIN = 301  # odd: the shards are uneven


def make_problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N_TRAIN + 12, 10, generator=g)
    y = (x[:, :3].argmax(1) + (torch.rand(N_TRAIN + 12, generator=g) < 0.1).long()) % 3
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3))
    return net, TensorDataset(x[:N_TRAIN], y[:N_TRAIN]), x[N_TRAIN:]


class Keyword(nn.Module):
    """The same network called the Hugging Face way, ``model(x=...)``."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)


class Dicts(torch.utils.data.Dataset):
    """``train`` as dicts with the label under "labels"."""

    def __init__(self, train):
        self.train = train

    def __len__(self):
        return len(self.train)

    def __getitem__(self, i):
        x, y = self.train[i]
        return {"x": x, "labels": y}


def run_all(net, train, x_test, **kwargs):
    dualda = DualDA(net, "2", train, C=0.05, batch_size=32, **kwargs)
    pred = net(x_test).argmax(1)
    features, labels = extract_features(
        net, net[2], DataLoader(train, batch_size=32), distributed=kwargs.get("distributed", False)
    )
    return {
        "features": features,
        "labels": labels,
        "coefficients": dualda.coefficients,
        "scores": dualda.influence((x_test, pred)),
        "proponents": tuple(dualda.influence((x_test, pred), k=7)),
        "opponents": tuple(
            dualda.influence(DataLoader(TensorDataset(x_test, pred), batch_size=5), k=7, proponents=False)
        ),
        "self_influence": dualda.self_influence(),
        "n_local_support": len(dualda._single("n_local_support").local),
        "n_support": dualda.support_indices.numel(),
        "from_cache": dualda.fit_stats["from_cache"],
        "fit_stats": dualda.fit_stats,
    }


def assemble_cases(rank, out_dir):
    """assemble_strided on uneven sizes (n=301; n=1: rank 1's shard is empty), tensor and memmap."""
    results = {}
    for n in (301, 1):
        full = torch.arange(n * 3, dtype=torch.float32).reshape(n, 3)
        local = full[rank::WORLD]
        for chunk_rows in (None, 7):
            results[(n, chunk_rows, "tensor")] = assemble_strided(local, n, chunk_rows=chunk_rows)
            mapped = None
            if rank == 0:
                mapped = np.lib.format.open_memmap(
                    os.path.join(out_dir, f"assembled{n}-{chunk_rows}.npy"), mode="w+", dtype=np.float32, shape=(n, 3)
                )
            got = assemble_strided(local, n, out=mapped, chunk_rows=chunk_rows)
            results[(n, chunk_rows, "memmap")] = None if got is None else torch.from_numpy(np.array(got))
        # To rank 1, whose own rows are already in place in `out`.
        out = full.clone() if rank == 1 else None
        if out is not None:
            out[0::WORLD] = -1.0
        results[(n, "dst1")] = assemble_strided(None if rank == 1 else local, n, out=out, dst=1, chunk_rows=5)
    return results


def worker(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        net, train, x_test = make_problem()
        result = run_all(net, train, x_test)  # distributed=None: automatic
        # A shuffling loader that drops its last batch: every rank reads the dataset in order.
        shuffled = DualDA(net, "2", DataLoader(train, batch_size=32, shuffle=True, drop_last=True), C=0.05)
        result["shuffled"] = (shuffled.n_train, shuffled.influence((x_test, net(x_test).argmax(1))))
        # Dict batches (Hugging Face convention) through the distributed path.
        keyword = DualDA(Keyword(net), "net.2", Dicts(train), C=0.05, batch_size=32)
        result["dict_batches"] = keyword.influence({"x": x_test, "labels": net(x_test).argmax(1)})
        # Sharded extraction: rank 0 gets every row, rank r > 0 only its shard; in memory and
        # memory-mapped into a rank-local directory (no shared file).
        local_dir = os.path.join(out_dir, f"scratch{rank}")
        os.makedirs(local_dir)
        loader = DataLoader(train, batch_size=32)
        result["sharded"] = extract_features(net, net[2], loader, distributed=True)
        mapped, labels = extract_features(
            net, net[2], loader, distributed=True, out_path=os.path.join(local_dir, "f.npy")
        )
        result["sharded_mapped"] = (mapped.clone(), labels)
        result["scratch_files"] = sorted(os.listdir(local_dir))
        del mapped
        result["assemble"] = assemble_cases(rank, local_dir)
        # Out of core with a different cache_dir per rank (node-local scratch, nothing shared).
        cache = os.path.join(out_dir, f"cache{rank}")
        out_of_core = run_all(net, train, x_test, distributed=True, cache_dir=cache, memory_budget=0)
        result["out_of_core"] = {key: out_of_core[key] for key in ("scores", "proponents", "opponents", "from_cache")}
        result["cache_files"] = sorted(os.listdir(cache))
        # Rank 0 hits its cache, rank 1's directory is empty: rank 0's decision holds for both.
        hit = run_all(net, train, x_test, distributed=True, cache_dir=cache)
        # Only rank 1 finds a cache file (rank 0's directory is empty): everyone refits.
        miss = run_all(
            net, train, x_test, distributed=True, cache_dir=os.path.join(out_dir, "cache0" if rank else "empty0")
        )
        for name, run in (("cache_hit", hit), ("cache_miss", miss)):
            result[name] = {
                key: run[key] for key in ("scores", "proponents", "from_cache", "fit_stats", "n_local_support")
            }
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


def test_distributed_fit_with_a_shuffling_loader_reads_dataset_order(distributed_results, single_results):
    for result in distributed_results:
        n_train, scores = result["shuffled"]
        assert n_train == N_TRAIN
        assert torch.allclose(scores, single_results["scores"], atol=1e-6, rtol=0)


def test_distributed_fit_with_dict_batches_equals_single_process(distributed_results, single_results):
    for result in distributed_results:
        assert torch.allclose(result["dict_batches"], single_results["scores"], atol=1e-6, rtol=0)


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


def test_sharded_extraction_keeps_shards_local(distributed_results, single_results):
    features, labels = single_results["features"], single_results["labels"]
    for rank, result in enumerate(distributed_results):
        for key in ("sharded", "sharded_mapped"):
            local, local_labels = result[key]
            assert torch.equal(local_labels, labels)  # all labels on every rank
            if rank == 0:
                assert torch.equal(local, features)  # bitwise the single-process matrix
            else:
                assert local.shape[0] == len(shard_indices(N_TRAIN, rank, WORLD))
                assert torch.equal(local, features[rank::WORLD])
    # Rank 0 maps the full file; rank 1 only its own, rank-suffixed one.
    assert distributed_results[0]["scratch_files"] == ["f.npy"]
    assert distributed_results[1]["scratch_files"] == [os.path.basename(shard_path("f.npy", 1))]


@pytest.mark.parametrize("n", [301, 1])
def test_assemble_strided_restores_order_on_one_rank(distributed_results, n):
    full = torch.arange(n * 3, dtype=torch.float32).reshape(n, 3)
    root, other = (result["assemble"] for result in distributed_results)
    for chunk_rows in (None, 7):
        for out in ("tensor", "memmap"):
            assert torch.equal(root[(n, chunk_rows, out)], full)
            assert other[(n, chunk_rows, out)] is None
    assert torch.equal(other[(n, "dst1")], full) and root[(n, "dst1")] is None


def test_assemble_strided_single_process_and_errors(tmp_path):
    local = torch.randn(5, 2)
    assert assemble_strided(local, 5) is local
    out = np.lib.format.open_memmap(str(tmp_path / "a.npy"), mode="w+", dtype=np.float32, shape=(5, 2))
    assert torch.equal(torch.from_numpy(np.array(assemble_strided(local, 5, out=out))), local)
    with pytest.raises(ValueError, match="`local`"):
        assemble_strided(local, 6)
    with pytest.raises(ValueError, match="`out`"):
        assemble_strided(local, 5, out=torch.empty(4, 2))
    with pytest.raises(ValueError, match="`chunk_rows`"):
        assemble_strided(local, 5, chunk_rows=0)


def test_out_of_core_with_rank_local_cache_dirs(distributed_results, single_results):
    for result in distributed_results:
        out_of_core = result["out_of_core"]
        assert not out_of_core["from_cache"]
        assert torch.allclose(out_of_core["scores"], single_results["scores"], atol=1e-6, rtol=0)
        for key in ("proponents", "opponents"):
            assert torch.allclose(out_of_core[key][1], single_results[key][1], atol=1e-6, rtol=0)
    # Rank 0 wrote the fit; no feature file is left on any rank.
    fits = [f for f in distributed_results[0]["cache_files"] if not f.endswith(".lock")]
    assert len(fits) == 1 and fits[0].startswith("dualda-") and fits[0].endswith(".pt")
    assert all(f.startswith("dualda-") for f in distributed_results[0]["cache_files"])
    assert distributed_results[1]["cache_files"] == []


@pytest.mark.parametrize("case,from_cache", [("cache_hit", True), ("cache_miss", False)])
def test_rank0_decides_cache_hits(distributed_results, single_results, case, from_cache):
    runs = [result[case] for result in distributed_results]
    assert [run["from_cache"] for run in runs] == [from_cache] * WORLD
    assert runs[0]["fit_stats"] == runs[1]["fit_stats"]
    assert sum(run["n_local_support"] for run in runs) == single_results["n_support"]
    for run in runs:
        assert torch.equal(run["scores"], runs[0]["scores"])
        assert torch.equal(run["proponents"][0], runs[0]["proponents"][0])
        assert torch.allclose(run["scores"], single_results["scores"], atol=1e-6, rtol=0)


def test_out_of_core_equals_in_memory(distributed_results, single_results, tmp_path):
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


def test_feature_store_hides_the_rank_arithmetic(tmp_path):
    from captum_dualxda._core.store import FeatureStore

    full = torch.arange(7 * 3, dtype=torch.float32).reshape(7, 3)
    whole = FeatureStore(full, 7)
    shard = FeatureStore(full[1::2].clone(), 7, rank=1, world=2)  # rank 1 of 2 holds samples 1, 3, 5
    assert torch.equal(whole.rows(torch.tensor([6, 0])), full[[6, 0]])
    assert torch.equal(shard.rows(torch.tensor([5, 1])), full[[5, 1]])
    assert shard.held_indices().tolist() == [1, 3, 5] and whole.held_indices().tolist() == list(range(7))
    with pytest.raises(ValueError, match="holds only the samples"):
        shard.rows(torch.tensor([2]))
    blocks = list(whole.chunks(budget_bytes=2 * 3 * 8))  # two rows per block (budgets count float64 copies)
    assert [start for start, _ in blocks] == [0, 2, 4, 6]
    assert torch.equal(torch.cat([block for _, block in blocks]), full)
    path = tmp_path / "scratch.npy"
    np.save(path, full.numpy())
    mapped = FeatureStore(torch.from_numpy(np.load(path, mmap_mode="r+")), 7, path=str(path))
    mapped.close()
    assert not path.exists()
