"""What the demo measured (:class:`DemoResult`, its printed summary) and the mislabel measures behind it.

The mislabel measures are :mod:`captum_dualxda.metrics`' with "undefined" as NaN ("n/a" in the summary).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List

import numpy as np
import torch

from ..label_issues import LABEL_ISSUES_C
from ..metrics import mislabel_auc, mislabel_detection_curve

__all__ = ["DemoResult", "auc_or_nan", "found_in_top", "share"]


def auc_or_nan(scores: np.ndarray, flipped: np.ndarray) -> float:
    """:func:`~captum_dualxda.metrics.mislabel_auc`, or NaN where no label or every label is flipped.

    The AUC is undefined then (``mislabel_auc`` raises); the demo reports it as "n/a".
    """
    if not flipped.any() or flipped.all():
        return float("nan")
    return mislabel_auc(scores, flipped)


def found_in_top(scores: np.ndarray, flipped: np.ndarray, fraction: float) -> float:
    """Share of the flipped labels among the ``ceil(fraction * n)`` highest scores (NaN if none flipped).

    The point ``ceil(fraction * n) / n`` of :func:`~captum_dualxda.metrics.mislabel_detection_curve`.
    """
    if not flipped.any():
        return float("nan")
    _, found = mislabel_detection_curve(scores, flipped)
    return float(found[int(math.ceil(fraction * flipped.size))])


@dataclass
class DemoResult:
    """Everything :func:`run_demo` measured and wrote.

    Attributes
    ----------
    test_accuracy : float
        Network accuracy on the (clean) test labels.
    train_accuracy_noisy : float
        Network accuracy on the training labels it was trained with (flipped ones included).
    surrogate_agreement : float
        Share of test samples where the SVM surrogate ``argmax(W phi(x) + b)`` predicts the same
        class as the network.
    n_support : int
        Support vectors (training samples with a non-zero DualDA coefficient row).
    sparsity : float
        ``1 - n_support / n_train``.
    extraction_time : float
        Seconds to compute the training features.
    fit_time : float
        Seconds the SVM solver took.
    compile_time : float
        Seconds to compile the numba solver on a tiny problem before the fit (seconds on a
        machine's first run, a fraction of a second once the compiled solver is cached).
    ms_per_test_sample : float
        Milliseconds per test sample to find its top-``k`` proponents and opponents with DualDA
        (features included, XDA excluded), over the whole test set.
    xda_ms_per_pair : float
        Milliseconds per XDA (test, training) pair, both heatmaps, measured on the explained test
        samples and their top-``k`` proponents (NaN if nothing was explained).
    auc : float
        ROC AUC of DualDA self-influence for finding the flipped labels (NaN if none flipped).
    found_top10 : float
        Share of the flipped labels among the 10 % of training samples with the highest
        self-influence (NaN if none flipped).
    random_auc : float
        The same AUC for a random order (about 0.5).
    flipped_in_proponents : float
        Share of flipped-label training samples among the top-``k`` proponents (score > 0) of all
        test predictions (compare with ``flip_rate``).
    flipped_in_opponents : float
        The same among the top-``k`` opponents (score < 0): opponents of a correct prediction are
        often training samples of the predicted class that carry a wrong label.
    hinge_auc : float
        The same AUC for :func:`~captum_dualxda.rank_label_issues`' ranking: the held-out margin
        of the SVM surrogate with ``C = issues_C``, cross-fitted in 5 folds.
    hinge_found_top10 : float
        ``found_top10`` for that ranking.
    loss_auc : float
        The same AUC when ranking by the network's cross-entropy on its (noisy) training labels,
        a simple baseline that needs no attribution method at all.
    loss_found_top10 : float
        ``found_top10`` for the training-loss ranking.
    self_influence : numpy.ndarray
        ``(n_train,)`` float32 DualDA self-influence ``a_i^{y_i} ||phi(x_i)||^2``.
    label_issue_scores : numpy.ndarray
        ``(n_train,)`` float32 :func:`~captum_dualxda.rank_label_issues` score of each training
        sample (dataset order).
    label_issue_flags : numpy.ndarray
        ``(n_train,)`` bool, its ``is_issue`` flag (the highest scores, as many as confident
        learning estimates label errors), dataset order.
    flipped : numpy.ndarray
        ``(n_train,)`` bool, which training labels were flipped.
    explained : list of int
        Test indices explained with figures.
    files : dict
        ``name -> absolute path`` of every file written (``explanation_<i>``, ``mislabel_detection``,
        ``mislabel_suspects``, ``self_influence``).
    n_train, n_test, n_flipped : int
    C, flip_rate : float
    k, seed, epochs : int
        The settings of the run.
    solver_gap : float
        Relative duality gap of the SVM fit (``(P + D) / P``, 0 at the optimum).
    issues_C : float
        ``C`` of the surrogate behind ``rank_label_issues`` (its default,
        :data:`~captum_dualxda.label_issues.LABEL_ISSUES_C`).
    issues_precision, issues_recall : float
        Share of the flagged samples whose label was flipped (NaN if none flagged), and share of
        the flipped labels flagged (NaN if none flipped).
    """

    test_accuracy: float
    train_accuracy_noisy: float
    surrogate_agreement: float
    n_support: int
    sparsity: float
    extraction_time: float
    fit_time: float
    compile_time: float
    ms_per_test_sample: float
    xda_ms_per_pair: float
    auc: float
    found_top10: float
    random_auc: float
    flipped_in_proponents: float
    flipped_in_opponents: float
    hinge_auc: float
    hinge_found_top10: float
    loss_auc: float
    loss_found_top10: float
    self_influence: np.ndarray
    label_issue_scores: np.ndarray
    label_issue_flags: np.ndarray
    flipped: np.ndarray
    explained: List[int]
    files: Dict[str, str]
    n_train: int
    n_test: int
    n_flipped: int
    C: float
    flip_rate: float
    k: int
    seed: int
    epochs: int
    solver_gap: float = float("nan")
    issues_C: float = LABEL_ISSUES_C
    issues_precision: float = float("nan")
    issues_recall: float = float("nan")

    def summary(self) -> str:
        """The printed summary table (plain text, one metric per line)."""

        def pct(v: float) -> str:
            return "n/a" if math.isnan(v) else f"{100 * v:.1f} %"

        def num(v: float, fmt: str) -> str:
            return "n/a" if math.isnan(v) else format(v, fmt)

        rows = [
            ("training samples / test samples", f"{self.n_train} / {self.n_test}"),
            ("flipped training labels", f"{self.n_flipped} ({pct(self.flip_rate)})"),
            ("CNN test accuracy", pct(self.test_accuracy)),
            ("CNN accuracy on its noisy training labels", pct(self.train_accuracy_noisy)),
            (f"SVM surrogate agrees with CNN (test, C={self.C:g})", pct(self.surrogate_agreement)),
            ("support vectors", f"{self.n_support} of {self.n_train}"),
            ("sparsity (training samples scoring 0)", pct(self.sparsity)),
            ("fit time: features + SVM solver", f"{self.extraction_time:.2f} s + {self.fit_time:.2f} s"),
            ("  (solver compile/load before the fit, once)", f"{self.compile_time:.2f} s"),
            (f"DualDA ms per test sample (top-{self.k} both signs)", num(self.ms_per_test_sample, ".3f")),
            ("XDA ms per (test, train) pair", num(self.xda_ms_per_pair, ".1f")),
            ("mislabel detection ROC AUC (self-influence)", num(self.auc, ".3f")),
            ("flipped labels found in top 10 % of ranking", pct(self.found_top10)),
            (
                f"  rank_label_issues (held-out margin, C={self.issues_C:g}), AUC / top 10 %",
                f"{num(self.hinge_auc, '.3f')} / {pct(self.hinge_found_top10)}",
            ),
            (
                "  rank_label_issues: flagged, precision / recall",
                f"{int(self.label_issue_flags.sum())}, {pct(self.issues_precision)} / {pct(self.issues_recall)}",
            ),
            (
                "  baseline: rank by training loss, AUC / top 10 %",
                f"{num(self.loss_auc, '.3f')} / {pct(self.loss_found_top10)}",
            ),
            ("  random order, AUC", num(self.random_auc, ".3f")),
            (
                f"flipped labels among top-{self.k} proponents / opponents",
                f"{pct(self.flipped_in_proponents)} / {pct(self.flipped_in_opponents)}",
            ),
        ]
        width = max(len(name) for name, _ in rows)
        line = "-" * (width + 2 + max(len(value) for _, value in rows))
        body = [f"{name:<{width}}  {value}" for name, value in rows]
        return "\n".join(["DualXDA demo: digits CNN", line, *body, line])


def share(mask: torch.Tensor) -> float:
    """Mean of a bool tensor (NaN if empty)."""
    return float(mask.float().mean()) if mask.numel() else float("nan")
