"""``rank_label_issues``: the cross-fitted surrogate's ranking of label errors and its yes/no flag."""

from __future__ import annotations

import glob

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from sklearn.svm import LinearSVC
from torch import nn
from torch.utils.data import TensorDataset

from captum_dualxda import DualDA, LabelIssues, rank_label_issues
from captum_dualxda.label_issues import LABEL_ISSUES_C, LABEL_ISSUES_FOLDS, _stratified_folds


class FeatureNet(nn.Module):
    """``fc`` applied to the input itself, so ``phi(x) = x``: the features are known exactly."""

    def __init__(self, d: int, k: int) -> None:
        super().__init__()
        self.fc = nn.Linear(d, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def planted_problem(n=300, d=16, k=4, flip_rate=0.1, seed=0):
    """Non-negative class clusters; ``round(flip_rate * n)`` labels moved to another class."""
    rng = np.random.default_rng(seed)
    clean = rng.integers(0, k, n)
    centres = rng.normal(size=(k, d)) * 2.0  # clusters overlap a little: some clean samples are misfit
    x = np.maximum(centres[clean] + rng.normal(size=(n, d)), 0).astype(np.float32)
    flipped = np.zeros(n, dtype=bool)
    flipped[rng.choice(n, int(round(flip_rate * n)), replace=False)] = True
    given = np.where(flipped, (clean + rng.integers(1, k, n)) % k, clean)
    return x, given.astype(np.int64), flipped


@pytest.fixture(scope="module")
def problem():
    x, y, flipped = planted_problem()
    torch.manual_seed(0)
    net = FeatureNet(x.shape[1], 4).eval()
    dualda = DualDA(net, "fc", TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), C=1e-3, tol=1e-6)
    return x, y, flipped, net, dualda


def sklearn_scores(x, y, C):
    """Decision function of scikit-learn's (LIBLINEAR's) Crammer-Singer SVM fitted on ``(x, y)``."""
    return LinearSVC(multi_class="crammer_singer", C=C, tol=1e-8, max_iter=1_000_000).fit(x, y)


def margins_of(s, y):
    """``max_{m != y_i} s_im - s_iy_i`` by brute force."""
    return np.array([max(s[i, m] for m in range(s.shape[1]) if m != y[i]) - s[i, y[i]] for i in range(len(y))])


def confident_learning_count(s, y):
    """The calibrated confident joint's off-diagonal sum, written out with loops (cleanlab's count)."""
    k = s.shape[1]
    t = [s[y == j, j].mean() for j in range(k)]
    joint = np.zeros((k, k))
    for i in range(len(y)):
        above = [j for j in range(k) if s[i, j] >= t[j]]
        if above:
            joint[y[i], max(above, key=lambda j: s[i, j])] += 1
    calibrated = joint / np.maximum(joint.sum(1, keepdims=True), 1) * np.bincount(y, minlength=k)[:, None]
    return int(round(calibrated.sum() - np.trace(calibrated)))


def in_dataset_order(issues: LabelIssues, field: torch.Tensor) -> np.ndarray:
    out = np.empty(field.shape[0], dtype=field.numpy().dtype)
    out[issues.indices.numpy()] = field.numpy()
    return out


@pytest.mark.parametrize("C", [1e-3, 1e-4])  # DualDA's own surrogate, and a refit
def test_in_sample_scores_and_flag_match_scikit_learn(problem, C):
    x, y, _, _, dualda = problem
    issues = rank_label_issues(dualda, C=C, folds=1)
    s = sklearn_scores(x, y, C).decision_function(x)
    np.testing.assert_allclose(in_dataset_order(issues, issues.scores), margins_of(s, y), atol=1e-4)
    n_flagged = int(issues.is_issue.sum())
    assert 0 < n_flagged < len(y)
    assert n_flagged == confident_learning_count(s, y)


def test_disagree_flag_is_the_surrogates_misclassifications(problem):
    x, y, _, _, dualda = problem
    svm = sklearn_scores(x, y, 1e-4)
    issues = rank_label_issues(dualda, C=1e-4, folds=1, flag="disagree")
    flags = in_dataset_order(issues, issues.is_issue)
    assert 0 < flags.sum() < len(y)
    np.testing.assert_array_equal(flags, svm.predict(x) != y)


def test_cross_fitted_scores_are_held_out_scikit_learn_scores(problem):
    x, y, _, _, dualda = problem
    issues = rank_label_issues(dualda, C=1e-2, folds=3)
    fold = _stratified_folds(torch.from_numpy(y), 3, dualda.seed).numpy()
    assert sorted(np.bincount(fold).tolist()) == [100, 100, 100]
    for k in range(4):  # stratified: every class spread evenly over the folds
        assert np.ptp(np.bincount(fold[y == k], minlength=3)) <= 1
    s = np.empty((len(y), 4))
    for f in range(3):
        s[fold == f] = sklearn_scores(x[fold != f], y[fold != f], 1e-2).decision_function(x[fold == f])
    np.testing.assert_allclose(in_dataset_order(issues, issues.scores), margins_of(s, y), atol=1e-4)
    assert int(issues.is_issue.sum()) == confident_learning_count(s, y)


def test_ranking_is_a_stable_descending_order_and_the_flag_a_prefix(problem):
    issues = rank_label_issues(problem[4], C=1e-3, folds=1)
    n = issues.indices.numel()
    assert issues.indices.dtype == torch.int64 and issues.scores.dtype == torch.float32
    assert sorted(issues.indices.tolist()) == list(range(n))
    scores = in_dataset_order(issues, issues.scores)
    np.testing.assert_array_equal(issues.indices.numpy(), np.lexsort((np.arange(n), -scores)))
    flags = issues.is_issue.numpy()
    assert flags[: flags.sum()].all() and not flags[flags.sum() :].any()


def count_forward_calls(net):
    calls = []
    handle = net.register_forward_pre_hook(lambda module, args: calls.append(1))
    return calls, handle


def test_keeps_the_training_features_and_ranks_without_a_forward_pass(problem):
    x, _, _, net, dualda = problem
    np.testing.assert_array_equal(dualda.train_features.numpy(), x)  # phi(x) = x
    before = dualda.train_hinge_loss.clone()
    calls, handle = count_forward_calls(net)
    try:
        for C, folds in ((dualda.C, 1), (1e-4, 1), (1e-4, 5), (1e-2, 3)):
            rank_label_issues(dualda, C=C, folds=folds)
    finally:
        handle.remove()
    assert calls == []  # every C and fold count: the kept features, no extraction
    assert dualda.C == 1e-3 and torch.equal(dualda.train_hinge_loss, before)


def test_default_is_five_folds_at_the_label_issues_C(problem):
    dualda = problem[4]
    default = rank_label_issues(dualda)
    explicit = rank_label_issues(dualda, C=LABEL_ISSUES_C, folds=LABEL_ISSUES_FOLDS)
    assert (LABEL_ISSUES_C, LABEL_ISSUES_FOLDS) == (1e-4, 5)
    assert torch.equal(default.indices, explicit.indices) and torch.equal(default.scores, explicit.scores)


def test_a_cached_fit_keeps_its_features(problem, tmp_path):
    x, y, _, net, _ = problem
    train = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    first = DualDA(net, "fc", train, C=1e-3, tol=1e-6, cache_dir=str(tmp_path))
    calls, handle = count_forward_calls(net)
    try:
        again = DualDA(net, "fc", train, C=1e-3, tol=1e-6, cache_dir=str(tmp_path))
        issues = rank_label_issues(again)
    finally:
        handle.remove()
    assert again.fit_stats["from_cache"] and calls == []
    assert torch.equal(again.train_features, first.train_features)
    assert torch.equal(issues.scores, rank_label_issues(first).scores)


def test_out_of_core_fit_extracts_again_and_matches(problem, tmp_path):
    x, y, _, net, dualda = problem
    train = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    mapped = DualDA(net, "fc", train, C=1e-3, tol=1e-6, cache_dir=str(tmp_path), memory_budget=0)
    assert mapped.train_features is None  # above the memory budget: not kept
    calls, handle = count_forward_calls(net)
    try:
        out_of_core = rank_label_issues(mapped, C=1e-2)
    finally:
        handle.remove()
    assert len(calls) > 0  # extracted again
    in_memory = rank_label_issues(dualda, C=1e-2)
    torch.testing.assert_close(out_of_core.scores, in_memory.scores, rtol=0, atol=1e-6)
    assert torch.equal(out_of_core.is_issue, in_memory.is_issue)
    assert glob.glob(str(tmp_path / "*.npy")) == []


def test_finds_planted_flipped_labels():
    """A real property on a generated problem: flipped labels come first, and the flag finds them."""
    x, y, flipped = planted_problem(n=400, d=16, k=5, flip_rate=0.1, seed=3)
    torch.manual_seed(0)
    dualda = DualDA(FeatureNet(16, 5).eval(), "fc", TensorDataset(torch.from_numpy(x), torch.from_numpy(y)))
    issues = rank_label_issues(dualda)
    scores = in_dataset_order(issues, issues.scores)
    assert roc_auc_score(flipped, scores) > 0.98
    flags = in_dataset_order(issues, issues.is_issue)
    hits = (flags & flipped).sum()
    # The flag takes as many as confident learning estimates (37 of the 40 flipped here).
    assert hits / flags.sum() > 0.9 and hits / flipped.sum() > 0.8  # precision and recall of the flag


def test_rejects_bad_inputs_before_any_work(problem):
    _, _, _, net, dualda = problem
    calls, handle = count_forward_calls(net)
    try:
        with pytest.raises(TypeError, match="`dualda`"):
            rank_label_issues(net)
        for bad in (0.0, -1e-4, float("nan"), float("inf"), True, "1e-4"):
            with pytest.raises(ValueError, match="`C`"):
                rank_label_issues(dualda, C=bad)
        for bad in (0, -1, 301, 2.5, True):
            with pytest.raises((ValueError, TypeError), match="`folds`"):
                rank_label_issues(dualda, folds=bad)
        with pytest.raises(ValueError, match="`flag`"):
            rank_label_issues(dualda, flag="argmax")
    finally:
        handle.remove()
    assert calls == []


def test_refit_refuses_training_data_whose_labels_changed(problem):
    x, y, _, net, _ = problem
    labels = torch.from_numpy(y.copy())
    dualda = DualDA(net, "fc", TensorDataset(torch.from_numpy(x), labels), C=1e-3)
    labels[0] = (labels[0] + 1) % 4  # the dataset now yields another label for sample 0
    dualda._fit.state.train_features = None  # as if not kept (memory-mapped): extracted again
    with pytest.raises(ValueError, match="other labels"):
        rank_label_issues(dualda, C=1e-4)


# --------------------------------------------------------------------------------------------
# layers=: the surrogate on the inputs of other layers (a network that memorised its labels)
# --------------------------------------------------------------------------------------------
class TwoLayerNet(nn.Module):
    """``phi = relu(body(x))``; the input of ``body`` is ``x`` itself, so every block is known exactly."""

    def __init__(self, d: int, h: int, k: int) -> None:
        super().__init__()
        self.body = nn.Linear(d, h)
        self.act = nn.ReLU()
        self.fc = nn.Linear(h, k)
        self.unused = nn.Linear(d, h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.body(x)))


@pytest.fixture(scope="module")
def two_layer():
    x, y, flipped = planted_problem(n=240, d=12, k=4, seed=5)
    torch.manual_seed(1)
    net = TwoLayerNet(12, 20, 4).eval()
    train = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    dualda = DualDA(net, "fc", train, C=1e-3, tol=1e-6)
    with torch.no_grad():
        phi = net.act(net.body(torch.from_numpy(x))).numpy().astype(np.float64)
    return x.astype(np.float64), y, net, train, dualda, phi


def scaled_to(block, reference):
    """``block`` scaled to ``reference``'s mean squared row norm (brute force)."""
    return block * np.sqrt((reference**2).sum(1).mean() / (block**2).sum(1).mean())


@pytest.mark.parametrize(
    "layers, blocks",
    [(["body"], ("x",)), (["body", "fc"], ("x", "phi")), (["fc", "body"], ("phi", "x")), (["fc"], ("phi",))],
)
def test_layers_rank_on_those_inputs_scaled_like_phi(two_layer, layers, blocks):
    x, y, net, _, dualda, phi = two_layer
    parts = {"x": scaled_to(x, phi), "phi": phi}
    features = np.concatenate([parts[b] for b in blocks], 1)
    issues = rank_label_issues(dualda, layers=[net.fc if name == "fc" else name for name in layers], C=1e-2, folds=1)
    s = sklearn_scores(features, y, 1e-2).decision_function(features)
    np.testing.assert_allclose(in_dataset_order(issues, issues.scores), margins_of(s, y), atol=2e-4)
    assert int(issues.is_issue.sum()) == confident_learning_count(s, y)
    assert not net._forward_hooks and not net.body._forward_pre_hooks and not net.fc._forward_pre_hooks


def test_layers_held_by_the_fit_need_no_forward_pass(two_layer):
    _, y, net, train, plain, _ = two_layer
    with_body = DualDA(net, "fc", train, C=1e-3, tol=1e-6, feature_layers=["body"])
    calls, handle = count_forward_calls(net)
    try:
        kept = rank_label_issues(with_body, layers=["body"], C=1e-2, folds=3)
        phi_only = rank_label_issues(with_body, layers=["fc"], C=1e-2, folds=3)
    finally:
        handle.remove()
    assert calls == []  # both blocks are in the fit's train_features
    extracted = rank_label_issues(plain, layers=["body"], C=1e-2, folds=3)
    torch.testing.assert_close(kept.scores, extracted.scores, rtol=0, atol=1e-5)
    torch.testing.assert_close(phi_only.scores, rank_label_issues(plain, C=1e-2, folds=3).scores, rtol=0, atol=1e-6)
    # layers=None on a fit with feature_layers ranks on all of its features (phi and body's input)
    both = rank_label_issues(plain, layers=["fc", "body"], C=1e-2, folds=3)
    torch.testing.assert_close(rank_label_issues(with_body, C=1e-2, folds=3).scores, both.scores, rtol=0, atol=1e-5)


def test_layers_refused_with_a_clear_message_before_any_work(two_layer, tmp_path):
    x, y, net, train, dualda, _ = two_layer
    calls, handle = count_forward_calls(net)
    try:
        with pytest.raises(TypeError, match="`layers` must be a list"):
            rank_label_issues(dualda, layers="body")
        with pytest.raises(ValueError, match="`layers` is empty"):
            rank_label_issues(dualda, layers=[])
        with pytest.raises(ValueError, match="not a submodule"):
            rank_label_issues(dualda, layers=["nope"])
        with pytest.raises(ValueError, match="twice"):
            rank_label_issues(dualda, layers=[net.fc, "fc"])
        with pytest.raises(ValueError, match="twice"):
            rank_label_issues(dualda, layers=["body", net.body])
    finally:
        handle.remove()
    assert calls == []
    with pytest.raises(ValueError, match="did not run"):
        rank_label_issues(dualda, layers=["unused"])
    mapped = DualDA(net, "fc", train, C=1e-3, cache_dir=str(tmp_path), memory_budget=0)
    with pytest.raises(ValueError, match="memory_budget"):
        rank_label_issues(mapped, layers=["body"])
    assert not net.body._forward_pre_hooks and not net.unused._forward_pre_hooks


def test_layers_refuse_a_model_trained_after_the_fit(two_layer):
    from captum_dualxda.exceptions import ModelChangedError

    x, y, _, _, _, _ = two_layer
    torch.manual_seed(2)
    net = TwoLayerNet(12, 20, 4).eval()
    dualda = DualDA(net, "fc", TensorDataset(torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y)), C=1e-3)
    with torch.no_grad():
        net.body.weight.add_(0.1)
    with pytest.raises(ModelChangedError):
        rank_label_issues(dualda, layers=["body"])
