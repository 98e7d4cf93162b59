"""Choosing ``C``: fit DualDA's SVM for several ``C`` on features extracted once, and compare.

:func:`sweep_C` reports, per ``C``, what changes for the user: support vectors and sparsity,
agreement of the SVM surrogate with the network, class detection, mislabel detection (with the
paper's self-influence and with the surrogate's hinge loss), passes and fit time.
:func:`format_markdown` prints the rows as a Markdown table. It extracts and solves with the
same pipeline (:mod:`captum_dualxda._core.pipeline`) and scores with the same support set
(:class:`~captum_dualxda._core.support.SupportSet`) as :class:`~captum_dualxda.DualDA`, so each
row is exactly what ``DualDA(..., C=C)`` would give.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ._core.data import as_dataloader, model_input_batches
from ._core.features import batch_features_and_output, model_device, output_logits, resolve_linear_layer
from ._core.pipeline import extract, solve
from ._core.support import SupportSet
from ._core.surrogate import hinge_loss, surrogate_logits
from ._utils.arrays import ArrayLike, flag_mask
from ._utils.chunking import row_squared_norms
from ._utils.validation import check_flag, check_integer
from .metrics import (
    class_detection,
    hoyer_sparsity,
    logit_fidelity,
    mislabel_auc,
    random_class_detection,
    zero_fraction,
)
from .solver.fit import check_Cs
from .solver.problem import support_mask
from .solver.settings import SolverSettings

__all__ = ["SweepRow", "sweep_C", "format_markdown"]


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
    *,
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
    device: Optional[Union[str, torch.device]] = None,
    show_progress: bool = False,
) -> List[SweepRow]:
    """Fit DualDA's SVM for several ``C`` and report what changes, to choose ``C``.

    The training features are extracted ONCE (one forward pass over ``train_dataset``) and the
    SVMs are fitted in increasing ``C`` with warm starts
    (:func:`~captum_dualxda.solver.fit_crammer_singer_path`), so a sweep costs about one
    :class:`~captum_dualxda.DualDA` construction plus the solver times. Each fit is exactly the
    one ``DualDA(model, final_fc_layer, train_dataset, C=C, ...)`` would make with the same
    settings (the optimum does not depend on the warm start), and it is scored with the same
    :class:`~captum_dualxda._core.support.SupportSet`.

    Parameters
    ----------
    model, final_fc_layer, train_dataset, batch_size, fit_intercept, tol, max_iter, seed, backend
        As for :class:`~captum_dualxda.DualDA` (the training data is read in dataset order).
    Cs : sequence of float
        Values of ``C`` (> 0); rows come back in increasing ``C``.
    test_inputs : Tensor, tuple or DataLoader, optional
        Inputs whose predictions are explained (the network's own argmax): a Tensor, a tuple of
        model inputs, or a DataLoader of Captum batches (labels ignored). Enables the columns
        ``zero_fraction``, ``hoyer``, ``class_detection``, ``agreement`` and ``cosine``.
    flipped : array-like, optional
        Known mislabelled training samples, as for :func:`~captum_dualxda.metrics.mislabel_auc`:
        a ``(n_train,)`` boolean or 0/1 mask, or their distinct indices. Enables the mislabel
        AUC columns; checked before the features are extracted when ``train_dataset`` has a
        length.
    k : int
        Proponents per test input for ``class_detection``.
    baselines : bool
        Append the trivial baselines: ``"random order"`` (mislabel AUC 0.5 and the exact
        class-detection expectation) and ``"network loss"`` (mislabel AUC of the network's own
        cross-entropy on its training labels), where the columns they apply to are enabled.
    device : str or torch.device, optional
        Where the solver and the scoring run (default: the model's device), as for DualDA.
    show_progress : bool
        tqdm bars for the feature extraction and each solve.

    Returns
    -------
    list of SweepRow
        Use :func:`format_markdown` to print them.
    """
    # Every setting is checked before the features are extracted.
    values = sorted(check_Cs(Cs))
    k = check_integer(k, "k", low=1)
    baselines = check_flag(baselines, "baselines")
    settings = SolverSettings(
        C=values[0], fit_intercept=fit_intercept, tol=tol, max_iter=max_iter, seed=seed, backend=backend
    )
    show_progress = check_flag(show_progress, "show_progress")
    layer = resolve_linear_layer(model, final_fc_layer)
    loader = as_dataloader(train_dataset, batch_size)
    if flipped is not None:
        try:
            n_expected: Optional[int] = len(loader.dataset)  # type: ignore[arg-type]
        except TypeError:
            n_expected = None
        if n_expected is not None:
            flag_mask(flipped, n_expected)
    device = torch.device(device) if device is not None else model_device(model)
    store, labels = extract(model, layer, loader, device=device, show_progress=show_progress, desc="sweep_C features")
    features = store.features
    n_train = features.shape[0]
    with torch.no_grad():
        train_logits = layer(features.to(layer.weight.device, layer.weight.dtype)).double().cpu()
    mask = flag_mask(flipped, n_train) if flipped is not None else None

    test_phi = test_logits = None
    if test_inputs is not None:
        phis, logits = [], []
        for batch in model_input_batches(test_inputs, 256, "test_inputs"):
            phi, out = batch_features_and_output(model, layer, batch)
            phis.append(phi.float().to(device))
            logits.append(output_logits(out, layer.out_features).detach().double().cpu())
        test_phi, test_logits = torch.cat(phis), torch.cat(logits)
        test_pred = test_logits.argmax(1)

    results = solve(
        features, labels, layer.out_features, settings, device=device, show_progress=show_progress, Cs=values
    )
    squared_norms = row_squared_norms(features).float()
    rows: List[SweepRow] = []
    for C, result in zip(values, results):
        support = support_mask(result.alpha, C).nonzero().flatten()
        support_set = SupportSet.from_dual(result.alpha, support, features, layer.out_features).to(device)
        weight, intercept = result.weight, result.intercept
        row = SweepRow(
            method=f"DualDA C={C:g}",
            C=C,
            n_support=int(support.numel()),
            sparsity=1.0 - support.numel() / n_train,
            fit_time=float(result.time),
            n_iter=int(result.n_iter),
            gap=float(result.gap),
            train_agreement=float(
                (surrogate_logits(features, weight, intercept).argmax(1) == train_logits.argmax(1)).double().mean()
            ),
        )
        if test_phi is not None and test_logits is not None:
            fid = logit_fidelity(test_logits, surrogate_logits(test_phi, weight, intercept))
            row.agreement, row.cosine = fid.agreement, fid.cosine
            zeros, hoyers, detections = [], [], []
            for start in range(0, test_phi.shape[0], 256):
                pred = test_pred[start : start + 256]
                dense = support_set.dense_scores(test_phi[start : start + 256], pred.to(device)).cpu()
                zeros.append(zero_fraction(dense))
                hoyers.append(hoyer_sparsity(dense))
                detections.append(class_detection(dense, labels.cpu(), pred, k=k, reduction="none"))
            row.zero_fraction = float(np.concatenate(zeros).mean())
            row.hoyer = float(np.concatenate(hoyers).mean())
            row.class_detection = float(np.concatenate(detections).mean())
        if mask is not None and 0 < mask.sum() < n_train:
            row.auc_self_influence = mislabel_auc(support_set.self_influence(labels, squared_norms), mask)
            row.auc_hinge_loss = mislabel_auc(hinge_loss(features, labels, weight, intercept), mask)
        rows.append(row)
    if baselines and (mask is not None or test_phi is not None):
        rand = SweepRow(method="random order")
        if mask is not None:
            rand.auc = 0.5
        if test_phi is not None:
            rand.class_detection = float(random_class_detection(labels.cpu(), test_pred))
        rows.append(rand)
        if mask is not None and 0 < mask.sum() < n_train:
            loss = nn.functional.cross_entropy(train_logits, labels.cpu(), reduction="none")
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


def format_markdown(
    rows: Sequence[Any], columns: Optional[Sequence[str]] = None, headers: Optional[Dict[str, str]] = None
) -> str:
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
    dicts = [
        dataclasses.asdict(r) if dataclasses.is_dataclass(r) and not isinstance(r, type) else dict(r) for r in rows
    ]
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
