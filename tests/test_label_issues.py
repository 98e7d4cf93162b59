"""``rank_label_issues``: the hinge-loss ranking of label errors and its yes/no flag."""

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
from captum_dualxda.label_issues import LABEL_ISSUES_C


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


def sklearn_hinge(x, y, C):
    """Brute-force Crammer-Singer hinge loss and predictions of scikit-learn's (LIBLINEAR's) fit."""
    svm = LinearSVC(multi_class="crammer_singer", C=C, tol=1e-8, max_iter=1_000_000).fit(x, y)
    s = svm.decision_function(x)
    loss = np.array(
        [max(max(1.0 + s[i, m] for m in range(s.shape[1]) if m != y[i]) - s[i, y[i]], 0.0) for i in range(len(y))]
    )
    return loss, s.argmax(1)


def in_dataset_order(issues: LabelIssues, field: torch.Tensor) -> np.ndarray:
    out = np.empty(field.shape[0], dtype=field.numpy().dtype)
    out[issues.indices.numpy()] = field.numpy()
    return out


@pytest.mark.parametrize("C", [1e-3, 1e-4])  # DualDA's own fit, and a refit
def test_scores_and_flags_match_scikit_learn(problem, C):
    x, y, _, _, dualda = problem
    issues = rank_label_issues(dualda, C=C)
    reference, predicted = sklearn_hinge(x, y, C)
    np.testing.assert_allclose(in_dataset_order(issues, issues.scores), reference, atol=1e-4)  # C off by 10 %: 0.03
    # The flag's definition: the surrogate classifies the sample against its label.
    flags = in_dataset_order(issues, issues.is_issue)
    assert 0 < flags.sum() < len(y)
    np.testing.assert_array_equal(flags, predicted != y)


def test_ranking_is_a_stable_descending_order(problem):
    issues = rank_label_issues(problem[4], C=1e-3)
    n = issues.indices.numel()
    assert issues.indices.dtype == torch.int64 and issues.scores.dtype == torch.float32
    assert sorted(issues.indices.tolist()) == list(range(n))
    loss = problem[4].train_hinge_loss.numpy()
    assert (loss == 0).sum() > 1  # ties exist, so the tie rule below is exercised
    np.testing.assert_array_equal(issues.indices.numpy(), np.lexsort((np.arange(n), -loss)))
    np.testing.assert_array_equal(issues.scores.numpy(), loss[issues.indices.numpy()])
    # The flag is scores > 1, hence a prefix of the ranking.
    flags = issues.is_issue.numpy()
    np.testing.assert_array_equal(flags, issues.scores.numpy() > 1)
    assert flags[: flags.sum()].all() and not flags[flags.sum() :].any()


def count_forward_calls(net):
    calls = []
    handle = net.register_forward_pre_hook(lambda module, args: calls.append(1))
    return calls, handle


def test_refits_only_when_C_differs_and_leaves_dualda_unchanged(problem):
    _, _, _, net, dualda = problem
    before = dualda.train_hinge_loss.clone()
    calls, handle = count_forward_calls(net)
    try:
        same = rank_label_issues(dualda, C=dualda.C)
        assert calls == []  # no forward pass, no solve: DualDA's own hinge loss
        np.testing.assert_array_equal(in_dataset_order(same, same.scores), before.numpy())
        default = rank_label_issues(dualda)
        assert len(calls) > 0  # the default C (1e-4) differs from DualDA's 1e-3: features re-extracted
    finally:
        handle.remove()
    explicit = rank_label_issues(dualda, C=LABEL_ISSUES_C)
    assert LABEL_ISSUES_C != dualda.C and torch.equal(default.scores, explicit.scores)
    assert not torch.equal(default.scores, same.scores)
    assert dualda.C == 1e-3 and torch.equal(dualda.train_hinge_loss, before)


def test_out_of_core_refit_matches_and_removes_its_scratch_file(problem, tmp_path):
    x, y, _, net, dualda = problem
    train = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    mapped = DualDA(net, "fc", train, C=1e-3, tol=1e-6, cache_dir=str(tmp_path), memory_budget=0)
    in_memory = rank_label_issues(dualda, C=1e-2)
    out_of_core = rank_label_issues(mapped, C=1e-2)
    torch.testing.assert_close(out_of_core.scores, in_memory.scores, rtol=0, atol=1e-6)
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
    assert hits / flags.sum() > 0.6 and hits / flipped.sum() > 0.9  # precision and recall of the flag


def test_rejects_bad_inputs_before_any_work(problem):
    _, _, _, net, dualda = problem
    calls, handle = count_forward_calls(net)
    try:
        with pytest.raises(TypeError, match="`dualda`"):
            rank_label_issues(net)
        for bad in (0.0, -1e-4, float("nan"), float("inf"), True, "1e-4"):
            with pytest.raises(ValueError, match="`C`"):
                rank_label_issues(dualda, C=bad)
    finally:
        handle.remove()
    assert calls == []


def test_refit_refuses_training_data_whose_labels_changed(problem):
    x, y, _, net, _ = problem
    labels = torch.from_numpy(y.copy())
    dualda = DualDA(net, "fc", TensorDataset(torch.from_numpy(x), labels), C=1e-3)
    labels[0] = (labels[0] + 1) % 4  # the dataset now yields another label for sample 0
    with pytest.raises(ValueError, match="other labels"):
        rank_label_issues(dualda, C=1e-4)
