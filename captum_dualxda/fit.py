"""The fit: training features and labels in, a typed, versioned :class:`DualDAState` out.

:func:`fit_state` solves the Crammer-Singer SVM on the training features
(:func:`~captum_dualxda.solver.fit_crammer_singer`) and keeps what DualDA needs afterwards: the
support set, the surrogate's weights, and per training sample its label, ``||phi||^2`` and hinge
loss. The state is also exactly what a cache file stores (:func:`save_state`,
:func:`load_state`); a file of another :data:`STATE_VERSION` is never loaded.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Optional, Union

import torch

from .cache import Fingerprint, atomic_save, load_cache
from .solver import fit_crammer_singer
from ._utils.chunking import nonfinite_rows, row_chunk, row_squared_norms
from .solver.problem import support_mask
from .support import SupportSet

__all__ = ["DualDAState", "STATE_VERSION", "fit_state", "fit_fingerprint", "save_state", "load_state", "hinge_loss", "surrogate_logits"]

STATE_VERSION = 6
"""Version of :class:`DualDAState` and of cache files; a file with another version refits."""


def hinge_loss(features: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, intercept: torch.Tensor) -> torch.Tensor:
    """Per-sample Crammer-Singer hinge loss of a linear surrogate, in 32 MiB row chunks.

    ``max_m (1 - [m == y_i] + s_m(x_i)) - s_{y_i}(x_i)`` with ``s = weight @ phi + intercept``.
    Classes without a training sample take no part in the SVM problem, so they are left out of
    the maximum.

    Parameters
    ----------
    features : torch.Tensor
        ``(n, d)`` float features (may be memory-mapped).
    labels : torch.Tensor
        ``(n,)`` int64.
    weight, intercept : torch.Tensor
        ``(K, d)`` and ``(K,)`` float64.

    Returns
    -------
    torch.Tensor
        ``(n,)`` float64, ``>= 0``, on the features' device.
    """
    out = torch.empty(features.shape[0], dtype=torch.float64, device=features.device)
    weight, intercept = weight.to(features.device), intercept.to(features.device)
    absent = torch.bincount(labels, minlength=weight.shape[0]).to(features.device) == 0
    chunk = row_chunk(features.shape[1] + weight.shape[0])
    for start in range(0, features.shape[0], chunk):
        y = labels[start : start + chunk]
        scores = features[start : start + chunk].double() @ weight.T + intercept
        scores[:, absent] = -math.inf
        own = scores.gather(1, y[:, None]).squeeze(1)
        margins = scores + 1.0
        margins[torch.arange(y.shape[0], device=y.device), y] -= 1.0
        out[start : start + chunk] = (margins.amax(1) - own).clamp_min(0.0)  # >= 0 up to rounding
    return out


def surrogate_logits(features: torch.Tensor, weight: torch.Tensor, intercept: torch.Tensor) -> torch.Tensor:
    """``(N, K)`` float64 logits ``phi @ weight.T + intercept`` of the SVM surrogate, on the CPU.

    Parameters
    ----------
    features : torch.Tensor
        ``(N, d)`` features ``phi(x)``.
    weight, intercept : torch.Tensor
        ``(K, d)`` and ``(K,)`` (e.g. ``DualDA.weight`` and ``DualDA.intercept``).
    """
    return features.double().cpu() @ weight.double().cpu().T + intercept.double().cpu()


@dataclass
class DualDAState:
    """Everything a fitted DualDA keeps; also the content of its cache file.

    Attributes
    ----------
    n_train : int
    n_classes : int
        ``K``, outputs of the final layer.
    support : SupportSet
        Support vectors on the CPU: indices, float32 row-sparse coefficients and, except in what a
        distributed fit broadcasts, their float32 features ``(n_sv, d)``.
    train_labels : torch.Tensor
        ``(n_train,)`` int64.
    train_squared_norms : torch.Tensor
        ``(n_train,)`` float32 ``||phi(x_i)||^2``.
    train_hinge_loss : torch.Tensor
        ``(n_train,)`` float32 hinge loss of the surrogate on each training sample.
    weight : torch.Tensor
        ``(K, d)`` float32 SVM weights (zero rows for classes without a sample).
    intercept : torch.Tensor
        ``(K,)`` float32.
    stats : dict
        ``time``, ``extraction_time``, ``gap``, ``residual``, ``n_iter``, ``n_support``,
        ``converged``, ``backend``.
    fingerprint : str, optional
        The cache key the state was fitted under.
    version : int
        :data:`STATE_VERSION`.
    """

    n_train: int
    n_classes: int
    support: SupportSet
    train_labels: torch.Tensor
    train_squared_norms: torch.Tensor
    train_hinge_loss: torch.Tensor
    weight: torch.Tensor
    intercept: torch.Tensor
    stats: Dict[str, Any] = field(default_factory=dict)
    fingerprint: Optional[str] = None
    version: int = STATE_VERSION

    def without_support_features(self) -> "DualDAState":
        """The same state without the ``(n_sv, d)`` features (what a distributed fit broadcasts)."""
        return dataclasses.replace(self, support=self.support.with_features(None))

    def to_dict(self) -> Dict[str, Any]:
        """Plain tensors, numbers and strings (loadable with ``torch.load(weights_only=True)``)."""
        s = self.support
        return {
            "version": self.version,
            "fingerprint": self.fingerprint,
            "n_train": self.n_train,
            "n_classes": self.n_classes,
            "support_indices": s.indices,
            "support_values": s.values,
            "support_classes": s.classes.int(),
            "support_features": s.features,
            "train_labels": self.train_labels,
            "train_squared_norms": self.train_squared_norms,
            "train_hinge_loss": self.train_hinge_loss,
            "weight": self.weight,
            "intercept": self.intercept,
            "stats": dict(self.stats),
        }

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "DualDAState":
        """Inverse of :meth:`to_dict`.

        Raises
        ------
        ValueError
            ``data`` has another version (an older cache file).
        """
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            raise ValueError(f"DualDA state of version {data.get('version') if isinstance(data, dict) else None}, expected {STATE_VERSION}.")
        support = SupportSet(data["support_indices"], data["support_values"], data["support_classes"], data["support_features"],
                             data["n_train"], data["n_classes"])
        return cls(int(data["n_train"]), int(data["n_classes"]), support, data["train_labels"].long(),
                   data["train_squared_norms"], data["train_hinge_loss"], data["weight"], data["intercept"],
                   dict(data["stats"]), data["fingerprint"], STATE_VERSION)


def fit_state(
    features: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int,
    *,
    C: float,
    fit_intercept: bool,
    tol: float,
    max_iter: int,
    seed: int,
    backend: str,
    device: Optional[Union[str, torch.device]],
    show_progress: bool = False,
    extraction_time: float = 0.0,
    fingerprint: Optional[str] = None,
) -> DualDAState:
    """Fit the Crammer-Singer SVM on training features and keep what DualDA needs.

    Parameters
    ----------
    features : torch.Tensor
        ``(n, d)`` float32/float64 training features (may be memory-mapped).
    labels : torch.Tensor
        ``(n,)`` int64 labels.
    n_classes : int
        ``K``; classes without a sample get zero coefficients (scikit-learn's problem).
    C, fit_intercept, tol, max_iter, seed, backend, device, show_progress
        As for :func:`~captum_dualxda.solver.fit_crammer_singer`.
    extraction_time : float
        Seconds the features took, recorded in ``stats``.
    fingerprint : str, optional
        Cache key to record.

    Returns
    -------
    DualDAState
        On the CPU, with the support vectors' features.

    Raises
    ------
    ValueError
        No sample, non-finite features, or labels outside ``0..K-1``.
    """
    if features.shape[0] == 0:
        raise ValueError("`train_dataset` is empty.")
    # One pass for the squared norms and the finiteness check: a NaN or inf feature makes its
    # row's float64 sum of squares non-finite; only float64 features above ~1e154 overflow, so
    # the rows are checked themselves before refusing.
    squared_norms = row_squared_norms(features)
    if not bool(torch.isfinite(squared_norms).all()) and nonfinite_rows(features, limit=1):
        raise ValueError("The training features (input of `final_fc_layer`) contain NaN or inf.")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= n_classes:
        raise ValueError(
            f"Training labels must lie in 0..{n_classes - 1} (the outputs of `final_fc_layer`), found values in {lo}..{hi}."
        )
    result = fit_crammer_singer(
        features, labels, C=C, fit_intercept=fit_intercept, tol=tol, max_iter=max_iter, seed=seed,
        show_progress=show_progress, n_classes=n_classes, backend=backend, device=device,
    )
    support = support_mask(result.alpha, C).nonzero().flatten()
    return DualDAState(
        n_train=features.shape[0],
        n_classes=n_classes,
        support=SupportSet.from_dual(result.alpha, support, features, n_classes),
        train_labels=labels.cpu(),
        train_squared_norms=squared_norms.float().cpu(),
        train_hinge_loss=hinge_loss(features, labels, result.weight, result.intercept).float().cpu(),
        weight=result.weight.float().cpu(),
        intercept=result.intercept.float().cpu(),
        stats={
            "time": result.time,
            "extraction_time": extraction_time,
            "gap": result.gap,
            "residual": result.residual,
            "n_iter": result.n_iter,
            "n_support": int(support.numel()),
            "converged": result.converged,
            "backend": result.backend,
        },
        fingerprint=fingerprint,
    )


def fit_fingerprint(model: torch.nn.Module, layer_name: str, loader: Iterable[Any], *settings: Any,
                    autocast: Optional[torch.dtype] = None) -> str:
    """The cache key of a fit: state version, layer, solver settings, the forward passes' precision,
    the model (class, module tree, weights, every buffer, plain tensor attributes) and every training
    batch (tensors inside any object in full), hashed with SHA-256 (:meth:`Fingerprint.update`).

    Parameters
    ----------
    model : nn.Module
    layer_name : str
        Dotted name of the final linear layer.
    loader : iterable
        The training batches, in the order they are fitted.
    *settings
        ``C``, ``fit_intercept``, ``tol``, ``max_iter``, ``seed``, ``backend``.
    autocast : torch.dtype, optional
        The mixed-precision dtype of the forward passes, mixed in only when set: without it the
        extraction switches off any ``torch.autocast`` the caller has active, so the model's own
        precision is the only one a key without it can stand for.

    Returns
    -------
    str
        64 hexadecimal digits.

    Raises
    ------
    TypeError
        A batch holds an object whose state cannot be read (see :meth:`Fingerprint.update`).
    """
    fp = Fingerprint().update("captum_dualxda.DualDA", STATE_VERSION)
    fp.update(layer_name, *settings)
    if autocast is not None:
        fp.update("autocast", str(autocast))
    fp.update_module(model)
    fp.update_batches(loader)
    return fp.hexdigest()


def save_state(state: DualDAState, path: str) -> None:
    """Write ``state`` to ``path`` atomically (a crash never leaves a file that loads)."""
    atomic_save(state.to_dict(), path)


def load_state(path: str, fingerprint: str) -> Optional[DualDAState]:
    """The state cached at ``path`` under ``fingerprint``, or None (absent, unreadable, stale, older version)."""
    data = load_cache(path, fingerprint)
    if data is None or data.get("version") != STATE_VERSION:
        return None
    return DualDAState.from_dict(data)
