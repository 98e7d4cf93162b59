"""Checkpoint ensembles: DualDA(..., checkpoints=...) against independent per-checkpoint fits."""

import os

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from captum_dualxda import XDA, DualDA, rank_label_issues, xda_pairs
from captum_dualxda._core.checkpoints import checkpoint_paths, weights_restored


def make_net(seed: int, bias: bool = True) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(6, 12, bias=bias), nn.ReLU(), nn.Linear(12, 8, bias=bias), nn.ReLU(), nn.Linear(8, 3, bias=bias)
    )


@pytest.fixture()
def setting(tmp_path):
    """Three checkpoints (independently initialised nets) saved as state dicts, a model at a fourth."""
    torch.manual_seed(0)
    x = torch.randn(60, 6)
    y = torch.randint(0, 3, (60,))
    paths = []
    for seed in (1, 2, 3):
        path = tmp_path / f"epoch{seed}.pt"
        torch.save(make_net(seed).state_dict(), path)
        paths.append(str(path))
    model = make_net(9)
    return model, TensorDataset(x, y), paths, torch.randn(7, 6), torch.randint(0, 3, (7,))


def state_of(model: nn.Module):
    return {name: value.clone() for name, value in model.state_dict().items()}


def reference_fits(paths, train, **kwargs):
    fits = []
    for path in paths:
        net = make_net(0)
        net.load_state_dict(torch.load(path))
        fits.append((net, DualDA(net, "4", train, **kwargs)))
    return fits


def test_influence_is_the_mean_of_independent_fits(setting):
    model, train, paths, x_test, t_test = setting
    before = state_of(model)
    ensemble = DualDA(model, "4", train, C=0.1, checkpoints=paths)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # model given back
    expected = torch.stack([d.influence((x_test, t_test)) for _, d in reference_fits(paths, train, C=0.1)]).mean(0)
    scores = ensemble.influence((x_test, t_test))
    assert torch.allclose(scores, expected, atol=1e-6)
    top = ensemble.influence((x_test, t_test), k=5)
    assert torch.allclose(top.influence_scores, expected.topk(5, dim=1).values, atol=1e-6)
    assert torch.allclose(expected.gather(1, top.indices), top.influence_scores, atol=1e-6)
    opponents = ensemble.influence((x_test, t_test), k=4, proponents=False)
    assert torch.allclose(opponents.influence_scores, expected.topk(4, dim=1, largest=False).values, atol=1e-6)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # the mean differs from any single checkpoint's scores: the test would catch "last checkpoint only"
    single = reference_fits(paths[-1:], train, C=0.1)[0][1].influence((x_test, t_test))
    assert not torch.allclose(scores, single, atol=1e-3)


def test_self_influence_and_directory_order(setting, tmp_path):
    model, train, paths, _, _ = setting
    ensemble = DualDA(model, "4", train, C=0.1, checkpoints=str(tmp_path))
    assert ensemble.checkpoints == sorted(paths)
    expected = torch.stack([d.self_influence() for _, d in reference_fits(paths, train, C=0.1)]).mean(0)
    assert torch.allclose(ensemble.self_influence(), expected, atol=1e-6)
    assert len(ensemble.fit_stats["checkpoints"]) == 3 and ensemble.fit_stats["converged"]
    assert "checkpoints=3" in repr(ensemble)


def test_custom_loader_and_errors(setting, tmp_path):
    model, train, paths, x_test, t_test = setting
    seen = []

    def load(net, path):
        seen.append(path)
        net.load_state_dict({"checkpoint": torch.load(path)}["checkpoint"])
        return 0.5  # a learning rate, as for TracInCP: ignored

    ensemble = DualDA(model, "4", train, C=0.1, checkpoints=iter(paths), checkpoints_load_func=load)
    assert seen == paths
    seen.clear()
    ensemble.influence((x_test, t_test))
    assert seen == paths  # one load per checkpoint for the one test batch
    with pytest.raises(FileNotFoundError, match="checkpoints"):
        DualDA(model, "4", train, checkpoints=[paths[0], str(tmp_path / "missing.pt")])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="names no checkpoint"):
        DualDA(model, "4", train, checkpoints=str(empty))
    with pytest.raises(ValueError, match="needs `checkpoints`"):
        DualDA(model, "4", train, checkpoints_load_func=load)
    with pytest.raises(TypeError, match="checkpoints_load_func"):
        DualDA(model, "4", train, checkpoints=paths, checkpoints_load_func="torch.load")
    with pytest.raises(AttributeError, match="ensemble of 3 checkpoints"):
        _ = ensemble.coefficients
    with pytest.raises(AttributeError, match="ensemble of 3 checkpoints"):
        ensemble.coefficients_at(torch.tensor([0]), torch.tensor([0]))
    with pytest.raises(ValueError, match="checkpoint ensemble"):
        rank_label_issues(ensemble)


def test_weights_restored_after_an_error(setting):
    model, _, paths, _, _ = setting
    before = state_of(model)

    def broken(net, path):
        net.load_state_dict(torch.load(path))
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError, match="disk gone"), weights_restored(model):
        broken(model, paths[0])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(TypeError, match="checkpoints"):
        checkpoint_paths(3)


def test_xda_pairs_of_an_ensemble_add_up_to_the_ensemble_score(tmp_path):
    """Bias-free ReLU nets, gradient x input: every heatmap sums exactly to its (mean) score."""
    torch.manual_seed(0)
    x, y = torch.randn(40, 6), torch.randint(0, 3, (40,))
    paths = []
    for seed in (1, 2):
        path = tmp_path / f"m{seed}.pt"
        torch.save(make_net(seed, bias=False).state_dict(), path)
        paths.append(str(path))
    model = make_net(5, bias=False)
    train = TensorDataset(x, y)
    ensemble = DualDA(model, "4", train, C=0.1, checkpoints=paths, fit_intercept=False)
    x_test, t_test = torch.randn(3, 6), torch.tensor([0, 1, 2])
    top = ensemble.influence((x_test, t_test), k=4)
    before = state_of(model)
    pairs = xda_pairs(ensemble, XDA(model, "4"), x_test, t_test, top.indices)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.allclose(pairs.scores, top.influence_scores, atol=1e-5)
    assert torch.allclose(pairs.train_relevance.sum(-1), pairs.scores, atol=1e-5)
    assert torch.allclose(pairs.test_relevance.sum(-1), pairs.scores, atol=1e-5)


def test_one_cache_entry_per_checkpoint(setting, tmp_path):
    model, train, paths, x_test, t_test = setting
    cache = tmp_path / "cache"
    cache.mkdir()
    first = DualDA(model, "4", train, C=0.1, checkpoints=paths, cache_dir=str(cache))
    assert len([f for f in os.listdir(cache) if f.endswith(".pt")]) == 3
    again = DualDA(model, "4", train, C=0.1, checkpoints=paths, cache_dir=str(cache))
    assert all(stats["from_cache"] for stats in again.fit_stats["checkpoints"])
    assert torch.equal(first.influence((x_test, t_test)), again.influence((x_test, t_test)))
