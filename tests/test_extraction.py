"""Training-feature extraction: exact features, loader settings, mixed precision, the cache key."""

from __future__ import annotations

import copy
import os
import sys

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from captum_dualxda import DualDA
from captum_dualxda._core.data import as_dataloader
from captum_dualxda._core.features import batch_features
from captum_dualxda._core.state import fit_fingerprint
from captum_dualxda._core.store import FeatureStore, extract_features
from captum_dualxda.solver.settings import SolverSettings


def _reference_features(net: nn.Module, x: torch.Tensor, autocast=None) -> torch.Tensor:
    """phi by hand: one plain forward of all of ``x`` in eval mode, the input of ``net.fc`` caught by a hook."""
    seen = []
    handle = net.fc.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
            net(x)
    finally:
        handle.remove()
        net.train(was_training)
    return seen[0].float()


@pytest.fixture(scope="module")
def train(digits):
    x, y, _, _ = digits
    return TensorDataset(x[:300], y[:300])


def test_features_are_those_of_a_plain_forward_pass(train, digits_cnn):
    x, y = train.tensors
    features, labels = extract_features(digits_cnn, digits_cnn.fc, DataLoader(train, batch_size=64))
    reference = _reference_features(digits_cnn, x)
    assert features.dtype == torch.float32 and features.shape == (300, 32)
    assert torch.allclose(features, reference, rtol=1e-6, atol=1e-6)
    assert torch.equal(features[:64], _reference_features(digits_cnn, x[:64]))  # same batch: bit-identical
    assert torch.equal(labels, y)
    # extraction runs under inference_mode, but what it returns is ordinary storage
    assert not features.is_inference() and not labels.is_inference()
    features.mul_(1.0)


def test_a_shuffled_loader_with_workers_gives_the_features_in_dataset_order(train, digits_cnn):
    x, y = train.tensors
    loader = as_dataloader(DataLoader(train, batch_size=37, shuffle=True, num_workers=2), 8)
    assert loader.num_workers == 2 and loader.batch_size == 37
    features, labels = extract_features(digits_cnn, digits_cnn.fc, loader)
    assert torch.equal(labels, y)
    assert torch.allclose(features, _reference_features(digits_cnn, x), rtol=1e-6, atol=1e-6)


class _BrokenAt(Dataset):
    """``train`` until sample ``broken``, which raises (a loader failing in the middle of a pass)."""

    def __init__(self, train: TensorDataset, broken: int) -> None:
        self.train, self.broken = train, broken

    def __len__(self) -> int:
        return len(self.train)

    def __getitem__(self, i: int):
        if i == self.broken:
            raise RuntimeError("broken sample")
        return self.train[i]


def test_one_probe_for_the_whole_pass_still_restores_the_model_when_a_batch_fails(train, digits_cnn):
    net = copy.deepcopy(digits_cnn).train()
    net.features[1].eval()  # a frozen BatchNorm stays frozen
    with pytest.raises(RuntimeError, match="broken sample"):
        extract_features(net, net.fc, DataLoader(_BrokenAt(train, 150), batch_size=64))
    assert [module.training for module in net.modules()] == [module is not net.features[1] for module in net.modules()]
    assert not net.fc._forward_pre_hooks


class _Poisoned(nn.Module):
    """A linear classifier whose features are ``x`` itself, so a non-finite input is a non-finite feature."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_features_are_refused(bad):
    x = torch.randn(30, 4)
    x[17, 2] = bad
    with pytest.raises(ValueError, match="contain NaN or inf"):
        DualDA(_Poisoned(), "fc", TensorDataset(x, torch.arange(30) % 3), batch_size=8)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_features_are_those_of_an_autocast_forward_stored_in_float32(dtype, train, digits_cnn, tmp_path):
    x, _ = train.tensors
    loader = DataLoader(train, batch_size=300)
    features, _ = extract_features(digits_cnn, digits_cnn.fc, loader, autocast=dtype)
    reference = _reference_features(digits_cnn, x, autocast=dtype)
    assert features.dtype == torch.float32 and torch.equal(features, reference)
    full = _reference_features(digits_cnn, x)
    relative = (features - full).norm() / full.norm()
    assert 0 < relative < (2e-2 if dtype == torch.bfloat16 else 2e-3)  # changed, by the dtype's rounding
    # out of core: NumPy has no bfloat16, the memory-mapped file still gets float32 rows
    mapped, _ = extract_features(digits_cnn, digits_cnn.fc, loader, out_path=str(tmp_path / "phi.npy"), autocast=dtype)
    assert torch.equal(mapped, features)


def test_dualda_with_autocast_scores_with_autocast_features(train, digits, digits_cnn):
    _, _, xt, _ = digits
    xt = xt[:20]
    dualda = DualDA(digits_cnn, "fc", train, C=0.01, autocast=torch.bfloat16)
    assert dualda.autocast is torch.bfloat16
    pred = digits_cnn(xt).argmax(1)
    phi_train = batch_features(digits_cnn, digits_cnn.fc, (train.tensors[0],), torch.bfloat16).double()
    phi_test = batch_features(digits_cnn, digits_cnn.fc, (xt,), torch.bfloat16).double()
    coefficients = dualda.coefficients.double()[:, pred].T  # (n_test, n_train)
    expected = coefficients * (phi_test @ phi_train.T)
    assert torch.allclose(dualda.influence((xt, pred)).double(), expected, rtol=1e-4, atol=1e-6)


def test_autocast_is_part_of_the_cache_key(train, digits_cnn, tmp_path):
    loader = DataLoader(train, batch_size=100)
    settings = SolverSettings(C=0.01)
    keys = {
        dtype: fit_fingerprint(digits_cnn, "fc", loader, settings, autocast=dtype)
        for dtype in (None, torch.bfloat16, torch.float16)
    }
    assert len(set(keys.values())) == 3
    assert keys[None] == fit_fingerprint(digits_cnn, "fc", loader, settings)  # full-precision keys are unchanged
    full = DualDA(digits_cnn, "fc", train, C=0.01, cache_dir=str(tmp_path))
    mixed = DualDA(digits_cnn, "fc", train, C=0.01, cache_dir=str(tmp_path), autocast=torch.bfloat16)
    assert not mixed.fit_stats["from_cache"] and mixed.cache_path != full.cache_path
    assert len([name for name in os.listdir(tmp_path) if name.endswith(".pt")]) == 2
    again = DualDA(digits_cnn, "fc", train, C=0.01, cache_dir=str(tmp_path), autocast=torch.bfloat16)
    assert again.fit_stats["from_cache"] and torch.equal(again.coefficients, mixed.coefficients)


@pytest.mark.parametrize("value", [torch.float32, torch.float64, torch.int8, "bf16", "bfloat16", True, 16])
def test_bad_autocast_values_are_refused_before_any_work(value, train, digits_cnn, monkeypatch):
    import captum_dualxda._core.store as store_module

    monkeypatch.setattr(
        store_module, "extract_features", lambda *a, **k: pytest.fail("extracted despite a bad autocast")
    )
    with pytest.raises(ValueError, match=r"`autocast` must be None .*torch.bfloat16 or torch.float16, got"):
        DualDA(digits_cnn, "fc", train, C=0.01, autocast=value)
    with pytest.raises(ValueError, match="`autocast`"):
        extract_features(digits_cnn, digits_cnn.fc, DataLoader(train, batch_size=100), autocast=value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("autocast", [None, torch.bfloat16])
def test_cuda_features_reach_host_storage_through_asynchronous_copies(autocast, train, digits_cnn, tmp_path):
    """On a GPU, host storage (``device="cpu"``, ``out_path``) is filled through pinned buffers and events."""
    net = copy.deepcopy(digits_cnn).cuda()
    loader = DataLoader(train, batch_size=16, pin_memory=True)  # many batches: both buffers are reused
    on_device, labels = extract_features(net, net.fc, loader, torch.device("cuda"), autocast=autocast)
    on_host, host_labels = extract_features(net, net.fc, loader, torch.device("cpu"), autocast=autocast)
    store, _ = FeatureStore.extract(
        net, net.fc, loader, torch.device("cpu"), out_path=str(tmp_path / "phi.npy"), autocast=autocast
    )
    assert (
        on_host.device.type == "cpu"
        and torch.equal(on_host, on_device.cpu())
        and torch.equal(host_labels, labels.cpu())
    )
    assert torch.equal(store.features, on_device.cpu())
    store.close()


def test_the_fit_benchmark_runs_at_toy_size():
    """``benchmarks/fit.py`` stays runnable: its rows at toy size, timing and the autocast comparison."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "fit.py")
    spec = importlib.util.spec_from_file_location("benchmark_fit", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    rows = module.run(["bert"], repeats=1, tiny=True, scores=True, explanations=True)
    timing, scores = rows
    assert timing["kind"] == "time" and timing["n_train"] == 96 and timing["converged"]
    assert timing["fit"] >= timing["extraction"] > 0 and timing["ratio"] == pytest.approx(
        timing["fit"] / timing["forward"]
    )
    assert scores["kind"] == "scores" and scores["precision"] == "bfloat16"
    assert 0.9 < scores["spearman_median"] <= 1 and 0 < scores["frobenius_rel_diff"] < 0.1
    assert timing["explain"] > 0 and timing["explain_ratio"] == pytest.approx(timing["explain"] / timing["forward"])
    assert "| BERT" in module.time_table(rows) and "| BERT" in module.score_table(rows)
    assert "explain / forward" in module.time_table(rows)
    with pytest.raises(ValueError, match="`autocast` must be one of"):
        module.run(["bert"], autocast="fp8", tiny=True)
