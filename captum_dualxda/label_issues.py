"""Label errors: which training samples carry a label their own features contradict?

:func:`rank_label_issues` orders the training set of a fitted :class:`~captum_dualxda.DualDA`
most suspicious first, by the held-out margin of a strongly regularised SVM surrogate,
cross-fitted on the network's features (k folds of the Crammer-Singer SVM, each scoring the
samples it did not see), and flags as many of them as confident learning estimates label errors
(:func:`estimated_issue_count`). It is the DualDA counterpart of cleanlab's
``find_label_issues``: one trained network and a few SVM fits on the features DualDA's fit kept
(no forward pass) instead of K cross-fitted trainings of the network.

Why a small-``C`` surrogate rather than the paper's self-influence ``a_i^{y_i} ||phi(x_i)||^2``:
at small ``C`` nearly every sample is a support vector at the bound ``a = C``, so self-influence
degenerates to the feature norm, while the surrogate's margin measures how far the given label
lies below the best other class. A heavily regularised surrogate cannot bend around a few
flipped labels, and one that did not see the sample cannot fit its flipped label at all.

Where the network has memorised its flipped labels, its last layers moved their features
towards the given label, and a surrogate on ``phi`` finds little to contradict. The inputs of
earlier layers (``layers=``; for a CNN the convolutional features that enter the first fully
connected layer) are still organised by the true class: there the surrogate ranks and flags
about as well as cleanlab's retrained networks.
``benchmarks/label_errors.py`` measures the rule against the network's training loss,
self-influence and cleanlab on the scikit-learn digits and on MNIST, with and without
memorisation (results in ``benchmarks/README.md``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import List, NamedTuple, Optional, Sequence, Union

import torch
from torch import nn

from ._core.features import FeatureLayers, resolve_feature_layers
from ._core.pipeline import extract, solve
from ._core.surrogate import surrogate_logits
from ._core.whitening import block_scales
from ._utils.validation import check_flag, check_integer, check_positive
from .dualda import DualDA

__all__ = ["LabelIssues", "rank_label_issues", "estimated_issue_count", "LABEL_ISSUES_C", "LABEL_ISSUES_FOLDS"]

LABEL_ISSUES_C = 1e-4
"""Default ``C`` of the surrogate whose hinge loss ranks label issues.

Chosen with ``benchmarks/label_errors.py`` (``benchmarks/README.md``, *Label errors*): when the
network has not memorised its flipped labels every ``C`` ranks them almost perfectly; when it
has, a small ``C`` ranks them best and its flag finds many more of them than at DualDA's
default."""

LABEL_ISSUES_FOLDS = 5
"""Default number of cross-fitting folds of :func:`rank_label_issues` (cleanlab's default too)."""


class LabelIssues(NamedTuple):
    """Training samples ranked by how strongly their features contradict their label.

    All three fields are in the same order, most suspicious first.

    Attributes
    ----------
    indices : torch.Tensor
        ``(n_train,)`` int64 training indices (positions in DualDA's ``train_dataset``), by
        decreasing score; ties keep the lower index first.
    scores : torch.Tensor
        ``(n_train,)`` float32 held-out margin of the surrogate on ``indices``: the best other
        class's score minus the given label's, non-increasing (see :func:`rank_label_issues`).
    is_issue : torch.Tensor
        ``(n_train,)`` bool, the flag rule of :func:`rank_label_issues`. True entries form a
        prefix, so the flagged samples are ``indices[is_issue]`` and their number is
        ``int(is_issue.sum())``.
    """

    indices: torch.Tensor
    scores: torch.Tensor
    is_issue: torch.Tensor


def rank_label_issues(
    dualda: DualDA,
    *,
    layers: Optional[Sequence[Union[nn.Module, str]]] = None,
    C: Optional[float] = None,
    folds: int = LABEL_ISSUES_FOLDS,
    flag: str = "count",
    show_progress: bool = False,
) -> LabelIssues:
    r"""Rank the training samples of a fitted DualDA by how likely their label is wrong.

    **Score.** A linear Crammer-Singer SVM surrogate ``s(x) = W phi(x) + b`` with regularisation
    ``C`` is cross-fitted on the training features ``phi``: the samples are split into ``folds``
    stratified folds (seeded by ``dualda.seed``), and one SVM fitted on all folds but one scores
    the held-out fold. The score of sample ``i`` is its held-out margin against its given label,

    .. math::

        m_i = \max_{k \ne y_i} s_k(x_i) - s_{y_i}(x_i),

    positive when the surrogate prefers another class. ``layers`` replaces ``phi`` by the inputs
    of other layers (below). Held-out scores matter where the network
    has memorised its flipped labels: on MNIST (3,000 images, 96 % of the flipped labels fitted)
    the ROC AUC against the flipped labels is 0.950 cross-fitted against 0.906 for the in-sample
    hinge loss at the same ``C = 1e-4``; where it has not, both reach 0.997
    (``benchmarks/README.md``, *Label errors: real data*). ``folds=1`` scores in-sample with one
    SVM on all samples (the ranking of the in-sample hinge loss ``max(0, 1 + m_i)``, up to ties).

    **Flag rule** (``is_issue``), ``flag="count"`` (default): the ``N`` highest-scored samples,
    ``N`` the number of label errors that confident learning (cleanlab's count) estimates from the surrogate's held-out
    scores (:func:`estimated_issue_count`): per class ``k`` a threshold ``t_k``, the mean of
    ``s_k`` over the samples labelled ``k``; sample ``i`` is confidently of class ``j``, the
    highest-scored class with ``s_j(x_i) >= t_j`` (if any); these counts form the confident
    joint (given label, confident class), each row rescaled to the number of samples with that
    given label, and ``N`` is the sum of its off-diagonal entries. On MNIST (20,000 images) with
    10 % uniformly flipped labels this flagged 2,095 samples with precision 0.91 and recall 0.95
    (medians over 3 seeds), where cleanlab with 5-fold cross-fitted network probabilities flagged
    2,149 with precision 0.85 and recall 0.92, and the previous rule ("the surrogate prefers
    another class") 3,000 with precision 0.67. Where the network has memorised its flipped labels ``phi`` barely
    contradicts them and ``N`` is small (it may be 0): rank on an earlier layer (next paragraph).
    ``flag="disagree"``: the samples with ``m_i > 0``, those the held-out surrogate assigns to
    another class (the previous rule, on held-out scores). It has the higher recall where the
    surrogate misclassifies few clean samples and the lower precision where it misclassifies
    many: on the scikit-learn digits (98 % test accuracy) it flagged 136 samples with precision
    0.96 and recall 0.97 against 81 with precision 1.00 and recall 0.60 for ``"count"``; on the
    MNIST problem above 3,018 with precision 0.67 and recall 0.99. Neither rule depends on ``C``
    or ``folds`` beyond the scores they read.

    **Memorised networks: ``layers``.** A network that fits (nearly) all of its training labels,
    flipped ones included, has bent its last layers around them. Pass the layers whose inputs
    still follow the true class, e.g. the first fully connected layer of a CNN (its input: the
    flattened convolutional features). On MNIST (3,000 images, 20 epochs, 96 % of the 10 %
    uniformly flipped labels fitted; medians over 3 seeds) ``layers=[first fully connected
    layer]`` ranked with ROC AUC 0.995 and flagged 356 samples at precision 0.82 and recall 0.94
    in 1.5 s, where ``phi`` gave 0.948 and flagged none, and cleanlab's 5-fold cross-fitting 0.990,
    458 at 0.61 and 0.94 in five trainings of the network (90-858 s); it won on all three in each
    of the four memorised tasks. On a network that has not memorised its labels ``phi`` ranks as
    well or better (``benchmarks/README.md``, *Label errors: real data*, every task and seed).
    Which layer: the deepest whose input the labels have not shaped; the training accuracy
    against the test accuracy says whether the network memorised.

    **No forward pass.** A DualDA that kept its training features (``dualda.train_features``: the
    fit held them in memory in one process) is ranked on them: no forward pass, only ``folds``
    SVM solves (``folds=1`` with ``C == dualda.C``: none, DualDA's own surrogate scores). Otherwise
    (features memory-mapped above ``dualda.memory_budget``, or a distributed fit) the training
    features are extracted once more through the model as the DualDA constructor does (with its
    ``autocast``, memory-mapped under ``dualda.cache_dir`` if ``memory_budget`` asks for it).
    The SVMs use DualDA's other settings (``fit_intercept``, ``tol``, ``max_iter``, ``seed``,
    ``backend``, ``device``) and run in this process; ``dualda`` itself is not changed.
    ``layers`` that DualDA's fit did not keep (its ``feature_layers``) cost one forward pass over
    the training data (refused for fits with ``memory_budget`` or ``distributed``). Memory:
    each fold's SVM copies its training rows (``(folds - 1) / folds`` of the features) and the
    scores take ``8 n_train K`` bytes.

    Parameters
    ----------
    dualda : DualDA
        A fitted :class:`~captum_dualxda.DualDA`; its ``train_dataset`` and training labels are
        the ones ranked.
    layers : sequence of nn.Module or str, optional
        The surrogate's features. None (default): DualDA's own, ``phi`` (and the inputs of its
        ``feature_layers``). Otherwise the inputs of exactly these layers of ``dualda.model``
        (modules or dotted names; ``dualda.final_fc_layer`` stands for ``phi``), each flattened,
        scaled to ``phi``'s mean squared norm over the training set (so ``C`` keeps its meaning)
        and concatenated in the given order. Taken from ``dualda.train_features`` when the fit
        has them all (its ``feature_layers``), otherwise extracted in one forward pass.
    C : float, optional
        Regularisation of the surrogate, ``> 0``. Default :data:`LABEL_ISSUES_C` (``1e-4``):
        a small ``C`` keeps the surrogate from fitting flipped labels (see the module docstring).
    folds : int
        Cross-fitting folds, ``1..n_train`` (default :data:`LABEL_ISSUES_FOLDS`, 5); 1 scores in-sample.
    flag : {"count", "disagree"}
        The flag rule (above): the estimated number of label errors, or every sample the
        surrogate assigns to another class.
    show_progress : bool
        tqdm bars for a feature extraction and the solver (nothing otherwise).

    Returns
    -------
    LabelIssues
        ``(indices, scores, is_issue)``, each ``(n_train,)``, most suspicious first.

    Raises
    ------
    TypeError
        ``dualda`` is not a DualDA.
    ValueError
        ``dualda`` is a checkpoint ensemble; ``C`` is not a finite number ``> 0``; ``folds`` is not
        an integer in ``1..n_train``; ``flag`` is not ``"count"`` or ``"disagree"``; ``layers``
        names no layer of the model, one twice, or one whose input is no fixed vector per sample
        before the final layer, or needs an extraction that ``memory_budget`` or ``distributed``
        rules out; or (re-extraction) the training data now yields other labels than at DualDA's fit.
    ModelChangedError
        ``layers`` needs a forward pass and the model's weights changed since DualDA's fit.

    Examples
    --------
    >>> issues = rank_label_issues(dualda)
    >>> suspects = issues.indices[:20]                 # inspect these first
    >>> flagged = issues.indices[issues.is_issue]      # as many as the estimated label errors
    >>> memorised = rank_label_issues(dualda, layers=["features.7"])  # a CNN's first fully connected layer
    """
    if not isinstance(dualda, DualDA):
        raise TypeError(f"`dualda` must be a fitted captum_dualxda.DualDA, got {type(dualda).__name__}.")
    if dualda.ensemble is not None:
        raise dualda.ensemble.refusal("rank label issues")
    C = LABEL_ISSUES_C if C is None else check_positive(C, "C")
    folds = check_integer(folds, "folds", low=1, high=dualda.n_train)
    if flag not in ("count", "disagree"):
        raise ValueError(f"`flag` must be 'count' or 'disagree', got {flag!r}.")
    show_progress = check_flag(show_progress, "show_progress")
    selection = None if layers is None else _layer_selection(dualda, layers)
    labels = dualda.train_labels.cpu()
    with _training_features(dualda, selection, show_progress) as features:
        if folds == 1 and C == dualda.C and selection is None:
            logits = surrogate_logits(features, dualda.weight, dualda.intercept)
        else:
            logits = _cross_fitted_logits(dualda, features, labels, C, folds, show_progress)
    logits[:, torch.bincount(labels, minlength=dualda.n_classes) == 0] = -math.inf  # classes without a sample
    own = logits.gather(1, labels[:, None]).squeeze(1)
    margins = logits.scatter(1, labels[:, None], -math.inf).amax(1) - own
    scores, indices = torch.sort(margins.float(), descending=True, stable=True)
    if flag == "disagree":
        is_issue = scores > 0
    else:
        is_issue = torch.zeros(labels.shape[0], dtype=torch.bool)
        is_issue[: estimated_issue_count(logits, labels)] = True
    return LabelIssues(indices, scores, is_issue)


def estimated_issue_count(scores: torch.Tensor, labels: torch.Tensor) -> int:
    """Confident learning's estimate of the number of label errors from per-class scores.

    Parameters
    ----------
    scores : torch.Tensor
        ``(n, K)`` float scores (higher: more of that class; probabilities or SVM logits), held
        out where possible; ``-inf`` for classes without a sample.
    labels : torch.Tensor
        ``(n,)`` int64 given labels in ``0..K-1``.

    Returns
    -------
    int
        The off-diagonal sum of the calibrated confident joint (see :func:`rank_label_issues`),
        rounded, in ``0..n``.
    """
    n, k = scores.shape
    scores, labels = scores.double().cpu(), labels.cpu()
    counts = torch.bincount(labels, minlength=k)
    sums = torch.zeros(k, dtype=torch.float64).index_add_(0, labels, scores.gather(1, labels[:, None]).squeeze(1))
    threshold = torch.where(counts > 0, sums / counts.clamp_min(1), torch.full_like(sums, math.inf))
    above = scores >= threshold
    confident = torch.where(above, scores, torch.full_like(scores, -math.inf)).argmax(1)
    has = above.any(1)
    joint = torch.zeros(k, k, dtype=torch.float64)
    joint.index_put_((labels[has], confident[has]), torch.ones(int(has.sum()), dtype=torch.float64), accumulate=True)
    calibrated = joint / joint.sum(1, keepdim=True).clamp_min(1.0) * counts[:, None].double()
    return int(min(n, max(0, round(float(calibrated.sum() - calibrated.diagonal().sum())))))


def _stratified_folds(labels: torch.Tensor, folds: int, seed: int) -> torch.Tensor:
    """``(n,)`` int64 fold of each sample: the classes' samples, each class in a seeded random order,
    dealt round-robin (fold sizes differ by at most one)."""
    generator = torch.Generator().manual_seed(seed)
    fold = torch.empty(labels.shape[0], dtype=torch.int64)
    dealt = 0
    for k in torch.unique(labels).tolist():
        members = (labels == k).nonzero().flatten()
        members = members[torch.randperm(members.numel(), generator=generator)]
        fold[members] = (torch.arange(members.numel()) + dealt) % folds
        dealt += members.numel()
    return fold


def _cross_fitted_logits(
    dualda: DualDA, features: torch.Tensor, labels: torch.Tensor, C: float, folds: int, show_progress: bool
) -> torch.Tensor:
    """``(n_train, K)`` float64 surrogate logits, each sample's from the SVM fitted without its fold
    (``folds == 1``: one SVM fitted on all samples)."""
    settings = dualda.settings.replace(C=C)
    logits = torch.empty(labels.shape[0], dualda.n_classes, dtype=torch.float64)
    fold = _stratified_folds(labels, folds, dualda.seed) if folds > 1 else torch.zeros_like(labels)
    for f in range(folds):
        held = (fold == f).nonzero().flatten()
        train = (fold != f).nonzero().flatten() if folds > 1 else held
        (result,) = solve(
            features[train.to(features.device)],
            labels[train],
            dualda.n_classes,
            settings,
            device=dualda.device,
            show_progress=show_progress,
        )
        logits[held] = surrogate_logits(features[held.to(features.device)], result.weight, result.intercept)
    return logits


class _LayerSelection(NamedTuple):
    """``rank_label_issues(layers=...)`` resolved: each entry's block (``None`` for ``phi``) in the
    user's order, and the extra layers an extraction captures."""

    blocks: List[Optional[str]]
    extra: Optional[FeatureLayers]


def _layer_selection(dualda: DualDA, layers: Sequence[Union[nn.Module, str]]) -> _LayerSelection:
    """Resolve ``layers`` against ``dualda.model``: the final layer (by module or name) is ``phi``."""
    if isinstance(layers, (str, nn.Module)) or not isinstance(layers, (list, tuple)):
        raise TypeError(
            f"`layers` must be a list or tuple of layers (modules or dotted names), got {type(layers).__name__}; "
            f"e.g. `layers=[{dualda.layer_name!r}]`."
        )
    if not layers:
        raise ValueError("`layers` is empty: pass None for DualDA's own features, or the layers whose inputs to use.")
    final = dualda.final_fc_layer
    is_phi = [layer is final or (isinstance(layer, str) and layer == dualda.layer_name) for layer in layers]
    if sum(is_phi) > 1:
        raise ValueError(f"`layers` lists the final layer {dualda.layer_name!r} (phi) twice.")
    others = [layer for layer, phi in zip(layers, is_phi) if not phi]
    extra = resolve_feature_layers(dualda.model, final, others, argument="layers") if others else None
    names = iter(extra.names if extra is not None else [])
    return _LayerSelection([None if phi else next(names) for phi in is_phi], extra)


def _select_blocks(
    features: torch.Tensor, widths: Sequence[int], names: Sequence[Optional[str]], wanted: Sequence[Optional[str]]
) -> torch.Tensor:
    """The columns of blocks ``wanted`` (``None``: ``phi``) of ``features``, whose blocks are ``names``
    (``phi`` first) of ``widths``, side by side in ``wanted``'s order (a copy)."""
    blocks = dict(zip(names, features.split([int(w) for w in widths], dim=1)))
    return torch.cat([blocks[b] for b in wanted], 1)


@contextmanager
def _training_features(
    dualda: DualDA, selection: Optional[_LayerSelection], show_progress: bool
) -> Iterator[torch.Tensor]:
    """``(n_train, d)`` training features: those the fit kept (no forward pass), or extracted again.

    Extracted again (memory-mapped under ``dualda.cache_dir`` if ``dualda.memory_budget`` asks
    for it; the scratch file is removed on exit) only when the fit did not keep them: above the
    memory budget, or distributed; or when ``selection`` names layers outside DualDA's features.
    """
    kept = dualda.train_features
    own: List[Optional[str]] = [None] + list(dualda.feature_layers or [])
    if kept is not None and (selection is None or all(b in own for b in selection.blocks)):
        if selection is None:
            yield kept
        else:
            widths = dualda.feature_widths or [kept.shape[1]]
            yield _select_blocks(kept, widths, own, selection.blocks)
        return
    extra = None if selection is None else selection.extra
    if selection is not None and (dualda.memory_budget is not None or dualda.distributed):
        raise ValueError(
            "`layers` needs the inputs of layers DualDA's fit did not keep, extracted in memory in one process; "
            "`memory_budget` and distributed fits rule that out. Rank with `layers=None`, or fit DualDA with "
            "those layers as `feature_layers`."
        )
    if selection is not None:
        dualda._check_model("rank_label_issues")  # the features must come from the fitted weights
    store, labels = extract(
        dualda.model,
        dualda.final_fc_layer,
        dualda.train_dataloader,
        device=dualda.device,
        autocast=dualda.autocast,
        memory_budget=dualda.memory_budget,
        scratch_dir=dualda.cache_dir,
        show_progress=show_progress,
        extra=extra,
    )
    try:
        if not torch.equal(labels.cpu(), dualda.train_labels.cpu()):
            raise ValueError(
                "`dualda`'s training data yields other labels than at its fit (a dataset that changed "
                "or draws randomly); refit DualDA, or pass `C=dualda.C` to rank with its own fit."
            )
        features = store.features
        if extra is not None:
            assert extra.widths is not None  # set by the extraction's first pass
            widths = [dualda.final_fc_layer.in_features] + list(extra.widths)
            features.mul_(block_scales(features, widths).to(features.device, features.dtype))  # ours: no copy
            if selection is not None:
                features = _select_blocks(features, widths, [None] + list(extra.names), selection.blocks)
        yield features
    finally:
        store.close()
