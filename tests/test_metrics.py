"""captum_dualxda.metrics: hand-computed examples, sklearn agreement, DualDA consistency."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from captum_dualxda import DualDA
from captum_dualxda._core.features import batch_features
from captum_dualxda.choose_c import SweepRow, format_markdown, sweep_C
from captum_dualxda.metrics import (
    class_detection,
    class_detection_from_indices,
    hoyer_sparsity,
    lds,
    logit_fidelity,
    mislabel_auc,
    mislabel_detection_curve,
    mislabel_scores,
    random_class_detection,
    surrogate_fidelity,
    training_loss,
    zero_fraction,
)


# ---------------------------------------------------------------------------- mislabel detection
def test_mislabel_auc_hand_computed():
    # flipped: 0.9 and 0.4; clean: 0.1, 0.4, 0.8.
    # Pairs (flipped > clean): 0.9 beats all three (3), 0.4 beats 0.1 (1), ties 0.4 (0.5) -> 4.5 / 6.
    scores = [0.9, 0.1, 0.4, 0.4, 0.8]
    flipped = [True, False, True, False, False]
    assert mislabel_auc(scores, flipped) == pytest.approx(0.75)
    # indices instead of a mask, tensors instead of lists
    assert mislabel_auc(torch.tensor(scores), np.array([0, 2])) == pytest.approx(0.75)
    assert mislabel_auc([3.0, 2.0, 1.0], [True, False, False]) == 1.0
    assert mislabel_auc([1.0, 2.0, 3.0], [True, False, False]) == 0.0
    assert mislabel_auc([1.0, 1.0, 1.0], [True, False, False]) == 0.5


def test_mislabel_auc_matches_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    for trial in range(20):
        n = int(rng.integers(5, 300))
        scores = rng.integers(0, 6, n).astype(float) if trial % 2 else rng.normal(size=n)
        flipped = rng.random(n) < 0.2
        flipped[0], flipped[1] = True, False
        assert mislabel_auc(scores, flipped) == pytest.approx(roc_auc_score(flipped, scores), abs=1e-12)


def test_mislabel_auc_errors():
    with pytest.raises(ValueError, match="at least one flipped"):
        mislabel_auc([1.0, 2.0], [False, False])
    with pytest.raises(ValueError, match="NaN"):
        mislabel_auc([1.0, float("nan")], [True, False])
    with pytest.raises(ValueError, match="entries"):
        mislabel_auc([1.0, 2.0], [True])


def test_mislabel_detection_curve_hand_computed():
    # decreasing score: 0.9 (i0, flipped), 0.8 (i4), 0.4 (i2, flipped; ties -> lower index first), 0.4 (i3), 0.1 (i1)
    inspected, found = mislabel_detection_curve([0.9, 0.1, 0.4, 0.4, 0.8], [True, False, True, False, False])
    np.testing.assert_allclose(inspected, [0, 0.2, 0.4, 0.6, 0.8, 1.0])
    np.testing.assert_allclose(found, [0, 0.5, 0.5, 1.0, 1.0, 1.0])


def test_mislabel_detection_curve_errors():
    # no flipped sample: "fraction found" is undefined (the demo reports n/a at flip rate 0)
    with pytest.raises(ValueError, match="marks no sample"):
        mislabel_detection_curve([0.9, 0.1, 0.4], [False, False, False])
    with pytest.raises(ValueError, match="entries"):
        mislabel_detection_curve([0.9, 0.1, 0.4], [True, False])
    # every sample flipped is fine for the curve (unlike the AUC): the diagonal
    inspected, found = mislabel_detection_curve([0.9, 0.1, 0.4], np.array([0, 1, 2]))
    np.testing.assert_allclose(found, inspected)
    inspected, found = mislabel_detection_curve([0.9, 0.1], np.array([True, True]))
    np.testing.assert_allclose(found, inspected)


def _planted_flags(n=400, seed=0):
    rng = np.random.default_rng(seed)
    flags = rng.random(n) < 0.1
    return rng.normal(size=n) + 3 * flags, flags


@pytest.mark.parametrize(
    "spell",
    [
        lambda f: f.astype(int),
        lambda f: f.astype(np.int8),
        lambda f: f.astype(np.uint8),
        lambda f: f.astype(float),
        lambda f: torch.from_numpy(f).long(),
        lambda f: torch.from_numpy(f).float(),
        lambda f: f.astype(int).tolist(),
        lambda f: torch.from_numpy(f),
        lambda f: np.flatnonzero(f),
        lambda f: torch.from_numpy(np.flatnonzero(f)),
    ],
)
def test_mislabel_metrics_read_01_flags_as_a_mask_like_sklearn(spell):
    """scikit-learn's ``y_true`` convention: a 0/1 vector with one entry per sample is a mask."""
    from sklearn.metrics import roc_auc_score

    scores, flags = _planted_flags()
    expected = roc_auc_score(flags, scores)
    assert expected > 0.95
    assert mislabel_auc(scores, spell(flags)) == pytest.approx(expected, abs=1e-12)
    inspected, found = mislabel_detection_curve(scores, spell(flags))
    reference = np.r_[0.0, np.cumsum(flags[np.argsort(-scores, kind="stable")]) / flags.sum()]
    np.testing.assert_array_equal(found, reference)
    assert found[len(scores) // 10] > 0.8


def test_mislabel_flags_that_cannot_be_read_safely_are_refused_with_the_fix():
    # [0, 1] for two samples: the mask "sample 1" or the indices "samples 0 and 1"
    for ambiguous in (np.array([0, 1]), torch.tensor([1, 0])):
        with pytest.raises(ValueError, match="ambiguous") as info:
            mislabel_detection_curve([0.3, 0.7], ambiguous)
        assert "astype(bool)" in str(info.value) and "np.flatnonzero" in str(info.value)
    # a 0/1 vector of the wrong length is not read as the indices {0, 1}
    with pytest.raises(ValueError, match="one entry per sample") as info:
        mislabel_auc(np.arange(6.0), np.array([0, 1, 1, 0, 0]))
    assert "repeats a training index" in str(info.value)
    with pytest.raises(ValueError, match="repeats a training index"):
        mislabel_auc(np.arange(6.0), np.array([4, 2, 4]))
    with pytest.raises(ValueError, match="outside 0..5"):
        mislabel_auc(np.arange(6.0), np.array([1, 6]))
    with pytest.raises(ValueError, match="integer indices"):
        mislabel_auc(np.arange(6.0), np.array([0.0, 2.0]))  # float indices: neither a 0/1 mask nor integers
    with pytest.raises(ValueError, match="entries"):
        mislabel_auc(np.arange(6.0), np.ones(5, dtype=bool))
    # indices that happen to be 0 and 1 (fewer than n entries, distinct) stay indices
    assert mislabel_auc([5.0, 4.0, 1.0, 2.0], [0, 1]) == 1.0


def test_lds_reads_01_rows_with_the_same_rule():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(3, 8))
    masks = rng.random((6, 8)) < 0.5
    margins = rng.normal(size=(6, 3))
    expected = lds(scores, masks, margins)
    for spelled in (
        masks.astype(int),
        torch.from_numpy(masks).long(),
        [row.astype(int) for row in masks],
        [np.flatnonzero(row) for row in masks],
    ):
        np.testing.assert_array_equal(lds(scores, spelled, margins).per_sample, expected.per_sample)


class _Identity(nn.Module):
    """``fc`` on the input itself: ``phi(x) = x``."""

    def __init__(self, d, k):
        super().__init__()
        self.fc = nn.Linear(d, k)

    def forward(self, x):
        return self.fc(x)


def test_sweep_C_reads_01_flags_as_a_mask_and_refuses_bad_ones_before_extraction():
    from conftest import clustered_features

    x, y = clustered_features(n=150, d=6, k=3, noise=0.0, seed=2)
    rng = np.random.default_rng(0)
    flags = rng.random(len(y)) < 0.1
    y[flags] = (y[flags] + 1) % 3
    torch.manual_seed(0)
    net = _Identity(6, 3).eval()
    train = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    reference = sweep_C(net, "fc", train, Cs=[0.1], flipped=flags)
    assert reference[0].auc_hinge_loss > 0.9
    for spelled in (flags.astype(int), torch.from_numpy(flags).long(), np.flatnonzero(flags)):
        rows = sweep_C(net, "fc", train, Cs=[0.1], flipped=spelled)
        assert [(r.auc_self_influence, r.auc_hinge_loss, r.auc) for r in rows] == [
            (r.auc_self_influence, r.auc_hinge_loss, r.auc) for r in reference
        ]
    calls = []
    handle = net.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        for bad in (flags[:-1].astype(int), np.array([3, 3]), flags[:-1]):
            with pytest.raises(ValueError, match="`flipped`"):
                sweep_C(net, "fc", train, Cs=[0.1], flipped=bad)
    finally:
        handle.remove()
    assert calls == []


# ---------------------------------------------------------------------------- class detection
def test_class_detection_hand_computed():
    train_labels = [0, 1, 1, 0]
    scores = torch.tensor([[0.1, 0.5, 0.3, 0.9], [0.7, -1.0, 0.2, 0.6]])
    classes = [1, 0]
    # row 0: top-2 = {3 (label 0), 1 (label 1)} -> 1/2 of class 1; row 1: {0, 3}, both label 0 -> 1.
    assert class_detection(scores, train_labels, classes, k=2) == pytest.approx(0.75)
    np.testing.assert_allclose(class_detection(scores, train_labels, classes, k=2, reduction="none"), [0.5, 1.0])
    assert class_detection(scores, train_labels, classes, k=1) == pytest.approx(0.5)  # 3 (0) vs 1; 0 (0) vs 0
    assert class_detection(scores, train_labels, classes, k=10) == pytest.approx(0.5)  # k clipped to all 4
    # ties go to the lower index: all-zero row -> indices 0, 1
    assert class_detection(np.zeros((1, 4)), train_labels, [0], k=2) == pytest.approx(0.5)
    assert class_detection_from_indices([[3, 1], [0, 3]], train_labels, classes) == pytest.approx(0.75)
    assert class_detection_from_indices(torch.tensor([[3, 1], [0, 3]]), train_labels, classes) == pytest.approx(0.75)


def test_class_detection_accepts_captum_topk(digits_cnn, digits):
    x, y, xt, _ = digits
    dualda = DualDA(digits_cnn, "fc", TensorDataset(x[:300], y[:300]), C=0.01, batch_size=100)
    pred = digits_cnn(xt[:20]).argmax(1)
    top = dualda.influence((xt[:20], pred), k=5)
    scores = dualda.influence((xt[:20], pred))
    assert class_detection_from_indices(top, y[:300], pred) == pytest.approx(
        class_detection(scores, y[:300], pred, k=5)
    )


def test_random_class_detection_is_the_class_frequency():
    assert random_class_detection([0, 0, 0, 1], [0, 1]) == pytest.approx((0.75 + 0.25) / 2)
    np.testing.assert_allclose(random_class_detection([0, 0, 0, 1], [1, 1], reduction="none"), [0.25, 0.25])


# ---------------------------------------------------------------------------- sparsity
def test_zero_fraction_and_hoyer_hand_computed():
    scores = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [3.0, -4.0, 0.0, 0.0]])
    np.testing.assert_allclose(zero_fraction(scores), [0.75, 1.0, 0.0, 0.5])
    # n = 4, sqrt(n) = 2: one spike -> (2 - 1)/1 = 1; all-zero -> 1 by convention;
    # constant -> (2 - 4/2)/1 = 0; (3, -4, 0, 0): |t|_1 = 7, |t|_2 = 5 -> (2 - 1.4)/1 = 0.6
    np.testing.assert_allclose(hoyer_sparsity(scores), [1.0, 1.0, 0.0, 0.6], atol=1e-12)
    np.testing.assert_allclose(hoyer_sparsity(np.array([[5.0], [0.0]])), [1.0, 1.0])  # n = 1
    # scale invariance
    np.testing.assert_allclose(hoyer_sparsity(scores * 1e-7), hoyer_sparsity(scores), atol=1e-9)


# ---------------------------------------------------------------------------- fidelity
def test_logit_fidelity_hand_computed():
    net = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    sur = [[2.0, 0.0], [1.0, 0.0], [1.0, 1.0]]
    fid = logit_fidelity(torch.tensor(net), np.array(sur))
    # argmax: net (0, 1, 0 [tie -> lower]), surrogate (0, 0, 0): 2 of 3 agree.
    assert fid.agreement == pytest.approx(2 / 3)
    np.testing.assert_allclose(fid.per_sample_cosine, [1.0, 0.0, 1.0])
    assert fid.cosine == pytest.approx(2 / 3) and fid.n == 3
    assert logit_fidelity([[0.0, 0.0]], [[1.0, 0.0]]).cosine == 0.0
    with pytest.raises(ValueError, match="shapes"):
        logit_fidelity([[1.0, 0.0]], [[1.0, 0.0, 0.0]])


@pytest.fixture(scope="module")
def flipped_setup(digits, digits_cnn):
    x, y, xt, _ = digits
    n = 500
    g = torch.Generator().manual_seed(3)
    noisy = y[:n].clone()
    flip = torch.rand(n, generator=g) < 0.1
    noisy[flip] = (noisy[flip] + torch.randint(1, 10, (int(flip.sum()),), generator=g)) % 10
    train = TensorDataset(x[:n], noisy)
    return train, flip, xt[:60]


def test_surrogate_fidelity_matches_manual(flipped_setup, digits_cnn):
    train, _, xt = flipped_setup
    dualda = DualDA(digits_cnn, "fc", train, C=0.01, batch_size=100)
    fid = surrogate_fidelity(dualda, xt, batch_size=25)
    phi = batch_features(digits_cnn, digits_cnn.fc, (xt,)).double()
    manual = logit_fidelity(digits_cnn(xt).detach(), phi @ dualda.weight.double().T + dualda.intercept.double())
    assert fid.agreement == pytest.approx(manual.agreement)
    assert fid.cosine == pytest.approx(manual.cosine, abs=1e-6)
    assert 0.5 < fid.agreement <= 1.0
    # a tuple of model inputs and a DataLoader of Captum batches give the same
    assert surrogate_fidelity(dualda, (xt,)).agreement == fid.agreement
    loader = torch.utils.data.DataLoader(TensorDataset(xt, torch.zeros(len(xt), dtype=torch.long)), batch_size=16)
    assert surrogate_fidelity(dualda, loader).cosine == pytest.approx(fid.cosine, abs=1e-6)


def test_mislabel_scores_and_training_loss(flipped_setup, digits_cnn):
    train, flip, _ = flipped_setup
    dualda = DualDA(digits_cnn, "fc", train, C=0.01, batch_size=100)
    x, labels = train.tensors
    # Independent formulas: a_i^{y_i} ||phi_i||^2, and the Crammer-Singer slack of W phi + b.
    phi = batch_features(digits_cnn, digits_cnn.fc, (x,)).double()
    own = dualda.coefficients.double()[torch.arange(len(labels)), labels]
    assert torch.allclose(mislabel_scores(dualda).double(), own * phi.pow(2).sum(1), rtol=1e-5, atol=1e-7)
    scores = phi @ dualda.weight.double().T + dualda.intercept.double()
    margins = scores + 1.0
    margins[torch.arange(len(labels)), labels] -= 1.0
    slack = margins.amax(1) - scores[torch.arange(len(labels)), labels]
    assert torch.allclose(mislabel_scores(dualda, "hinge_loss").double(), slack, atol=1e-4)
    assert float(mislabel_auc(mislabel_scores(dualda, "hinge_loss"), flip)) > 0.9  # finds the flips
    with pytest.raises(ValueError, match="kind"):
        mislabel_scores(dualda, "loss")
    expected = nn.functional.cross_entropy(digits_cnn(x), labels, reduction="none").detach()  # eval mode
    digits_cnn.train()  # BatchNorm in train mode: the loss must still use its running statistics
    digits_cnn.head.eval()  # and a frozen part must stay frozen
    try:
        flags = [m.training for m in digits_cnn.modules()]
        loss = training_loss(digits_cnn, train, batch_size=128)
        assert [m.training for m in digits_cnn.modules()] == flags  # every submodule as found
    finally:
        digits_cnn.eval()
    assert torch.allclose(loss, expected, atol=1e-5)  # computed in eval mode (Dropout, BN statistics)


# ---------------------------------------------------------------------------- sweep
def test_sweep_C_matches_dualda_per_C(flipped_setup, digits_cnn):
    train, flip, xt = flipped_setup
    Cs = [0.1, 1e-3, 1e-2]
    rows = sweep_C(digits_cnn, "fc", train, Cs=Cs, test_inputs=xt, flipped=flip, batch_size=100)
    assert [r.method for r in rows] == [
        "DualDA C=0.001",
        "DualDA C=0.01",
        "DualDA C=0.1",
        "random order",
        "network loss",
    ]
    pred = digits_cnn(xt).argmax(1)
    for row in rows[:3]:
        dualda = DualDA(digits_cnn, "fc", train, C=row.C, batch_size=100)
        assert abs(row.n_support - dualda.support_indices.numel()) <= 2  # same optimum, solver path differs
        assert row.sparsity == pytest.approx(dualda.sparsity, abs=3 / 500)
        assert row.auc_self_influence == pytest.approx(mislabel_auc(dualda.self_influence(), flip), abs=2e-3)
        assert row.auc_hinge_loss == pytest.approx(mislabel_auc(dualda.train_hinge_loss, flip), abs=2e-3)
        scores = dualda.influence((xt, pred))
        assert row.zero_fraction == pytest.approx(zero_fraction(scores).mean(), abs=5e-3)
        assert row.class_detection == pytest.approx(class_detection(scores, train.tensors[1], pred), abs=0.02)
        assert row.agreement == pytest.approx(surrogate_fidelity(dualda, xt).agreement, abs=0.02)
        assert row.fit_time >= 0 and row.gap < 1e-3
    # smaller C -> more support vectors
    assert rows[0].n_support >= rows[1].n_support >= rows[2].n_support
    assert rows[3].auc == 0.5 and rows[3].class_detection == pytest.approx(
        random_class_detection(train.tensors[1], pred)
    )
    loss = training_loss(digits_cnn, train)
    assert rows[4].auc == pytest.approx(mislabel_auc(loss, flip), abs=1e-6)
    table = format_markdown(rows)
    lines = table.splitlines()
    assert len(lines) == 2 + len(rows) and lines[0].startswith("| method |")
    assert "mislabel AUC self-inf." in lines[0] and "–" in lines[-1]


def test_sweep_C_without_test_inputs_or_flips(flipped_setup, digits_cnn):
    train, _, _ = flipped_setup
    rows = sweep_C(digits_cnn, "fc", train, Cs=[1e-2], batch_size=100)
    assert len(rows) == 1 and rows[0].agreement is None and rows[0].auc_self_influence is None
    assert rows[0].train_agreement is not None


def test_format_markdown_cells():
    table = format_markdown([{"a": 1234, "b": 0.5, "c": None, "d": 1e-5}, {"a": 1, "b": math.nan, "c": "x", "d": True}])
    assert table.splitlines() == [
        "| a | b | c | d |",
        "| --- | ---: | ---: | ---: |",
        "| 1,234 | 0.500 | – | 1.0e-05 |",
        "| 1 | – | x | yes |",
    ]
    assert format_markdown([]) == ""
    assert "support vectors" in format_markdown([SweepRow("x", n_support=3)])


# ---------------------------------------------------------------------------- linear datamodeling score
def _brute_force_lds(scores, subset_lists, margins):
    """Per-test Spearman correlation from explicit loops and scipy (the independent reference)."""
    from scipy.stats import spearmanr

    out = []
    for t in range(scores.shape[0]):
        predicted = [sum(float(scores[t, i]) for i in subset) for subset in subset_lists]
        out.append(spearmanr(predicted, margins[:, t]).statistic)
    return np.array(out)


def test_lds_hand_computed():
    # Test sample 0: subset sums 1, 2, 3, 4 -> the margins' order (+1) and its reverse (-1).
    # Test sample 1: subset sums 1, 1, 2, 3 (ranks 1.5, 1.5, 3, 4) against margins ranked 1..4:
    # centred ranks (-1, -1, .5, 1.5) and (-1.5, -.5, .5, 1.5): 4.5 / sqrt(4.5 * 5) = 3 / sqrt(10).
    scores = np.array([[1.0, 2.0, 4.0], [1.0, 1.0, 3.0], [-1.0, -2.0, -4.0]])
    masks = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=bool)
    margins = np.array([[0.1, 5.0, 0.1], [0.2, 6.0, 0.2], [0.3, 7.0, 0.3], [0.4, 8.0, 0.4]])
    result = lds(scores, masks, margins)
    np.testing.assert_allclose(result.per_sample, [1.0, 3 / math.sqrt(10), -1.0], atol=1e-12)
    assert result.mean == pytest.approx((1.0 + 3 / math.sqrt(10) - 1.0) / 3)
    assert result.n_valid == 3
    mean, per_sample, n_valid = result  # a named tuple
    assert mean == result.mean and n_valid == 3
    # the same subsets as index lists (ragged) and as torch tensors give the same result
    ragged = [[0], [1], [0, 1], [2]]
    assert lds(torch.tensor(scores), ragged, torch.tensor(margins)).per_sample == pytest.approx(result.per_sample)
    assert lds(scores, [np.array(r) for r in ragged], margins).mean == pytest.approx(result.mean)


@pytest.mark.parametrize("layout", ["mask", "indices", "ragged", "torch"])
def test_lds_matches_scipy_spearman(layout):
    rng = np.random.default_rng(1)
    for trial in range(6):
        n_test, n_train, n_subsets = int(rng.integers(1, 8)), int(rng.integers(4, 40)), int(rng.integers(2, 30))
        # integer scores and margins on odd trials: tied sums and tied margins
        scores = (
            rng.integers(-2, 3, (n_test, n_train)).astype(float) if trial % 2 else rng.normal(size=(n_test, n_train))
        )
        margins = (
            rng.integers(0, 4, (n_subsets, n_test)).astype(float) if trial % 2 else rng.normal(size=(n_subsets, n_test))
        )
        size = n_train // 2
        if layout == "ragged":
            lists = [
                sorted(rng.choice(n_train, int(rng.integers(0, n_train + 1)), replace=False)) for _ in range(n_subsets)
            ]
        else:
            lists = [sorted(rng.choice(n_train, size, replace=False)) for _ in range(n_subsets)]
        expected = _brute_force_lds(scores, lists, margins)
        if layout == "mask":
            subsets = np.zeros((n_subsets, n_train), dtype=bool)
            for m, rows in enumerate(lists):
                subsets[m, rows] = True
        elif layout == "indices":
            subsets = np.array(lists, dtype=np.int64)  # (M, s), dattri's layout
        elif layout == "ragged":
            subsets = [np.array(r, dtype=np.int64) for r in lists]
        else:
            subsets = torch.tensor(np.array(lists, dtype=np.int64))
            scores, margins = torch.tensor(scores), torch.tensor(margins)
        result = lds(scores, subsets, margins)
        np.testing.assert_allclose(result.per_sample, expected, atol=1e-10)  # NaN where scipy's is NaN
        defined = ~np.isnan(expected)
        assert result.n_valid == int(defined.sum())
        if defined.any():
            assert result.mean == pytest.approx(expected[defined].mean(), abs=1e-10)
        else:
            assert math.isnan(result.mean)


def test_lds_invariances():
    rng = np.random.default_rng(2)
    scores = rng.normal(size=(5, 30))
    subsets = np.array([rng.choice(30, 15, replace=False) for _ in range(25)])
    margins = rng.normal(size=(25, 5))
    base = lds(scores, subsets, margins).per_sample
    # per-row positive rescaling and (for equal-size subsets) a per-row shift change nothing
    scaled = scores * rng.uniform(0.1, 10, (5, 1)) + rng.normal(size=(5, 1))
    np.testing.assert_allclose(lds(scaled, subsets, margins).per_sample, base, atol=1e-12)
    # a monotone transform of the margins changes nothing; negating the scores flips the sign
    np.testing.assert_allclose(lds(scores, subsets, np.exp(margins)).per_sample, base, atol=1e-12)
    np.testing.assert_allclose(lds(-scores, subsets, margins).per_sample, -base, atol=1e-12)


def test_lds_undefined_samples_are_nan_and_left_out_of_the_mean():
    scores = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])  # test sample 1: every subset sums to 0
    subsets = [[0], [1], [2]]
    margins = np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    result = lds(scores, subsets, margins)
    assert result.per_sample[0] == pytest.approx(1.0) and math.isnan(result.per_sample[1])
    assert result.mean == pytest.approx(1.0) and result.n_valid == 1
    constant_margins = np.ones((3, 2))
    result = lds(scores, subsets, constant_margins)
    assert np.isnan(result.per_sample).all() and math.isnan(result.mean) and result.n_valid == 0


def test_lds_errors():
    scores = np.zeros((2, 4))
    masks = np.ones((3, 4), dtype=bool)
    margins = np.zeros((3, 2))
    with pytest.raises(ValueError, match="`margins` must have shape"):
        lds(scores, masks, margins.T)  # (n_test, M) instead of (M, n_test)
    with pytest.raises(ValueError, match="dattri"):
        lds(scores.T, masks, margins)  # (n_train, n_test): the mask width does not match
    with pytest.raises(ValueError, match="`scores` must be 2-D"):
        lds(np.zeros(4), masks, margins)
    with pytest.raises(ValueError, match="`margins` must be 2-D"):
        lds(scores, masks, np.zeros(3))
    with pytest.raises(ValueError, match="outside 0..3"):
        lds(scores, [[0, 1], [2, 4], [3]], margins)
    with pytest.raises(ValueError, match="outside 0..3"):
        lds(scores, [[0, -1], [2], [3]], margins)
    with pytest.raises(ValueError, match="repeats a training index"):
        lds(scores, [[0, 0], [1], [2]], margins)
    with pytest.raises(ValueError, match="integer indices"):
        lds(scores, np.full((3, 2), 0.5), margins)
    with pytest.raises(ValueError, match="at least 2 subsets"):
        lds(scores, masks[:1], margins[:1])
    with pytest.raises(TypeError, match="`subsets` must be"):
        lds(scores, {0, 1}, margins)
    bad = scores.copy()
    bad[0, 1] = np.nan
    with pytest.raises(ValueError, match="`scores` contains NaN"):
        lds(bad, masks, margins)
    bad = margins.copy()
    bad[2, 0] = np.inf
    with pytest.raises(ValueError, match="`margins` contains NaN or infinite"):
        lds(scores, masks, bad)
