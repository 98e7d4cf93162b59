"""Quality measures on score arrays: no model is run, any attribution method's output will do.

Every function here accepts torch tensors or NumPy arrays (or anything ``np.asarray`` takes) and
returns NumPy arrays or Python floats. A score matrix has shape ``(n_test, n_train)`` and
``[i, j]`` is the score of training sample ``j`` for test sample ``i`` (Captum's convention);
higher means "more supporting".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple, Tuple, Union

import numpy as np
import torch

from .._utils.arrays import ArrayLike, flag_mask, sample_mask, to_numpy
from .._utils.validation import check_integer

__all__ = [
    "mislabel_auc",
    "mislabel_detection_curve",
    "class_detection",
    "class_detection_from_indices",
    "random_class_detection",
    "zero_fraction",
    "hoyer_sparsity",
    "LDSResult",
    "lds",
    "Fidelity",
    "logit_fidelity",
]


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values``; tied values get the average of their ranks."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # Start of each run of equal values in the sorted order.
    starts = np.r_[0, np.flatnonzero(sorted_values[1:] != sorted_values[:-1]) + 1]
    ends = np.r_[starts[1:], values.shape[0]]
    average = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks = np.empty(values.shape[0], dtype=np.float64)
    ranks[order] = np.repeat(average, ends - starts)
    return ranks


# ---------------------------------------------------------------------------- mislabel detection
def mislabel_auc(scores: ArrayLike, flipped: ArrayLike) -> float:
    """ROC AUC of per-training-sample scores for finding mislabelled samples.

    The probability that a randomly drawn flipped sample scores higher than a randomly drawn
    clean one (ties count one half): 1.0 is perfect, 0.5 is a random order. Computed from
    ranks (Mann-Whitney U) with tied scores given their average rank, so it equals
    ``sklearn.metrics.roc_auc_score(flipped, scores)``.

    Parameters
    ----------
    scores : array-like
        ``(n_train,)`` real scores, higher = more suspicious (e.g. self-influence). NaN is
        not allowed.
    flipped : array-like
        The mislabelled samples: a ``(n_train,)`` boolean mask; a ``(n_train,)`` vector of 0s and
        1s (scikit-learn's ``y_true``, e.g. ``flags.astype(int)`` or ``(noisy != clean).long()``),
        read as a mask whatever its dtype; or an integer array of their distinct indices. A 0/1
        vector that could be either (``n_train <= 2``, distinct entries) is refused as ambiguous.

    Returns
    -------
    float
        In ``[0, 1]``.

    Raises
    ------
    ValueError
        If there are no flipped or no clean samples (the AUC is undefined), on NaN scores, or
        when ``flipped`` is not a mask of ``n_train`` entries or distinct indices in range (the
        message says how to pass a mask or indices).
    """
    values = to_numpy(scores, "scores", 1).astype(np.float64)
    if np.isnan(values).any():
        raise ValueError("`scores` contains NaN.")
    mask = flag_mask(flipped, values.shape[0])
    n_pos = int(mask.sum())
    n_neg = values.shape[0] - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("The AUC needs at least one flipped and one clean sample.")
    ranks = _average_ranks(values)
    u = ranks[mask].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def mislabel_detection_curve(scores: ArrayLike, flipped: ArrayLike) -> Tuple[np.ndarray, np.ndarray]:
    """Fraction of flipped labels found vs fraction of the training data inspected.

    Inspect training samples in order of decreasing score (ties: lower index first, the order
    of a stable sort); after inspecting ``t`` samples, ``found[t]`` is the fraction of all
    flipped samples seen so far. A random order gives the diagonal on average; the area
    ``np.trapz(found, inspected)`` is quanda's ``MislabelingDetectionMetric`` score up to its
    ``1/n`` discretisation.

    Parameters
    ----------
    scores : array-like
        ``(n_train,)`` scores, higher = more suspicious.
    flipped : array-like
        The mislabelled samples, as for :func:`mislabel_auc`: a ``(n_train,)`` boolean or 0/1
        mask, or their distinct integer indices.

    Returns
    -------
    inspected : np.ndarray
        ``(n_train + 1,)`` float64, ``0, 1/n, ..., 1``.
    found : np.ndarray
        ``(n_train + 1,)`` float64, non-decreasing from 0 to 1.

    Raises
    ------
    ValueError
        If no sample is flipped (the fraction found is undefined), on mismatched shapes, repeated
        or out-of-range indices, or an ambiguous ``flipped``.
    """
    values = to_numpy(scores, "scores", 1).astype(np.float64)
    mask = flag_mask(flipped, values.shape[0])
    n = values.shape[0]
    if not mask.any():
        raise ValueError("`flipped` marks no sample.")
    order = np.argsort(-values, kind="stable")
    found = np.r_[0.0, np.cumsum(mask[order]) / mask.sum()]
    inspected = np.arange(n + 1, dtype=np.float64) / n
    return inspected, found


# ---------------------------------------------------------------------------- class detection
def _labels_of(train_labels: ArrayLike, targets: ArrayLike, n_test: int) -> Tuple[np.ndarray, np.ndarray]:
    labels = to_numpy(train_labels, "train_labels", 1).astype(np.int64)
    explained = to_numpy(targets, "targets").reshape(-1).astype(np.int64)
    if explained.shape[0] != n_test:
        raise ValueError(f"`targets` has {explained.shape[0]} entries for {n_test} test samples.")
    return labels, explained


def class_detection_from_indices(
    indices: ArrayLike, train_labels: ArrayLike, targets: ArrayLike, reduction: str = "mean"
) -> Union[float, np.ndarray]:
    """Fraction of the given top-k training samples whose label equals the explained class.

    Parameters
    ----------
    indices : array-like or KMostInfluentialResults
        ``(n_test, k)`` integer indices into the training set (e.g. ``influence(..., k=5).indices``;
        a ``KMostInfluentialResults`` is accepted as is).
    train_labels : array-like
        ``(n_train,)`` integer training labels (the labels the model was trained on).
    targets : array-like
        ``(n_test,)`` explained classes, normally the network's predictions.
    reduction : {"mean", "none"}
        ``"mean"``: the average over test samples (a float); ``"none"``: ``(n_test,)`` float64.

    Returns
    -------
    float or np.ndarray
    """
    if not isinstance(indices, (torch.Tensor, np.ndarray)) and hasattr(indices, "indices"):
        indices = indices.indices  # KMostInfluentialResults (a torch.Tensor has an .indices() method)
    top = to_numpy(indices, "indices", 2).astype(np.int64)
    labels, explained = _labels_of(train_labels, targets, top.shape[0])
    if top.size and (top.min() < 0 or top.max() >= labels.shape[0]):
        raise ValueError(f"`indices` must lie in 0..{labels.shape[0] - 1}.")
    per_sample = (labels[top] == explained[:, None]).mean(1) if top.shape[1] else np.zeros(top.shape[0])
    return _reduce(per_sample, reduction)


def class_detection(
    scores: ArrayLike, train_labels: ArrayLike, targets: ArrayLike, k: int = 5, reduction: str = "mean"
) -> Union[float, np.ndarray]:
    """Fraction of the top-``k`` proponents whose training label equals the explained class.

    A sanity check of attributions (Hanawa et al., ICLR 2021; quanda's
    ``ClassDetectionMetric``): the training samples that most support a prediction of class
    ``c`` should mostly be labelled ``c``.

    Parameters
    ----------
    scores : array-like
        ``(n_test, n_train)`` score matrix, higher = more supporting. Ties are broken towards the
        lower training index (stable sort), so for a sparse method with fewer than ``k`` positive
        scores the remaining places go to zero-score samples in index order.
    train_labels : array-like
        ``(n_train,)`` integer training labels.
    targets : array-like
        ``(n_test,)`` explained classes, normally the network's predictions.
    k : int
        Number of proponents per test sample (clipped to ``n_train``).
    reduction : {"mean", "none"}

    Returns
    -------
    float or np.ndarray
        The mean over test samples, or ``(n_test,)`` float64 with ``reduction="none"``.
    """
    matrix = to_numpy(scores, "scores", 2).astype(np.float64)
    k = min(check_integer(k, "k", low=1), matrix.shape[1])
    top = np.argsort(-matrix, axis=1, kind="stable")[:, :k]
    return class_detection_from_indices(top, train_labels, targets, reduction)


def random_class_detection(
    train_labels: ArrayLike, targets: ArrayLike, reduction: str = "mean"
) -> Union[float, np.ndarray]:
    """Expected class detection of a random ranking: the frequency of each explained class.

    Parameters
    ----------
    train_labels : array-like
        ``(n_train,)`` integer training labels.
    targets : array-like
        ``(n_test,)`` explained classes.
    reduction : {"mean", "none"}

    Returns
    -------
    float or np.ndarray
        Exact expectation (for any ``k``) of :func:`class_detection` under a uniformly random
        order of the training set.
    """
    labels = to_numpy(train_labels, "train_labels", 1).astype(np.int64)
    explained = to_numpy(targets, "targets").reshape(-1).astype(np.int64)
    n_classes = max(int(labels.max()), int(explained.max(initial=0))) + 1
    frequency = np.bincount(labels, minlength=n_classes) / labels.shape[0]
    return _reduce(frequency[explained], reduction)


def _reduce(per_sample: np.ndarray, reduction: str) -> Union[float, np.ndarray]:
    if reduction == "mean":
        return float(per_sample.mean()) if per_sample.size else float("nan")
    if reduction == "none":
        return per_sample.astype(np.float64)
    raise ValueError(f"`reduction` must be 'mean' or 'none', got {reduction!r}.")


# ---------------------------------------------------------------------------- sparsity
def zero_fraction(scores: ArrayLike) -> np.ndarray:
    """Fraction of exactly-zero scores in each row of a score matrix.

    Parameters
    ----------
    scores : array-like
        ``(n_test, n_train)``.

    Returns
    -------
    np.ndarray
        ``(n_test,)`` float64 in ``[0, 1]``; 1 means the row is all zero.
    """
    matrix = to_numpy(scores, "scores", 2)
    if matrix.shape[1] == 0:
        raise ValueError("`scores` has no columns.")
    return (matrix == 0).mean(1).astype(np.float64)


def hoyer_sparsity(scores: ArrayLike) -> np.ndarray:
    """Hoyer's sparsity measure of each row: ``(sqrt(n) - |t|_1 / |t|_2) / (sqrt(n) - 1)``.

    1 for a row with a single non-zero entry, 0 for a row whose entries all have the same
    magnitude, in between otherwise (Hoyer, JMLR 2004). Scale invariant and, unlike
    :func:`zero_fraction`, sensitive to near-zero scores.

    Parameters
    ----------
    scores : array-like
        ``(n_test, n_train)``.

    Returns
    -------
    np.ndarray
        ``(n_test,)`` float64 in ``[0, 1]``. Conventions where the formula is ``0/0``: an
        all-zero row counts as maximally sparse (1.0, no training sample is credited, matching
        :func:`zero_fraction` = 1), and so does every row when ``n_train == 1``.
    """
    matrix = to_numpy(scores, "scores", 2).astype(np.float64)
    n = matrix.shape[1]
    if n == 0:
        raise ValueError("`scores` has no columns.")
    l1 = np.abs(matrix).sum(1)
    l2 = np.sqrt((matrix * matrix).sum(1))
    out = np.ones(matrix.shape[0], dtype=np.float64)
    if n == 1:
        return out
    nonzero = l2 > 0
    out[nonzero] = (math.sqrt(n) - l1[nonzero] / l2[nonzero]) / (math.sqrt(n) - 1.0)
    return np.clip(out, 0.0, 1.0)  # rounding can step outside by ~1e-16


# ---------------------------------------------------------------------------- counterfactual quality
class LDSResult(NamedTuple):
    """Linear datamodeling score of one score matrix (see :func:`lds`).

    Attributes
    ----------
    mean : float
        Mean of ``per_sample`` over the test samples where it is defined (NaN if none is).
    per_sample : np.ndarray
        ``(n_test,)`` float64 Spearman correlation per test sample, in ``[-1, 1]``; NaN where it
        is undefined (the predicted sums or the margins of that test sample are constant over
        the subsets).
    n_valid : int
        Number of test samples with a defined correlation (the count behind ``mean``).
    """

    mean: float
    per_sample: np.ndarray
    n_valid: int


def _subset_masks(subsets: Any, n_train: int) -> np.ndarray:
    """``(M, n_train)`` bool masks from masks, a 2-D index array or a sequence of index arrays.

    Each row follows :func:`~captum_dualxda._utils.arrays.sample_mask`'s rule.
    """
    if isinstance(subsets, (torch.Tensor, np.ndarray)):
        rows = list(to_numpy(subsets, "subsets", 2))
    elif isinstance(subsets, (list, tuple)):
        rows = [to_numpy(row, f"subsets[{m}]", 1) for m, row in enumerate(subsets)]
    else:
        raise TypeError(
            f"`subsets` must be an array, a tensor or a list of index arrays, got {type(subsets).__name__}."
        )
    masks = np.zeros((len(rows), n_train), dtype=bool)
    for m, row in enumerate(rows):
        if row.dtype == bool and row.shape[0] != n_train:  # the likely cause: a transposed score matrix
            raise ValueError(
                f"`subsets` row {m} is a mask over {row.shape[0]} training samples, but `scores` has "
                f"{n_train} columns; `scores` must be (n_test, n_train) (dattri's attributors return "
                f"(n_train, n_test): pass the transpose)."
            )
        masks[m] = sample_mask(row, n_train, f"subsets[{m}]", " (the columns of `scores`)")
    return masks


def lds(scores: ArrayLike, subsets: Any, margins: ArrayLike) -> LDSResult:
    r"""Linear datamodeling score: how well summed attributions predict retrained models.

    The counterfactual test of an attribution method (Park et al., "TRAK", ICML 2023; dattri's
    ``lds`` metric). Train one model per random training subset ``S_m`` (typically ``M`` = 50-100
    subsets of half the training set), record a model output ``margins[m, t]`` on each test
    sample (e.g. the correct-class logit minus the largest other logit), and predict it
    linearly from the attributions of the full model, ``g_m(t) = sum_{i in S_m} scores[t, i]``.
    The score of test sample ``t`` is the Spearman rank correlation, over the ``M`` subsets,
    between ``g_m(t)`` and ``margins[m, t]``; the LDS is its mean over test samples. Only the
    ranking of the subsets matters, so any positive rescaling of a row of ``scores`` leaves it
    unchanged. Ties get their average rank (as in ``scipy.stats.spearmanr``).

    The margins are noisy even for a fixed subset (retraining with another seed changes them),
    so no method reaches 1: retrain some subsets twice to measure that ceiling
    (``benchmarks/lds.py`` does).

    Parameters
    ----------
    scores : array-like
        ``(n_test, n_train)`` attributions of the model trained on all data; ``[t, i]`` is
        training sample ``i``'s score for test sample ``t`` (Captum's layout; dattri's
        attributors return the transpose). Must be finite.
    subsets : array-like or sequence of array-like
        The ``M`` training subsets: a ``(M, n_train)`` boolean or 0/1 mask, a ``(M, s)`` integer
        array of training indices (equal-size subsets, dattri's layout), or a list of ``M`` 1-D
        index arrays or masks (subsets of different sizes). Indices must lie in
        ``0..n_train - 1`` and not repeat within a subset. ``M >= 2``. A row is read with the rule
        of :func:`mislabel_auc`'s ``flipped``.
    margins : array-like
        ``(M, n_test)`` output of the model retrained on subset ``m`` for test sample ``t``.
        Must be finite.

    Returns
    -------
    LDSResult
        ``(mean, per_sample, n_valid)``: the mean over test samples, the ``(n_test,)`` float64
        per-test correlations (NaN where a test sample's predicted sums or margins are constant
        over the subsets, so the correlation is undefined) and the number of defined ones.

    Raises
    ------
    ValueError
        On shapes that do not fit together, fewer than 2 subsets, NaN or infinite values, or
        subset indices outside the training set; the message names the argument.

    Examples
    --------
    >>> result = lds(dualda.influence((x_test, y_test)), subsets, margins)
    >>> result.mean           # the LDS
    >>> result.per_sample     # (n_test,) one correlation per test sample

    ``benchmarks/lds.py`` builds ``subsets`` and ``margins`` by retraining a CNN 100 times.
    """
    matrix = to_numpy(scores, "scores", 2).astype(np.float64)
    targets = to_numpy(margins, "margins", 2).astype(np.float64)
    n_test, n_train = matrix.shape
    if not np.isfinite(matrix).all():
        raise ValueError("`scores` contains NaN or infinite values.")
    if not np.isfinite(targets).all():
        raise ValueError("`margins` contains NaN or infinite values.")
    masks = _subset_masks(subsets, n_train)
    n_subsets = masks.shape[0]
    if n_subsets < 2:
        raise ValueError(f"`subsets` must hold at least 2 subsets for a rank correlation, got {n_subsets}.")
    if targets.shape != (n_subsets, n_test):
        raise ValueError(
            f"`margins` must have shape (M, n_test) = ({n_subsets}, {n_test}) for {n_subsets} subsets and "
            f"`scores` of shape {matrix.shape}, got {targets.shape}."
        )
    predicted = masks.astype(np.float64) @ matrix.T  # (M, n_test): sum of each subset's scores
    per_sample = np.full(n_test, np.nan)
    for t in range(n_test):
        a = _average_ranks(predicted[:, t])
        b = _average_ranks(targets[:, t])
        a -= a.mean()
        b -= b.mean()
        norm = math.sqrt(float(a @ a) * float(b @ b))
        if norm > 0:
            per_sample[t] = min(1.0, max(-1.0, float(a @ b) / norm))
    valid = ~np.isnan(per_sample)
    mean = float(per_sample[valid].mean()) if valid.any() else float("nan")
    return LDSResult(mean=mean, per_sample=per_sample, n_valid=int(valid.sum()))


# ---------------------------------------------------------------------------- fidelity
@dataclass
class Fidelity:
    """How closely a surrogate's logits follow the network's.

    Attributes
    ----------
    agreement : float
        Fraction of inputs on which both predict the same class (argmax of the logits).
    cosine : float
        Mean over inputs of the cosine similarity between the two logit vectors.
    per_sample_cosine : np.ndarray
        ``(N,)`` float64 cosine per input (0 where either logit vector is all zero).
    n : int
        Number of inputs.
    """

    agreement: float
    cosine: float
    per_sample_cosine: np.ndarray
    n: int


def logit_fidelity(network_logits: ArrayLike, surrogate_logits: ArrayLike) -> Fidelity:
    """Prediction agreement and logit cosine similarity of two logit matrices.

    Parameters
    ----------
    network_logits : array-like
        ``(N, K)`` logits of the network.
    surrogate_logits : array-like
        ``(N, K)`` logits of the surrogate, e.g. ``phi @ dualda.weight.T + dualda.intercept``.

    Returns
    -------
    Fidelity
        Argmax ties resolve to the lower class index, as in ``torch.argmax``/``np.argmax``.
    """
    a = to_numpy(network_logits, "network_logits", 2).astype(np.float64)
    b = to_numpy(surrogate_logits, "surrogate_logits", 2).astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"Logit shapes differ: {a.shape} vs {b.shape}.")
    if a.shape[0] == 0:
        raise ValueError("No inputs.")
    agreement = float((a.argmax(1) == b.argmax(1)).mean())
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.zeros(a.shape[0])
    ok = norms > 0
    cos[ok] = (a[ok] * b[ok]).sum(1) / norms[ok]
    return Fidelity(agreement=agreement, cosine=float(cos.mean()), per_sample_cosine=cos, n=int(a.shape[0]))
