"""Label errors: which training samples carry a label their own features contradict?

:func:`rank_label_issues` orders the training set of a fitted :class:`~captum_dualxda.DualDA`
most suspicious first, by the Crammer-Singer hinge loss of a strongly regularised SVM surrogate
on the network's features, and flags the samples that surrogate classifies against their given
label. It is the DualDA counterpart of cleanlab's ``find_label_issues``: one trained network and
one SVM fit instead of K cross-fitted trainings.

Why the hinge loss of a small-``C`` surrogate rather than the paper's self-influence
``a_i^{y_i} ||phi(x_i)||^2``: at small ``C`` nearly every sample is a support vector at the bound
``a = C``, so self-influence degenerates to the feature norm, while the hinge loss
``max_m (1 - [m == y_i] + s_m(x_i)) - s_{y_i}(x_i)`` measures how far the given label lies below
the best other class. A heavily regularised surrogate cannot bend around a few flipped labels
even when the network has memorised them. ``benchmarks/label_errors.py`` measures both, with the
network's training loss and cleanlab, when the network has and has not memorised its flipped
labels (results in ``benchmarks/README.md``).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from ._core.pipeline import extract, solve
from ._core.surrogate import hinge_loss
from ._utils.validation import check_flag, check_positive
from .dualda import DualDA

__all__ = ["LabelIssues", "rank_label_issues", "LABEL_ISSUES_C"]

LABEL_ISSUES_C = 1e-4
"""Default ``C`` of the surrogate whose hinge loss ranks label issues.

Chosen with ``benchmarks/label_errors.py`` (``benchmarks/README.md``, *Label errors*): when the
network has not memorised its flipped labels every ``C`` ranks them almost perfectly; when it
has, a small ``C`` ranks them best and its flag finds many more of them than at DualDA's
default."""


class LabelIssues(NamedTuple):
    """Training samples ranked by how strongly their features contradict their label.

    All three fields are in the same order, most suspicious first.

    Attributes
    ----------
    indices : torch.Tensor
        ``(n_train,)`` int64 training indices (positions in DualDA's ``train_dataset``), by
        decreasing score; ties keep the lower index first.
    scores : torch.Tensor
        ``(n_train,)`` float32 hinge loss of the surrogate on ``indices``, non-increasing, ``>= 0``.
    is_issue : torch.Tensor
        ``(n_train,)`` bool, ``scores > 1``: the surrogate scores some other class strictly above
        the given label (see :func:`rank_label_issues`). True entries form a prefix, so the
        flagged samples are ``indices[is_issue]`` and their number is ``int(is_issue.sum())``.
    """

    indices: torch.Tensor
    scores: torch.Tensor
    is_issue: torch.Tensor


def rank_label_issues(dualda: DualDA, *, C: Optional[float] = None, show_progress: bool = False) -> LabelIssues:
    r"""Rank the training samples of a fitted DualDA by how likely their label is wrong.

    The score of training sample ``i`` is the Crammer-Singer hinge loss of the linear SVM
    surrogate ``s(x) = W phi(x) + b`` fitted with regularisation ``C`` on the training features:

    .. math::

        \xi_i = \max_m \big(1 - [m = y_i] + s_m(x_i)\big) - s_{y_i}(x_i) \;\ge 0 .

    A sample whose given label the surrogate scores far below another class comes first.

    **Flag rule.** Sample ``i`` is flagged (``is_issue``) when ``xi_i > 1``. Since
    ``xi_i = max(0, 1 + max_{m != y_i} s_m(x_i) - s_{y_i}(x_i))``, this holds exactly when some
    class ``m != y_i`` scores strictly higher than ``y_i``: the regularised surrogate classifies
    the sample against its label (an exact tie is not flagged). Like cleanlab's
    ``find_label_issues`` it is a yes/no answer, but it needs no out-of-sample probabilities and
    no noise-rate estimate. It is conservative where the network has memorised its flipped
    labels: there it flags few samples, nearly all of them truly mislabelled, while the ranking
    still puts the others right behind them (``benchmarks/README.md``, *Label errors*). Read further down
    ``indices`` than the flag when the training accuracy on the given labels is near 100 %.

    **Which fit.** With ``C`` equal to ``dualda.C`` the hinge loss kept from DualDA's own fit
    (``dualda.train_hinge_loss``) is used: no forward pass, no solve. Any other ``C`` re-extracts
    the training features once through the model (as the DualDA constructor does, with its
    ``autocast``, memory-mapped under ``dualda.cache_dir`` if ``dualda.memory_budget`` asks for
    it) and fits one SVM with
    DualDA's other settings (``fit_intercept``, ``tol``, ``max_iter``, ``seed``, ``backend``,
    ``device``), in this process; ``dualda`` itself is not changed. DualDA keeps only the
    support vectors' features, hence the forward pass.

    Parameters
    ----------
    dualda : DualDA
        A fitted :class:`~captum_dualxda.DualDA`; its ``train_dataset`` and training labels are
        the ones ranked.
    C : float, optional
        Regularisation of the surrogate, ``> 0``. Default :data:`LABEL_ISSUES_C` (``1e-4``):
        small ``C`` keeps the surrogate from fitting flipped labels that the network memorised
        (see the module docstring). Pass ``C=dualda.C`` to reuse DualDA's fit at no cost.
    show_progress : bool
        tqdm bars for the feature extraction and the solver of a refit (nothing otherwise).

    Returns
    -------
    LabelIssues
        ``(indices, scores, is_issue)``, each ``(n_train,)``, most suspicious first.

    Raises
    ------
    TypeError
        ``dualda`` is not a DualDA.
    ValueError
        ``dualda`` is a checkpoint ensemble; ``C`` is not a finite number ``> 0``, or (refit) the
        training data now yields other labels than at DualDA's fit.

    Examples
    --------
    >>> issues = rank_label_issues(dualda)
    >>> suspects = issues.indices[:20]                 # inspect these first
    >>> flagged = issues.indices[issues.is_issue]      # the surrogate disagrees with their label
    """
    if not isinstance(dualda, DualDA):
        raise TypeError(f"`dualda` must be a fitted captum_dualxda.DualDA, got {type(dualda).__name__}.")
    if dualda.ensemble is not None:
        raise dualda.ensemble.refusal("rank label issues")
    C = LABEL_ISSUES_C if C is None else check_positive(C, "C")
    show_progress = check_flag(show_progress, "show_progress")
    if C == dualda.C:
        losses = dualda.train_hinge_loss.detach().float().cpu()
    else:
        losses = _refit_hinge_loss(dualda, C, show_progress).float().cpu()
    scores, indices = torch.sort(losses, descending=True, stable=True)
    return LabelIssues(indices, scores, scores > 1.0)


def _refit_hinge_loss(dualda: DualDA, C: float, show_progress: bool) -> torch.Tensor:
    """``(n_train,)`` float64 hinge loss of an SVM fitted at ``C`` on freshly extracted features."""
    store, labels = extract(
        dualda.model,
        dualda.final_fc_layer,
        dualda.train_dataloader,
        device=dualda.device,
        autocast=dualda.autocast,
        memory_budget=dualda.memory_budget,
        scratch_dir=dualda.cache_dir,
        show_progress=show_progress,
    )
    try:
        if not torch.equal(labels.cpu(), dualda.train_labels.cpu()):
            raise ValueError(
                "`dualda`'s training data yields other labels than at its fit (a dataset that changed "
                "or draws randomly); refit DualDA, or pass `C=dualda.C` to rank with its own fit."
            )
        (result,) = solve(
            store.features,
            labels,
            dualda.n_classes,
            dualda.settings.replace(C=C),
            device=dualda.device,
            show_progress=show_progress,
        )
        return hinge_loss(store.features, labels, result.weight, result.intercept)
    finally:
        store.close()
