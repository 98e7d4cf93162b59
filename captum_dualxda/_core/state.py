"""What a DualDA fit keeps, its cache key, and its cache file.

:class:`DualDAState` holds what DualDA needs after a fit: the support set, the surrogate's
weights, and per training sample its label, ``||phi||^2`` and hinge loss. It is also exactly what
a cache file stores (:func:`save_state`, :func:`load_state`); a file of another
:data:`STATE_VERSION` is never loaded. :func:`fit_fingerprint` is the cache key.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch.utils.data import DataLoader

from ..solver.settings import SolverSettings
from .cache import Fingerprint, atomic_save, load_cache
from .data import loader_batches
from .support import SupportSet

__all__ = [
    "DualDAState",
    "STATE_VERSION",
    "fit_fingerprint",
    "stream_fingerprint",
    "cache_file",
    "save_state",
    "load_state",
]

STATE_VERSION = 9
"""Version of :class:`DualDAState`, of cache files and of the cache key; another version refits.

7: the solver settings enter the key by name (:meth:`SolverSettings.key_items`), with
``intercept_scaling``. 8: the state keeps all training features (``train_features``) when they
were held in memory. 9: ``feature_layers`` (their names in the key; ``feature_widths`` and
``feature_scale`` in the state)."""


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
        ``(K, d)`` float32 SVM weights on ``phi`` (zero rows for classes without a sample); for a
        whitened fit ``W_T T``, so that ``phi @ weight.T`` is the surrogate's score either way.
    intercept : torch.Tensor
        ``(K,)`` float32.
    train_features : torch.Tensor, optional
        ``(n_train, d)`` all training features ``phi`` (not whitened) on the CPU, in the extraction's dtype (float32;
        float64 for a float64 model): ``4 n_train d`` bytes, e.g. 24 MB for 60,000 x 100. Kept
        when the fit held them in memory in one process; None when they were memory-mapped
        (above ``memory_budget``) or sharded over the ranks of a distributed fit.
    stats : dict
        ``time``, ``extraction_time``, ``gap``, ``residual``, ``n_iter``, ``n_support``,
        ``converged``, ``backend``.
    fingerprint : str, optional
        The cache key the state was fitted under.
    feature_transform : torch.Tensor, optional
        ``(d, d)`` float32 whitening matrix ``T`` of a whitened fit (``DualDA(whiten=...)``): the
        support features, squared norms and hinge losses are those of ``phi T``. None: plain ``phi``.
    feature_widths : list of int, optional
        ``DualDA(feature_layers=...)``: the widths of the feature blocks, ``phi`` first, then each
        extra layer's flattened input; the features are ``psi = [phi, s_1 f_1, ...]`` (all of the
        state's features, ``weight`` and ``feature_transform`` refer to ``psi``). None: ``phi`` alone.
    feature_scale : torch.Tensor, optional
        ``(d,)`` float32 column scales of ``psi`` (1 on ``phi``, ``s_b`` on block ``b``,
        :func:`~captum_dualxda._core.whitening.block_scales`), applied to test features too.
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
    train_features: Optional[torch.Tensor] = None
    stats: dict[str, Any] = field(default_factory=dict)
    fingerprint: Optional[str] = None
    feature_transform: Optional[torch.Tensor] = None
    feature_widths: Optional[list[int]] = None
    feature_scale: Optional[torch.Tensor] = None
    version: int = STATE_VERSION

    def without_support_features(self) -> DualDAState:
        """The same state without the ``(n_sv, d)`` support features and the training features (what a
        distributed fit broadcasts)."""
        return dataclasses.replace(self, support=self.support.with_features(None), train_features=None)

    def to_dict(self) -> dict[str, Any]:
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
            "train_features": self.train_features,
            "stats": dict(self.stats),
            "feature_transform": self.feature_transform,
            "feature_widths": None if self.feature_widths is None else [int(w) for w in self.feature_widths],
            "feature_scale": self.feature_scale,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DualDAState:
        """Inverse of :meth:`to_dict`.

        Raises
        ------
        ValueError
            ``data`` has another version (an older cache file).
        """
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            found = data.get("version") if isinstance(data, dict) else None
            raise ValueError(f"DualDA state of version {found}, expected {STATE_VERSION}.")
        support = SupportSet(
            data["support_indices"],
            data["support_values"],
            data["support_classes"],
            data["support_features"],
            data["n_train"],
            data["n_classes"],
        )
        return cls(
            n_train=int(data["n_train"]),
            n_classes=int(data["n_classes"]),
            support=support,
            train_labels=data["train_labels"].long(),
            train_squared_norms=data["train_squared_norms"],
            train_hinge_loss=data["train_hinge_loss"],
            weight=data["weight"],
            intercept=data["intercept"],
            train_features=data.get("train_features"),
            stats=dict(data["stats"]),
            fingerprint=data["fingerprint"],
            feature_transform=data.get("feature_transform"),
            feature_widths=None if data.get("feature_widths") is None else [int(w) for w in data["feature_widths"]],
            feature_scale=data.get("feature_scale"),
            version=STATE_VERSION,
        )


def fit_fingerprint(
    model: torch.nn.Module,
    layer_name: str,
    loader: Iterable[Any],
    settings: SolverSettings,
    *,
    autocast: Optional[torch.dtype] = None,
    whiten: Optional[float] = None,
    feature_layers: Optional[list[str]] = None,
) -> str:
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
    settings : SolverSettings
        Every setting, by name (:meth:`SolverSettings.key_items`).
    autocast : torch.dtype, optional
        The mixed-precision dtype of the forward passes, mixed in only when set: without it the
        extraction switches off any ``torch.autocast`` the caller has active, so the model's own
        precision is the only one a key without it can stand for.
    whiten : float, optional
        The whitening ratio of a whitened fit (``DualDA(whiten=...)``), mixed in only when set
        (keys of plain fits stay as they were).
    feature_layers : list of str, optional
        The dotted names of ``DualDA(feature_layers=...)``, in order, mixed in only when set.

    Returns
    -------
    str
        64 hexadecimal digits.

    Raises
    ------
    TypeError
        A batch holds an object whose state cannot be read (see :meth:`Fingerprint.update`).
    """
    fp = Fingerprint().update("captum_dualxda.DualDA", STATE_VERSION, layer_name)
    for name, value in settings.key_items():
        fp.update(name, value)
    if autocast is not None:
        fp.update("autocast", str(autocast))
    if whiten is not None:
        fp.update("whiten", repr(float(whiten)))
    if feature_layers is not None:
        fp.update("feature_layers", list(feature_layers))
    fp.update_module(model)
    fp.update_batches(loader_batches(loader) if isinstance(loader, DataLoader) else loader)
    return fp.hexdigest()


def stream_fingerprint(settings_key: str, data: Fingerprint) -> str:
    """The cache key of a fit on a stream read once: the key without data (:func:`fit_fingerprint`
    of no batches) and the fingerprint ``data`` of the batches, taken while they were extracted."""
    return Fingerprint().update("one pass", settings_key, data.hexdigest()).hexdigest()


def cache_file(cache_dir: str, key: str) -> str:
    """The cache file of the fit with key ``key`` in ``cache_dir``."""
    return os.path.join(cache_dir, f"dualda-{key[:32]}.pt")


def save_state(state: DualDAState, path: str) -> None:
    """Write ``state`` to ``path`` atomically (a crash never leaves a file that loads)."""
    atomic_save(state.to_dict(), path)


def load_state(path: str, fingerprint: str) -> Optional[DualDAState]:
    """The state cached at ``path`` under ``fingerprint``, or None (absent, unreadable, stale, older version)."""
    data = load_cache(path, fingerprint)
    if data is None or data.get("version") != STATE_VERSION:
        return None
    return DualDAState.from_dict(data)
