"""One validation rule per kind of argument (``captum_dualxda._utils.validation``), at every public entry point.

NumPy scalars (and 0-d arrays and tensors) are numbers like Python's and give the same result;
booleans are not numbers; flags are booleans only; every message names the argument.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import clustered_features
from torch import nn
from torch.utils.data import TensorDataset

from captum_dualxda import DualDA, fit_crammer_singer, rank_label_issues, transformer_composite
from captum_dualxda._core.distributed import assemble_strided
from captum_dualxda._utils.validation import (
    check_flag,
    check_integer,
    check_non_negative,
    check_positive,
    check_real,
    check_seed,
)
from captum_dualxda.choose_c import sweep_C
from captum_dualxda.demo import check_demo_arguments
from captum_dualxda.metrics import class_detection, surrogate_fidelity, training_loss
from captum_dualxda.solver import fit_crammer_singer_path
from captum_dualxda.visualization import heatmap_rgb


# ------------------------------------------------------------------------------------------
# The rules themselves
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "value",
    [
        0.25,
        1,
        np.float32(0.25),
        np.float64(0.25),
        np.float16(0.25),
        np.int64(3),
        np.uint8(3),
        np.array(0.25),
        torch.tensor(0.25),
        torch.tensor(3),
    ],
)
def test_positive_accepts_every_kind_of_real_number(value):
    result = check_positive(value, "C")
    assert type(result) is float and result == float(np.asarray(value))


@pytest.mark.parametrize(
    "value, error",
    [
        (True, TypeError),
        (np.True_, TypeError),
        (torch.tensor(True), TypeError),
        ("0.1", TypeError),
        (None, TypeError),
        (1j, TypeError),
        (torch.tensor([0.1]), TypeError),
        ([0.1], TypeError),
        (0.0, ValueError),
        (-1, ValueError),
        (np.float32("nan"), ValueError),
        (math.inf, ValueError),
        (-math.inf, ValueError),
    ],
)
def test_positive_refuses_with_the_argument_value_and_expectation(value, error):
    with pytest.raises(error) as info:
        check_positive(value, "C")
    message = str(info.value)
    assert message.startswith("`C` must be a finite real number > 0, got ")
    assert type(value).__name__ in message
    assert isinstance(info.value, ValueError)  # wrong types stay catchable as ValueError (as before)


def test_real_ranges_and_optional():
    assert check_real(0.0, "flip_rate", low=0.0, high=1.0, high_inclusive=False) == 0.0
    with pytest.raises(ValueError, match=r"`flip_rate` must be a finite real number in \[0, 1\), got 1.0"):
        check_real(1.0, "flip_rate", low=0.0, high=1.0, high_inclusive=False)
    assert check_real(math.inf, "x", allow_inf=True) == math.inf
    with pytest.raises(ValueError, match="`x`"):
        check_real(math.nan, "x", allow_inf=True)
    assert check_non_negative(np.float32(0), "tol") == 0.0
    with pytest.raises(ValueError, match="`tol` must be a finite real number >= 0"):
        check_non_negative(-1e-9, "tol")
    assert check_positive(None, "vmax", optional=True) is None
    with pytest.raises(TypeError, match="`vmax` must be None or a finite real number > 0"):
        check_positive("auto", "vmax", optional=True)


@pytest.mark.parametrize("value", [5, np.int64(5), np.int32(5), np.uint16(5), np.array(5), torch.tensor(5)])
def test_integer_accepts_numpy_and_zero_d_integers(value):
    result = check_integer(value, "max_iter", low=1)
    assert type(result) is int and result == 5


@pytest.mark.parametrize(
    "value, error, extra",
    [
        (True, TypeError, ""),
        (np.False_, TypeError, ""),
        (5.0, TypeError, "int(5.0)"),
        (1e5, TypeError, "int(100000.0)"),
        (np.float32(2.5), TypeError, ""),
        ("5", TypeError, ""),
        (0, ValueError, ""),
        (np.int64(-3), ValueError, ""),
    ],
)
def test_integer_refusals_name_the_argument(value, error, extra):
    with pytest.raises(error, match="^`max_iter` must be an integer >= 1, got ") as info:
        check_integer(value, "max_iter", low=1)
    assert extra in str(info.value)


def test_integer_bounds_optional_and_wording():
    assert check_integer(None, "k", low=1, optional=True) is None
    with pytest.raises(ValueError, match="`k` must be None or an integer >= 1"):
        check_integer(0, "k", low=1, optional=True)
    with pytest.raises(ValueError, match=r"`dst` must be an integer in 0..2, got 3"):
        check_integer(3, "dst", low=0, high=2)
    with pytest.raises(TypeError, match="`memory_budget` must be None or a number of bytes >= 0, got True"):
        check_integer(True, "memory_budget", low=0, optional=True, what="a number of bytes")


def test_flags_are_booleans_only():
    assert check_flag(True, "fit_intercept") is True
    assert check_flag(np.False_, "fit_intercept") is False
    assert check_flag(torch.tensor(True), "fit_intercept") is True
    assert check_flag(None, "distributed", optional=True) is None
    for bad in (1, 0, "False", "yes", None, np.int64(1), 1.0):
        with pytest.raises(TypeError, match="^`fit_intercept` must be True or False, got "):
            check_flag(bad, "fit_intercept")


def test_seed_range():
    assert check_seed(np.uint64(2**64 - 1)) == 2**64 - 1
    assert check_seed(-(2**63)) == -(2**63)
    for bad in (2**64, -(2**63) - 1):
        with pytest.raises(ValueError, match="`seed`"):
            check_seed(bad)
    with pytest.raises(TypeError, match="`seed`"):
        check_seed(1.0)


# ------------------------------------------------------------------------------------------
# The public entry points: NumPy scalars give the result of Python numbers, booleans refused
# ------------------------------------------------------------------------------------------
class FeatureNet(nn.Module):
    """``fc`` applied to the input itself: ``phi(x) = x``."""

    def __init__(self, d: int, k: int) -> None:
        super().__init__()
        self.fc = nn.Linear(d, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


@pytest.fixture(scope="module")
def small():
    x, y = clustered_features(n=120, d=6, k=3, seed=3)
    torch.manual_seed(0)
    net = FeatureNet(6, 3).eval()
    return net, TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), torch.from_numpy(x), torch.from_numpy(y)


def count_forward_calls(net):
    calls = []
    handle = net.register_forward_pre_hook(lambda module, args: calls.append(1))
    return calls, handle


# Python values and NumPy / 0-d tensor spellings of the same numbers (exactly representable).
DUALDA_SETTINGS = [
    ("C", 0.125, np.float32(0.125)),
    ("C", 0.25, torch.tensor(0.25, dtype=torch.float64)),
    ("tol", 1e-3, np.float64(1e-3)),
    ("max_iter", 400, np.int64(400)),
    ("seed", 3, np.int32(3)),
    ("batch_size", 32, np.int64(32)),
    ("fit_intercept", False, np.False_),
]


@pytest.mark.parametrize("name, python, numpy", DUALDA_SETTINGS)
def test_dualda_numpy_scalars_give_the_python_result(small, name, python, numpy):
    net, train, _, _ = small
    base = dict(C=0.125, tol=1e-3)
    ours = DualDA(net, "fc", train, **{**base, name: numpy})
    reference = DualDA(net, "fc", train, **{**base, name: python})
    assert type(getattr(ours, name)) is type(getattr(reference, name))
    assert torch.equal(ours.coefficients, reference.coefficients)
    assert ours.fit_stats["n_iter"] == reference.fit_stats["n_iter"]


def test_dualda_memory_budget_accepts_numpy_integers(small, tmp_path):
    net, train, x, y = small
    mapped = DualDA(net, "fc", train, C=0.125, cache_dir=str(tmp_path), memory_budget=np.int64(0))
    in_memory = DualDA(net, "fc", train, C=0.125, cache_dir=str(tmp_path / "b"), memory_budget=np.int64(10**9))
    assert mapped.memory_budget == 0 and type(mapped.memory_budget) is int
    batch = (x[:5], y[:5])
    assert torch.allclose(mapped.influence(batch), in_memory.influence(batch), atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(C=True), "C"),
        (dict(C="0.1"), "C"),
        (dict(tol=True), "tol"),
        (dict(max_iter=True), "max_iter"),
        (dict(max_iter=1e5), "max_iter"),
        (dict(max_iter=np.float64(100)), "max_iter"),
        (dict(memory_budget=True), "memory_budget"),
        (dict(memory_budget=-1), "memory_budget"),
        (dict(memory_budget=1e9), "memory_budget"),
        (dict(seed=True), "seed"),
        (dict(seed=1.5), "seed"),
        (dict(seed=2**64), "seed"),
        (dict(batch_size=True), "batch_size"),
        (dict(batch_size=np.int64(0)), "batch_size"),
        (dict(fit_intercept="False"), "fit_intercept"),
        (dict(fit_intercept=1), "fit_intercept"),
        (dict(show_progress="no"), "show_progress"),
        (dict(distributed=0), "distributed"),
    ],
)
def test_dualda_refuses_before_any_forward_pass(small, tmp_path, kwargs, name):
    net, train, _, _ = small
    calls, handle = count_forward_calls(net)
    try:
        with pytest.raises(ValueError, match=f"`{name}`"):
            DualDA(net, "fc", train, cache_dir=str(tmp_path), **kwargs)
    finally:
        handle.remove()
    assert calls == []


def test_influence_and_metrics_arguments(small):
    net, train, x, y = small
    dualda = DualDA(net, "fc", train, C=0.125)
    batch = (x[:6], y[:6])
    ours, reference = (
        dualda.influence(batch, k=np.int64(4), proponents=np.False_),
        dualda.influence(batch, k=4, proponents=False),
    )
    assert torch.equal(ours.indices, reference.indices) and torch.equal(
        ours.influence_scores, reference.influence_scores
    )
    for kwargs, name in (
        (dict(k=True), "k"),
        (dict(k=0), "k"),
        (dict(k=2.0), "k"),
        (dict(k=3, proponents="no"), "proponents"),
    ):
        with pytest.raises(ValueError, match=f"`{name}`"):
            dualda.influence(batch, **kwargs)
    scores = dualda.influence(batch)
    assert class_detection(scores, y, y[:6], k=np.int64(3)) == class_detection(scores, y, y[:6], k=3)
    with pytest.raises(ValueError, match="`k`"):
        class_detection(scores, y, y[:6], k=True)
    fidelity = surrogate_fidelity(dualda, x, batch_size=np.int64(50))
    np.testing.assert_array_equal(
        fidelity.per_sample_cosine, surrogate_fidelity(dualda, x, batch_size=50).per_sample_cosine
    )
    for bad in (True, 0, -1, 2.0):
        with pytest.raises(ValueError, match="`batch_size`"):
            surrogate_fidelity(dualda, x, batch_size=bad)
    assert torch.equal(training_loss(net, train, batch_size=np.int64(50)), training_loss(net, train, batch_size=50))
    with pytest.raises(ValueError, match="`batch_size`"):
        training_loss(net, train, batch_size=True)


def test_rank_label_issues_numpy_C(small):
    net, train, _, _ = small
    dualda = DualDA(net, "fc", train, C=0.125)
    ours, reference = rank_label_issues(dualda, C=np.float32(0.25)), rank_label_issues(dualda, C=0.25)
    assert torch.equal(ours.indices, reference.indices) and torch.equal(ours.scores, reference.scores)
    for kwargs, name in (
        (dict(C=True), "C"),
        (dict(C=np.float32("nan")), "C"),
        (dict(show_progress=1), "show_progress"),
    ):
        with pytest.raises(ValueError, match=f"`{name}`"):
            rank_label_issues(dualda, **kwargs)


@pytest.mark.filterwarnings("ignore::captum_dualxda.solver.ConvergenceWarning")  # max_iter=30 stops early
@pytest.mark.parametrize(
    "name, python, numpy",
    [
        ("C", 0.5, np.float32(0.5)),
        ("tol", 1e-3, np.float32(2**-10)),
        ("max_iter", 30, np.int64(30)),
        ("seed", 2, np.uint8(2)),
        ("intercept_scaling", 2.0, np.float16(2.0)),
        ("n_classes", 4, np.int64(4)),
    ],
)
def test_fit_crammer_singer_numpy_scalars(name, python, numpy):
    x, y = clustered_features(n=80, d=5, k=3, seed=1)
    python = 2**-10 if name == "tol" else python
    ours = fit_crammer_singer(x, y, **{name: numpy})
    reference = fit_crammer_singer(x, y, **{name: python})
    assert torch.equal(ours.alpha, reference.alpha) and ours.n_iter == reference.n_iter


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(C=True), "C"),
        (dict(tol=False), "tol"),
        (dict(max_iter=True), "max_iter"),
        (dict(max_iter=2.5), "max_iter"),
        (dict(seed=0.5), "seed"),
        (dict(fit_intercept="yes"), "fit_intercept"),
        (dict(intercept_scaling=True), "intercept_scaling"),
        (dict(n_classes=3.0), "n_classes"),
        (dict(sparse_alpha=1), "sparse_alpha"),
        (dict(backend="bdcd", block_size=True), "block_size"),
        (dict(backend="bdcd", block_size=np.float64(8)), "block_size"),
    ],
)
def test_fit_crammer_singer_refusals(kwargs, name):
    x, y = clustered_features(n=40, d=4, k=3, seed=1)
    with pytest.raises(ValueError, match=f"`{name}`"):
        fit_crammer_singer(x, y, **kwargs)


def test_bdcd_block_size_numpy_integer():
    x, y = clustered_features(n=80, d=5, k=3, seed=1)
    ours = fit_crammer_singer(x, y, C=0.5, backend="bdcd", block_size=np.int64(16), max_iter=50)
    reference = fit_crammer_singer(x, y, C=0.5, backend="bdcd", block_size=16, max_iter=50)
    assert torch.equal(ours.alpha, reference.alpha)


def test_fit_path_numpy_Cs_and_names_the_bad_entry():
    x, y = clustered_features(n=80, d=5, k=3, seed=1)
    ours = fit_crammer_singer_path(x, y, [np.float32(0.5), torch.tensor(0.25)])
    reference = fit_crammer_singer_path(x, y, [0.5, 0.25])
    assert all(torch.equal(a.alpha, b.alpha) for a, b in zip(ours, reference))
    with pytest.raises(ValueError, match=r"`Cs\[1\]` must be a finite real number > 0, got True"):
        fit_crammer_singer_path(x, y, [0.5, True])


def test_sweep_C_numpy_settings_and_refusals_before_extraction(small):
    net, train, x, _ = small
    common = dict(test_inputs=x[:20], baselines=False)
    ours = sweep_C(
        net,
        "fc",
        train,
        Cs=np.array([0.5, 0.125], dtype=np.float32),
        k=np.int64(3),
        tol=np.float64(1e-3),
        max_iter=np.int64(500),
        seed=np.int64(1),
        batch_size=np.int64(40),
        **common,
    )
    reference = sweep_C(net, "fc", train, Cs=[0.5, 0.125], k=3, tol=1e-3, max_iter=500, seed=1, batch_size=40, **common)
    keys = ("C", "n_support", "class_detection", "agreement", "n_iter", "gap")
    assert [[getattr(r, key) for key in keys] for r in ours] == [[getattr(r, key) for key in keys] for r in reference]
    calls, handle = count_forward_calls(net)
    try:
        for kwargs, name in (
            (dict(Cs=[0.1, True]), r"Cs\[1\]"),
            (dict(k=True), "k"),
            (dict(tol=-1.0), "tol"),
            (dict(max_iter=1e4), "max_iter"),
            (dict(seed=-1.5), "seed"),
            (dict(baselines="yes"), "baselines"),
            (dict(fit_intercept=1), "fit_intercept"),
            (dict(show_progress="no"), "show_progress"),
            (dict(batch_size=True), "batch_size"),
            (dict(flipped=np.zeros(7, dtype=bool)), "flipped"),
        ):
            with pytest.raises(ValueError, match=f"`{name}`"):
                sweep_C(net, "fc", train, **kwargs)
    finally:
        handle.remove()
    assert calls == []


def test_other_entry_points():
    # transformer_composite: epsilon is checked before the model is looked at
    with pytest.raises(ValueError, match="`epsilon` must be a finite real number > 0, got True"):
        transformer_composite(nn.Linear(2, 2), epsilon=True)
    # heatmap_rgb: vmax as NumPy scalar or 0-d tensor
    rel = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    expected = heatmap_rgb(rel, vmax=4.0)
    assert np.array_equal(heatmap_rgb(rel, vmax=np.float32(4.0)), expected)
    assert np.array_equal(heatmap_rgb(rel, vmax=torch.tensor(4.0)), expected)
    with pytest.raises(ValueError, match="`vmax`"):
        heatmap_rgb(rel, vmax=True)
    # assemble_strided in one process: chunk_rows and dst
    local = torch.arange(6.0).reshape(3, 2)
    assert torch.equal(assemble_strided(local, 3, chunk_rows=np.int64(2)), local)
    for kwargs, name in (
        (dict(chunk_rows=True), "chunk_rows"),
        (dict(chunk_rows=0), "chunk_rows"),
        (dict(dst=1), "dst"),
        (dict(dst=True), "dst"),
    ):
        with pytest.raises(ValueError, match=f"`{name}`"):
            assemble_strided(local, 3, **kwargs)
    # the demo's settings
    check_demo_arguments(
        np.float64(0.1), np.float32(0.5), np.int64(2), np.int64(0), np.int64(1), np.int64(40), np.int64(5)
    )
    for args, name in (
        ((True, 0.5, 2, 0, 1, None), "flip_rate"),
        ((0.1, True, 2, 0, 1, None), "C"),
        ((0.1, 0.5, True, 0, 1, None), "k"),
        ((0.1, 0.5, 2, False, 1, None), "n_explain"),
        ((0.1, 0.5, 2, 0, True, None), "epochs"),
        ((0.1, 0.5, 2, 0, 1, True), "n_train"),
    ):
        with pytest.raises(ValueError, match=f"`{name}`"):
            check_demo_arguments(*args)
