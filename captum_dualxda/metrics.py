"""Quality metrics for training-data attribution, usable on any score matrix.

Every function here accepts torch tensors or NumPy arrays (or anything ``np.asarray`` takes) and
returns NumPy arrays or Python floats, so the same code scores DualDA, Captum's ``TracInCP*``,
``ArnoldiInfluenceFunction``, or another library's output. Conventions follow Captum: a score
matrix has shape ``(n_test, n_train)`` and ``[i, j]`` is the score of training sample ``j`` for
test sample ``i``; higher means "more supporting".

Mislabel detection (per training sample scores, higher = more suspicious):
    :func:`mislabel_auc`, :func:`mislabel_detection_curve`; score sources
    :func:`mislabel_scores` (DualDA self-influence or surrogate hinge loss) and the baseline
    :func:`training_loss` (the network's own cross-entropy on its training labels).
Class detection:
    :func:`class_detection`, :func:`class_detection_from_indices`,
    :func:`random_class_detection` (the exact expectation of a random ranking).
Sparsity of attributions:
    :func:`zero_fraction`, :func:`hoyer_sparsity`.
Surrogate fidelity (does the SVM on ``phi`` behave like the network?):
    :func:`logit_fidelity` (two logit matrices), :func:`surrogate_fidelity` (a DualDA + inputs).
Choosing ``C``:
    :func:`sweep_C` fits DualDA's SVM for several ``C`` on features extracted once and reports
    support vectors, sparsity, fidelity, fit time and mislabel AUC; :func:`format_markdown`
    prints any list of rows as a Markdown table.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

__all__ = [
    "mislabel_auc",
    "mislabel_detection_curve",
    "mislabel_scores",
    "training_loss",
    "class_detection",
    "class_detection_from_indices",
    "random_class_detection",
    "zero_fraction",
    "hoyer_sparsity",
    "Fidelity",
    "logit_fidelity",
    "surrogate_fidelity",
    "SweepRow",
    "sweep_C",
    "format_markdown",
]

ArrayLike = Union[np.ndarray, torch.Tensor, Sequence[Any]]


def _numpy(values: Any, name: str, ndim: Optional[int] = None) -> np.ndarray:
    """``values`` as a NumPy array (tensors are detached and moved to the CPU)."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        if values.dtype in (torch.bfloat16, torch.float16):
            values = values.float()
        array = values.numpy()
    else:
        array = np.asarray(values)
    if ndim is not None and array.ndim != ndim:
        raise ValueError(f"`{name}` must be {ndim}-D, got shape {tuple(array.shape)}.")
    return array


def _flags(flipped: ArrayLike, n: int) -> np.ndarray:
    """Boolean ``(n,)`` mask from a boolean mask or from an array of indices."""
    array = _numpy(flipped, "flipped", 1)
    if array.dtype == bool:
        if array.shape[0] != n:
            raise ValueError(f"`flipped` mask has {array.shape[0]} entries, the scores {n}.")
        return array
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError("`flipped` must be a boolean mask or an array of integer indices.")
    mask = np.zeros(n, dtype=bool)
    if array.size:
        if array.min() < 0 or array.max() >= n:
            raise ValueError(f"`flipped` indices must lie in 0..{n - 1}.")
        mask[array.astype(np.int64)] = True
    return mask


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
        ``(n_train,)`` boolean mask of mislabelled samples, or an integer array of their indices.

    Returns
    -------
    float
        In ``[0, 1]``.

    Raises
    ------
    ValueError
        If there are no flipped or no clean samples (the AUC is undefined), or on NaN scores.
    """
    values = _numpy(scores, "scores", 1).astype(np.float64)
    if np.isnan(values).any():
        raise ValueError("`scores` contains NaN.")
    mask = _flags(flipped, values.shape[0])
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
        ``(n_train,)`` boolean mask or integer indices of the mislabelled samples.

    Returns
    -------
    inspected : np.ndarray
        ``(n_train + 1,)`` float64, ``0, 1/n, ..., 1``.
    found : np.ndarray
        ``(n_train + 1,)`` float64, non-decreasing from 0 to 1.

    Raises
    ------
    ValueError
        If no sample is flipped (the fraction found is undefined), or on mismatched shapes.
    """
    values = _numpy(scores, "scores", 1).astype(np.float64)
    mask = _flags(flipped, values.shape[0])
    n = values.shape[0]
    if not mask.any():
        raise ValueError("`flipped` marks no sample.")
    order = np.argsort(-values, kind="stable")
    found = np.r_[0.0, np.cumsum(mask[order]) / mask.sum()]
    inspected = np.arange(n + 1, dtype=np.float64) / n
    return inspected, found


def mislabel_scores(dualda: Any, kind: str = "self_influence") -> torch.Tensor:
    """Per-training-sample mislabel scores from a fitted :class:`~captum_dualxda.DualDA`.

    Parameters
    ----------
    dualda : DualDA
    kind : {"self_influence", "hinge_loss"}
        ``"self_influence"`` (the paper's choice): ``a_i^{y_i} ||phi(x_i)||^2``, the diagonal of
        the attribution matrix. ``"hinge_loss"``: the surrogate SVM's Crammer-Singer hinge loss
        ``max_m (1 - [m == y_i] + s_m(x_i)) - s_{y_i}(x_i)`` on each training sample
        (``DualDA.train_hinge_loss``, computed during the fit at no extra cost). Which one finds
        flipped labels better depends on ``C`` and the data; ``benchmarks/peers.py`` measures
        both. Both are non-negative; a sample with zero score is not a support vector / is
        fitted with margin.

    Returns
    -------
    torch.Tensor
        ``(n_train,)`` float32 on the CPU, higher = more suspicious.
    """
    if kind == "self_influence":
        return dualda.self_influence().detach().float().cpu()
    if kind == "hinge_loss":
        return dualda.train_hinge_loss.detach().float().cpu()
    raise ValueError(f"`kind` must be 'self_influence' or 'hinge_loss', got {kind!r}.")


def _forward_batches(model: nn.Module, data: Union[Dataset, DataLoader], batch_size: int):
    """Yield ``(logits, labels)`` of every Captum batch ``(x_1, ..., x_m, labels)``."""
    from .features import as_dataloader, model_device, split_batch
    from .probe import ModelProbe

    loader = as_dataloader(data, batch_size, "data")
    device = model_device(model)
    for batch in loader:
        inputs, labels = split_batch(batch, "data")
        inputs = [v.to(device) if isinstance(v, torch.Tensor) else v for v in inputs]
        with ModelProbe(model), torch.no_grad():
            logits = model(*inputs)
        yield logits, labels.to(device)


def training_loss(model: nn.Module, train_dataset: Union[Dataset, DataLoader], batch_size: int = 256) -> torch.Tensor:
    """Baseline mislabel scores: the network's cross-entropy on each sample's own label.

    The cheapest mislabel detector there is (one forward pass); any attribution-based score
    should be compared with it. With possibly flipped labels, ``label`` is the label the network
    was trained on.

    Parameters
    ----------
    model : nn.Module
        A classifier returning logits ``(N, K)``; run in eval mode under ``no_grad`` (its mode
        is restored).
    train_dataset : Dataset or DataLoader
        Yields ``(x_1, ..., x_m, label)``; a Dataset is read unshuffled.
    batch_size : int

    Returns
    -------
    torch.Tensor
        ``(n_train,)`` float32 on the CPU, higher = more suspicious.
    """
    losses = [
        nn.functional.cross_entropy(logits.float(), labels, reduction="none").cpu()
        for logits, labels in _forward_batches(model, train_dataset, batch_size)
    ]
    return torch.cat(losses)


# ---------------------------------------------------------------------------- class detection
def _labels_of(train_labels: ArrayLike, classes: ArrayLike, n_test: int) -> Tuple[np.ndarray, np.ndarray]:
    labels = _numpy(train_labels, "train_labels", 1).astype(np.int64)
    explained = _numpy(classes, "classes").reshape(-1).astype(np.int64)
    if explained.shape[0] != n_test:
        raise ValueError(f"`classes` has {explained.shape[0]} entries for {n_test} test samples.")
    return labels, explained


def class_detection_from_indices(
    indices: ArrayLike, train_labels: ArrayLike, classes: ArrayLike, reduction: str = "mean"
) -> Union[float, np.ndarray]:
    """Fraction of the given top-k training samples whose label equals the explained class.

    Parameters
    ----------
    indices : array-like or KMostInfluentialResults
        ``(n_test, k)`` integer indices into the training set (e.g. ``influence(..., k=5).indices``;
        a ``KMostInfluentialResults`` is accepted as is).
    train_labels : array-like
        ``(n_train,)`` integer training labels (the labels the model was trained on).
    classes : array-like
        ``(n_test,)`` explained classes, normally the network's predictions.
    reduction : {"mean", "none"}
        ``"mean"``: the average over test samples (a float); ``"none"``: ``(n_test,)`` float64.

    Returns
    -------
    float or np.ndarray
    """
    if not isinstance(indices, (torch.Tensor, np.ndarray)) and hasattr(indices, "indices"):
        indices = indices.indices  # KMostInfluentialResults (a torch.Tensor has an .indices() method)
    top = _numpy(indices, "indices", 2).astype(np.int64)
    labels, explained = _labels_of(train_labels, classes, top.shape[0])
    if top.size and (top.min() < 0 or top.max() >= labels.shape[0]):
        raise ValueError(f"`indices` must lie in 0..{labels.shape[0] - 1}.")
    per_sample = (labels[top] == explained[:, None]).mean(1) if top.shape[1] else np.zeros(top.shape[0])
    return _reduce(per_sample, reduction)


def class_detection(
    scores: ArrayLike, train_labels: ArrayLike, classes: ArrayLike, k: int = 5, reduction: str = "mean"
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
    classes : array-like
        ``(n_test,)`` explained classes, normally the network's predictions.
    k : int
        Number of proponents per test sample (clipped to ``n_train``).
    reduction : {"mean", "none"}

    Returns
    -------
    float or np.ndarray
        The mean over test samples, or ``(n_test,)`` float64 with ``reduction="none"``.
    """
    matrix = _numpy(scores, "scores", 2).astype(np.float64)
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"`k` must be an integer >= 1, got {k!r}.")
    k = min(k, matrix.shape[1])
    top = np.argsort(-matrix, axis=1, kind="stable")[:, :k]
    return class_detection_from_indices(top, train_labels, classes, reduction)


def random_class_detection(train_labels: ArrayLike, classes: ArrayLike, reduction: str = "mean") -> Union[float, np.ndarray]:
    """Expected class detection of a random ranking: the frequency of each explained class.

    Parameters
    ----------
    train_labels : array-like
        ``(n_train,)`` integer training labels.
    classes : array-like
        ``(n_test,)`` explained classes.
    reduction : {"mean", "none"}

    Returns
    -------
    float or np.ndarray
        Exact expectation (for any ``k``) of :func:`class_detection` under a uniformly random
        order of the training set.
    """
    labels = _numpy(train_labels, "train_labels", 1).astype(np.int64)
    explained = _numpy(classes, "classes").reshape(-1).astype(np.int64)
    frequency = np.bincount(labels, minlength=max(int(labels.max()), int(explained.max(initial=0))) + 1) / labels.shape[0]
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
    matrix = _numpy(scores, "scores", 2)
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
    matrix = _numpy(scores, "scores", 2).astype(np.float64)
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
    a = _numpy(network_logits, "network_logits", 2).astype(np.float64)
    b = _numpy(surrogate_logits, "surrogate_logits", 2).astype(np.float64)
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


def _features_and_logits(model: nn.Module, layer: nn.Linear, inputs: Sequence[Any]) -> Tuple[torch.Tensor, torch.Tensor]:
    """One eval-mode, no-grad forward pass: ``(phi, logits)`` of one batch of model inputs."""
    from .features import batch_features_and_output

    phi, logits = batch_features_and_output(model, layer, inputs)
    return phi, logits.detach()


def _model_input_batches(inputs: Any, batch_size: int):
    """Batches of model inputs from a Tensor, a tuple of model inputs or a DataLoader."""
    from .features import split_batch

    if isinstance(inputs, DataLoader):
        for batch in inputs:
            yield split_batch(batch, "inputs")[0]
        return
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    if not isinstance(inputs, (tuple, list)) or not inputs:
        raise TypeError("`inputs` must be a Tensor, a tuple of model inputs or a DataLoader.")
    n = inputs[0].shape[0]
    for start in range(0, n, batch_size):
        yield tuple(v[start : start + batch_size] if isinstance(v, torch.Tensor) else v for v in inputs)


def surrogate_fidelity(dualda: Any, inputs: Any, batch_size: int = 256) -> Fidelity:
    """Agreement between DualDA's SVM surrogate and the network on the given inputs.

    The surrogate logits are ``phi(x) @ dualda.weight.T + dualda.intercept``; the network
    logits are ``model(x)``. DualDA explains the network through the surrogate, so low
    agreement means the attributions describe a model that predicts differently (raise ``C``).

    Parameters
    ----------
    dualda : DualDA
    inputs : Tensor, tuple or DataLoader
        A Tensor ``x`` (``model(x)``), a tuple of model inputs (``model(*inputs)``, no labels),
        or a DataLoader of Captum batches ``(x_1, ..., x_m, labels)`` (labels are ignored).
    batch_size : int
        Batch size for a Tensor or tuple.

    Returns
    -------
    Fidelity
    """
    net, sur = [], []
    weight = dualda.weight.double()
    intercept = dualda.intercept.double()
    for batch in _model_input_batches(inputs, batch_size):
        phi, logits = _features_and_logits(dualda.model, dualda.final_fc_layer, batch)
        net.append(logits.double().cpu())
        sur.append((phi.double().cpu() @ weight.T.cpu() + intercept.cpu()))
    return logit_fidelity(torch.cat(net), torch.cat(sur))


# ---------------------------------------------------------------------------- sweep over C
@dataclass
class SweepRow:
    """One row of :func:`sweep_C` (a DualDA fit for one ``C``, or a baseline).

    Attributes
    ----------
    method : str
        ``"DualDA C=..."``, ``"random order"`` or ``"network loss"``.
    C : float or None
    n_support : int or None
        Training samples with a non-zero coefficient row.
    sparsity : float or None
        Fraction of training samples that are NOT support vectors (``DualDA.sparsity``).
    zero_fraction : float or None
        Mean over test inputs of the fraction of exactly-zero attribution scores.
    hoyer : float or None
        Mean Hoyer sparsity of the test attribution rows.
    class_detection : float or None
        Top-``k`` class detection on the test inputs (explaining the network's predictions).
    agreement, cosine : float or None
        :func:`logit_fidelity` of the surrogate vs the network on the test inputs.
    train_agreement : float or None
        The same agreement on the training set.
    fit_time : float or None
        Solver seconds (warm-started from the previous ``C``).
    n_iter : int or None
    gap : float or None
        Relative duality gap of the fit.
    auc_self_influence, auc_hinge_loss : float or None
        :func:`mislabel_auc` of self-influence / surrogate hinge loss (when ``flipped`` is given).
    auc : float or None
        For baseline rows: the mislabel AUC of that baseline.
    """

    method: str
    C: Optional[float] = None
    n_support: Optional[int] = None
    sparsity: Optional[float] = None
    zero_fraction: Optional[float] = None
    hoyer: Optional[float] = None
    class_detection: Optional[float] = None
    agreement: Optional[float] = None
    cosine: Optional[float] = None
    train_agreement: Optional[float] = None
    fit_time: Optional[float] = None
    n_iter: Optional[int] = None
    gap: Optional[float] = None
    auc_self_influence: Optional[float] = None
    auc_hinge_loss: Optional[float] = None
    auc: Optional[float] = None

    def as_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def sweep_C(
    model: nn.Module,
    final_fc_layer: Union[nn.Linear, str],
    train_dataset: Union[Dataset, DataLoader],
    Cs: Sequence[float] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0),
    test_inputs: Any = None,
    flipped: Optional[ArrayLike] = None,
    batch_size: int = 64,
    k: int = 5,
    baselines: bool = True,
    fit_intercept: bool = True,
    tol: float = 1e-4,
    max_iter: int = 100_000,
    seed: int = 0,
    backend: str = "auto",
) -> List[SweepRow]:
    """Fit DualDA's SVM for several ``C`` and report what changes, to choose ``C``.

    The training features are extracted ONCE (one forward pass over ``train_dataset``) and the
    SVMs are fitted in increasing ``C`` with warm starts
    (:func:`~captum_dualxda.solver.fit_crammer_singer_path`), so a sweep costs about one
    :class:`~captum_dualxda.DualDA` construction plus the solver times. Each fit is exactly the
    one ``DualDA(model, final_fc_layer, train_dataset, C=C, ...)`` would make with the same
    settings (the optimum does not depend on the warm start).

    Parameters
    ----------
    model, final_fc_layer, train_dataset, batch_size, fit_intercept, tol, max_iter, seed, backend
        As for :class:`~captum_dualxda.DualDA`.
    Cs : sequence of float
        Values of ``C`` (> 0); rows come back in increasing ``C``.
    test_inputs : Tensor, tuple or DataLoader, optional
        Inputs whose predictions are explained (the network's own argmax): a Tensor, a tuple of
        model inputs, or a DataLoader of Captum batches (labels ignored). Enables the columns
        ``zero_fraction``, ``hoyer``, ``class_detection``, ``agreement`` and ``cosine``.
    flipped : array-like, optional
        ``(n_train,)`` boolean mask (or indices) of known mislabelled training samples. Enables
        the mislabel AUC columns.
    k : int
        Proponents per test input for ``class_detection``.
    baselines : bool
        Append the trivial baselines: ``"random order"`` (mislabel AUC 0.5 and the exact
        class-detection expectation) and ``"network loss"`` (mislabel AUC of the network's own
        cross-entropy on its training labels), where the columns they apply to are enabled.

    Returns
    -------
    list of SweepRow
        Use :func:`format_markdown` to print them.
    """
    from .features import as_dataloader, extract_features, model_device, resolve_linear_layer
    from .solver import fit_crammer_singer_path
    from .solver.problem import support_mask
    from .solver.sparse_dual import dual_to_dense
    from .dualda import _hinge_loss

    layer = resolve_linear_layer(model, final_fc_layer)
    loader = as_dataloader(train_dataset, batch_size)
    features, labels = extract_features(model, layer, loader, model_device(model))
    features, labels = features.cpu(), labels.cpu()
    n_train = features.shape[0]
    with torch.no_grad():
        train_logits = layer(features.to(layer.weight.device, layer.weight.dtype)).double().cpu()
    mask = _flags(flipped, n_train) if flipped is not None else None

    test_phi = test_logits = None
    if test_inputs is not None:
        phis, logits = [], []
        for batch in _model_input_batches(test_inputs, 256):
            phi, out = _features_and_logits(model, layer, batch)
            phis.append(phi.float().cpu())
            logits.append(out.double().cpu())
        test_phi, test_logits = torch.cat(phis), torch.cat(logits)
        test_pred = test_logits.argmax(1)

    values = sorted(float(c) for c in Cs)
    results = fit_crammer_singer_path(
        features, labels, values, fit_intercept=fit_intercept, tol=tol, max_iter=max_iter, seed=seed,
        n_classes=layer.out_features, backend=backend,
    )
    squared_norms = features.double().pow(2).sum(1)
    rows: List[SweepRow] = []
    for C, result in zip(values, results):
        support = support_mask(result.alpha, C).cpu()
        alpha = dual_to_dense(result.alpha).cpu()
        weight, intercept = result.weight.double().cpu(), result.intercept.double().cpu()
        row = SweepRow(
            method=f"DualDA C={C:g}",
            C=C,
            n_support=int(support.sum()),
            sparsity=1.0 - float(support.double().mean()),
            fit_time=float(result.time),
            n_iter=int(result.n_iter),
            gap=float(result.gap),
            train_agreement=float(((features.double() @ weight.T + intercept).argmax(1) == train_logits.argmax(1)).double().mean()),
        )
        if test_phi is not None:
            fid = logit_fidelity(test_logits, test_phi.double() @ weight.T + intercept)
            row.agreement, row.cosine = fid.agreement, fid.cosine
            sv_alpha = alpha[support].float()
            sv_feat = features[support]
            zeros, hoyers, detections = [], [], []
            for start in range(0, test_phi.shape[0], 256):
                pred = test_pred[start : start + 256]
                dense = torch.zeros(pred.shape[0], n_train)
                dense[:, support] = (test_phi[start : start + 256] @ sv_feat.T) * sv_alpha[:, pred].T
                zeros.append(zero_fraction(dense))
                hoyers.append(hoyer_sparsity(dense))
                detections.append(class_detection(dense, labels, pred, k=k, reduction="none"))
            row.zero_fraction = float(np.concatenate(zeros).mean())
            row.hoyer = float(np.concatenate(hoyers).mean())
            row.class_detection = float(np.concatenate(detections).mean())
        if mask is not None and 0 < mask.sum() < n_train:
            own = alpha.gather(1, labels[:, None]).squeeze(1).double()
            row.auc_self_influence = mislabel_auc(own * squared_norms, mask)
            row.auc_hinge_loss = mislabel_auc(_hinge_loss(features, labels, weight, intercept), mask)
        rows.append(row)
    if baselines and (mask is not None or test_phi is not None):
        rand = SweepRow(method="random order")
        if mask is not None:
            rand.auc = 0.5
        if test_phi is not None:
            rand.class_detection = float(random_class_detection(labels, test_pred))
        rows.append(rand)
        if mask is not None and 0 < mask.sum() < n_train:
            loss = nn.functional.cross_entropy(train_logits, labels, reduction="none")
            rows.append(SweepRow(method="network loss", auc=mislabel_auc(loss, mask)))
    return rows


_HEADERS = {
    "method": "method",
    "n_support": "support vectors",
    "sparsity": "non-SV fraction",
    "zero_fraction": "zero scores",
    "hoyer": "Hoyer",
    "class_detection": "class det. top-k",
    "agreement": "agreement (test)",
    "cosine": "logit cosine",
    "train_agreement": "agreement (train)",
    "fit_time": "fit time [s]",
    "gap": "rel. gap",
    "auc_self_influence": "mislabel AUC self-inf.",
    "auc_hinge_loss": "mislabel AUC hinge",
    "auc": "mislabel AUC baseline",
}


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.1e}"
        return f"{value:.3f}"
    return str(value)


def format_markdown(rows: Sequence[Any], columns: Optional[Sequence[str]] = None, headers: Optional[Dict[str, str]] = None) -> str:
    """A Markdown table of rows (dataclasses such as :class:`SweepRow`, or dicts).

    Parameters
    ----------
    rows : sequence of dataclass or dict
    columns : sequence of str, optional
        Keys to show, in order. Default: every key that is not None in at least one row
        (for :class:`SweepRow`: without ``C`` and ``n_iter``, which the method name and
        ``fit time`` already tell).
    headers : dict, optional
        Column titles; defaults to readable names for :class:`SweepRow` fields.

    Returns
    -------
    str
        ``None`` cells are shown as ``–`` (not applicable / not measured).
    """
    dicts = [dataclasses.asdict(r) if dataclasses.is_dataclass(r) else dict(r) for r in rows]
    if not dicts:
        return ""
    if columns is None:
        keys: List[str] = []
        for d in dicts:
            keys.extend(key for key in d if key not in keys)
        skip = {"C", "n_iter"} if all(dataclasses.is_dataclass(r) and isinstance(r, SweepRow) for r in rows) else set()
        columns = [key for key in keys if key not in skip and any(d.get(key) is not None for d in dicts)]
    names = {**_HEADERS, **(headers or {})}
    lines = [
        "| " + " | ".join(names.get(c, c) for c in columns) + " |",
        "|" + "|".join(" --- " if i == 0 else " ---: " for i in range(len(columns))) + "|",
    ]
    for d in dicts:
        lines.append("| " + " | ".join(_cell(d.get(c)) for c in columns) + " |")
    return "\n".join(lines)
