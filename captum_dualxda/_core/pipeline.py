"""Extract, then fit: the one way from a model and its training data to a fitted SVM.

:func:`extract` reads a training set through the model into a
:class:`~captum_dualxda._core.store.FeatureStore` (memory-mapped above a memory budget, sharded
over the ranks of a process group); :func:`solve` fits the Crammer-Singer SVM for
:class:`~captum_dualxda.solver.SolverSettings` on those features (one ``C``, or a path of them),
and :func:`fit_state` keeps what DualDA needs of a fit. :class:`FitJob` is DualDA's fit: the
cache lookup under an inter-process lock, the extraction (a stream fingerprinted in the same
pass), the solve on rank 0 and the broadcast of the result. :func:`~captum_dualxda.rank_label_issues`
and :func:`~captum_dualxda.choose_c.sweep_C` extract and solve with the same functions.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Union

import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from .._utils.chunking import nonfinite_rows, row_squared_norms
from ..exceptions import ConvergenceWarning
from ..solver import CrammerSingerResult, fit_crammer_singer, fit_crammer_singer_path, support_mask
from ..solver.fit import CONVERGENCE_ADVICE
from ..solver.settings import SolverSettings
from .cache import Fingerprint, entry_lock
from .distributed import broadcast_object, rank_and_world_size
from .features import FeatureLayers
from .guard import WeightsRecord
from .state import DualDAState, cache_file, fit_fingerprint, load_state, save_state, stream_fingerprint
from .store import FeatureStore, scratch_path
from .support import SupportSet
from .surrogate import hinge_loss
from .whitening import block_scales, whiten_rows, whitening_matrix

__all__ = ["extract", "solve", "fit_state", "Fit", "FitJob"]


def extract(
    model: nn.Module,
    layer: nn.Linear,
    loader: DataLoader,
    *,
    device: torch.device,
    autocast: Optional[torch.dtype] = None,
    memory_budget: Optional[int] = None,
    scratch_dir: Optional[str] = None,
    key: Optional[str] = None,
    distributed: bool = False,
    show_progress: bool = False,
    observe: Optional[Callable[[Any], Any]] = None,
    desc: str = "DualDA features",
    extra: Optional[FeatureLayers] = None,
) -> tuple[FeatureStore, torch.Tensor]:
    """The training features of ``loader`` and all labels, read once through the model.

    Parameters
    ----------
    model : nn.Module
    layer : nn.Linear
        The final linear layer; ``phi`` is its input.
    loader : DataLoader
        The training data in dataset order (:func:`~captum_dualxda._core.data.as_dataloader`).
    device : torch.device
        Where in-memory features are kept (features memory-mapped above ``memory_budget`` are on
        the CPU).
    autocast : torch.dtype, optional
        Mixed precision of the forward passes.
    memory_budget : int, optional
        Bytes the float32 features may occupy in memory; above it they are memory-mapped from a
        scratch file of this process in ``scratch_dir``.
    scratch_dir : str, optional
        Where that file goes (DualDA's ``cache_dir``).
    key : str, optional
        The fit's cache key (part of the scratch file's name).
    distributed : bool
        Each rank extracts its strided shard (collective: call it on every rank).
    show_progress : bool
    observe : callable, optional
        Called with every batch before the model sees it (a fingerprint taken in the same pass).
    desc : str
        The progress bar's label.
    extra : FeatureLayers, optional
        ``DualDA(feature_layers=...)``: these layers' inputs (unscaled) are concatenated after
        ``phi`` (:func:`scale_blocks` scales them; not with ``memory_budget`` or ``distributed``).

    Returns
    -------
    store : FeatureStore
        This process's rows; :meth:`~captum_dualxda._core.store.FeatureStore.close` removes a
        scratch file.
    labels : torch.Tensor
        ``(n_train,)`` int64, all labels on every rank.
    """
    mmap_path = scratch_path(scratch_dir, key, loader, layer.in_features, memory_budget)
    return FeatureStore.extract(
        model,
        layer,
        loader,
        device if mmap_path is None else torch.device("cpu"),
        show_progress,
        distributed=distributed,
        out_path=mmap_path,
        autocast=autocast,
        observe=observe,
        desc=desc,
        extra=extra,
    )


def solve(
    features: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int,
    settings: SolverSettings,
    *,
    device: Optional[Union[str, torch.device]],
    show_progress: bool = False,
    Cs: Optional[Sequence[float]] = None,
) -> list[CrammerSingerResult]:
    """Fit the Crammer-Singer SVM with ``settings`` (with each of ``Cs`` instead of ``settings.C``:
    a path, each fit warm-started from the one before).

    Returns
    -------
    list of CrammerSingerResult
        One result, or one per entry of ``Cs``.
    """
    arguments = settings.solver_arguments()
    common: Dict[str, Any] = dict(n_classes=n_classes, device=device, show_progress=show_progress)
    if Cs is None:
        return [fit_crammer_singer(features, labels, **arguments, **common)]
    del arguments["C"]
    return fit_crammer_singer_path(features, labels, Cs, **arguments, **common)


def fit_state(
    features: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int,
    settings: SolverSettings,
    *,
    device: Optional[Union[str, torch.device]],
    show_progress: bool = False,
    extraction_time: float = 0.0,
    fingerprint: Optional[str] = None,
    whiten: Optional[float] = None,
    keep_features: bool = False,
    feature_widths: Optional[Sequence[int]] = None,
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
    settings : SolverSettings
    device, show_progress
        As for :func:`~captum_dualxda.solver.fit_crammer_singer`.
    extraction_time : float
        Seconds the features took, recorded in ``stats``.
    fingerprint : str, optional
        Cache key to record.
    whiten : float, optional
        Fit in whitened features ``phi T`` (:func:`~captum_dualxda._core.whitening.whitening_matrix`
        with this ratio; an in-memory float32 copy of the features): the state's support features,
        squared norms, hinge losses and ``feature_transform`` are those of ``phi T``, its
        ``weight`` is ``W_T T`` (on ``phi``).
    keep_features : bool
        Keep all of ``features`` in the state (``train_features``, on the CPU; no copy when
        they already are), for :func:`~captum_dualxda.rank_label_issues`. FitJob asks for it
        when the features were held in memory in one process.
    feature_widths : sequence of int, optional
        ``DualDA(feature_layers=...)``: ``features`` are blocks of these widths side by side
        (``phi`` first); each later block is scaled to ``phi``'s mean squared row norm
        (:func:`~captum_dualxda._core.whitening.block_scales`) before anything else, and the state
        keeps the scales. ``features`` must then be an in-memory tensor (scaled in place).

    Returns
    -------
    DualDAState
        On the CPU, with the support vectors' features (and all features with ``keep_features``).

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
            f"Training labels must lie in 0..{n_classes - 1} (the outputs of `final_fc_layer`), found values in "
            f"{lo}..{hi}."
        )
    scale = None
    if feature_widths is not None:
        scale = block_scales(features, list(feature_widths))
        features.mul_(scale.to(features.device, features.dtype))  # in place: no second (n, d) copy
        if whiten is None:  # whitened, the norms are taken of phi T below
            squared_norms = row_squared_norms(features)
    raw_features = features  # kept for rank_label_issues, which fits on phi (psi) itself
    transform = None
    if whiten is not None:
        transform = whitening_matrix(features, whiten)
        features = whiten_rows(features, transform)
        squared_norms = row_squared_norms(features)
    (result,) = solve(features, labels, n_classes, settings, device=device, show_progress=show_progress)
    support = support_mask(result.alpha, settings.C).nonzero().flatten()
    weight = result.weight if transform is None else result.weight.to(transform) @ transform
    return DualDAState(
        n_train=features.shape[0],
        n_classes=n_classes,
        support=SupportSet.from_dual(result.alpha, support, features, n_classes),
        train_labels=labels.cpu(),
        train_squared_norms=squared_norms.float().cpu(),
        train_hinge_loss=hinge_loss(features, labels, result.weight, result.intercept).float().cpu(),
        weight=weight.float().cpu(),
        intercept=result.intercept.float().cpu(),
        train_features=raw_features.cpu() if keep_features else None,
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
        feature_transform=None if transform is None else transform.float().cpu(),
        feature_widths=None if feature_widths is None else [int(w) for w in feature_widths],
        feature_scale=None if scale is None else scale.float(),
    )


@dataclass
class Fit:
    """What a fitted DualDA keeps: the state, and this rank's support vectors ready to score.

    Attributes
    ----------
    state : DualDAState
        All support vectors (CPU; without their features where a distributed fit broadcast it).
    local : SupportSet
        This rank's support vectors ``j`` (``j % W == r``) with their features, on the scoring
        device: what scores.
    self_influence : torch.Tensor
        ``(n_train,)`` float32 ``a_i^{y_i} ||phi(x_i)||^2`` (CPU).
    absent_classes : torch.Tensor
        int64 classes without a training sample.
    stats : dict
        The state's statistics and ``from_cache``.
    """

    state: DualDAState
    local: SupportSet
    self_influence: torch.Tensor
    absent_classes: torch.Tensor
    stats: dict[str, Any]
    _coefficients: Optional[torch.Tensor] = field(default=None, repr=False)

    @classmethod
    def of(
        cls,
        state: DualDAState,
        store: Optional[FeatureStore],
        rank: int,
        world: int,
        device: torch.device,
        from_cache: bool,
    ) -> Fit:
        """The fit of a state (a fresh fit, a cache hit, or rank 0's broadcast).

        Distributed, rank ``r`` keeps (and scores) the support vectors ``j`` with ``j % W == r``,
        whose features it extracted itself (from ``store``) unless the state carries them.
        """
        absent = (torch.bincount(state.train_labels, minlength=state.n_classes) == 0).nonzero().flatten()
        local = state.support.shard(rank, world)
        if local.features is None:
            if store is None:
                raise RuntimeError("The fit state holds no support features and no local features were given.")
            local = local.with_features(store.rows(local.indices))
        return cls(
            state=state,
            local=local.to(device),
            self_influence=state.support.self_influence(state.train_labels, state.train_squared_norms),
            absent_classes=absent,
            stats={**state.stats, "from_cache": from_cache},
        )

    def coefficients(self) -> torch.Tensor:
        """``(n_train, K)`` float32 coefficients (CPU), built on first use from the support vectors' rows."""
        if self._coefficients is None:
            self._coefficients = self.state.support.dense_coefficients()
        return self._coefficients


@dataclass
class FitJob:
    """DualDA's fit of one model: from the cache, or extracted and solved (and then cached).

    Attributes
    ----------
    model, layer, layer_name, loader
        The model, its final linear layer (and dotted name), the training data in dataset order.
    settings : SolverSettings
    device : torch.device
        Where the solver and the scoring run.
    autocast : torch.dtype, optional
    cache_dir : str, optional
        With a cache: reloaded when the key matches, written after a fit.
    memory_budget : int, optional
    distributed : bool
        Over an initialised process group: rank 0 reads, writes and locks the cache and solves.
    weights : WeightsRecord
        The model's weights at the fit; told about the buffers the extraction's forward passes
        rewrite (:meth:`~captum_dualxda._core.guard.WeightsRecord.absorb`).
    whiten : float, optional
        Fit in whitened features (:func:`fit_state`); part of the cache key. Not distributed.
    extra : FeatureLayers, optional
        ``DualDA(feature_layers=...)``: their inputs join ``phi`` (names in the cache key). Not
        distributed, not with ``memory_budget``.
    """

    model: nn.Module
    layer: nn.Linear
    layer_name: str
    loader: DataLoader
    settings: SolverSettings
    device: torch.device
    autocast: Optional[torch.dtype]
    cache_dir: Optional[str]
    memory_budget: Optional[int]
    distributed: bool
    weights: WeightsRecord
    whiten: Optional[float] = None
    cache_path: Optional[str] = None
    extra: Optional[FeatureLayers] = None

    def __post_init__(self) -> None:
        self.rank, self.world = rank_and_world_size() if self.distributed else (0, 1)

    @property
    def n_classes(self) -> int:
        return self.layer.out_features

    def _fingerprint(self, loader: Any) -> str:
        """The fit's cache key from everything but the data's bytes (``loader``, or ``()`` for a stream,
        whose data are fingerprinted while they are read)."""
        return fit_fingerprint(
            self.model,
            self.layer_name,
            loader,
            self.settings,
            autocast=self.autocast,
            whiten=self.whiten,
            feature_layers=None if self.extra is None else list(self.extra.names),
        )

    def run(self, show_progress: bool) -> Fit:
        """The fit (every rank, collectively when distributed)."""
        if self.cache_dir is None:
            return self._fit(show_progress, None)
        if isinstance(self.loader.dataset, IterableDataset) and not self.distributed:
            return self._fit_stream(show_progress)
        key = self._fingerprint(self.loader)
        self.cache_path = cache_file(self.cache_dir, key)
        if self.rank != 0:  # rank 0 alone reads, writes and locks the cache
            return self._fit(show_progress, key)
        with entry_lock(self.cache_path, show_progress):
            return self._fit(show_progress, key)

    def _fit(
        self,
        show_progress: bool,
        key: Optional[str],
        extracted: Optional[tuple[FeatureStore, torch.Tensor, float]] = None,
    ) -> Fit:
        """Load the state from the cache or fit it (every rank, collectively).

        ``extracted``: ``(store, labels, start time)`` of features already extracted (a stream,
        fingerprinted in the same pass); the store is closed here.
        """
        state = None
        if self.cache_path is not None and key is not None and self.rank == 0:
            state = load_state(self.cache_path, key)
        if self.distributed:
            # Rank 0 alone decides whether the cache hits: cache directories may be node-local and
            # hold different files on different ranks, and ranks that disagreed would enter
            # different collectives. A hit sends the whole state (support features included;
            # nobody extracts); a miss sends None.
            data = broadcast_object(None if state is None else state.to_dict())
            state = None if data is None else DualDAState.from_dict(data)
        if state is not None:
            if extracted is not None:
                extracted[0].close()
            if not state.stats["converged"]:
                warnings.warn(
                    f"The cached DualDA fit {self.cache_path!r} stopped at max_iter={self.settings.max_iter} before "
                    f"reaching tol={self.settings.tol:g} (residual {state.stats['residual']:.3g}): its dual "
                    f"variables are not optimal. {CONVERGENCE_ADVICE}",
                    ConvergenceWarning,
                    stacklevel=4 if extracted is None else 5,
                )
            return Fit.of(state, None, self.rank, self.world, self.device, from_cache=True)
        if extracted is None:
            start = time.perf_counter()
            store, labels = self._extract(show_progress, key)
        else:
            store, labels, start = extracted
        self.weights.absorb(self.model)  # buffers the model's own forward pass rewrites are not checked
        try:
            solved = (
                self._solve(store, labels, key, time.perf_counter() - start, show_progress) if self.rank == 0 else None
            )
            # Distributed, only the small state travels; every rank takes its support vectors'
            # features from the rows it extracted itself.
            shared = solved
            if self.distributed:
                sent = solved.without_support_features().to_dict() if isinstance(solved, DualDAState) else solved
                received = broadcast_object(sent)
                if isinstance(received, Exception):
                    raise received
                shared = DualDAState.from_dict(received)
            assert isinstance(shared, DualDAState)  # rank 0 solved (or raised); the others received it
            fit = Fit.of(shared, store, self.rank, self.world, self.device, from_cache=False)
        finally:
            store.close()
        if self.cache_path is not None and self.rank == 0:
            assert isinstance(solved, DualDAState)
            save_state(solved, self.cache_path)
        return fit

    def _extract(
        self, show_progress: bool, key: Optional[str], observe: Optional[Callable[[Any], Any]] = None
    ) -> tuple[FeatureStore, torch.Tensor]:
        """This process's training features (in memory, or memory-mapped above ``memory_budget``) and all labels."""
        return extract(
            self.model,
            self.layer,
            self.loader,
            device=self.device,
            autocast=self.autocast,
            memory_budget=self.memory_budget,
            scratch_dir=self.cache_dir,
            key=key,
            distributed=self.distributed,
            show_progress=show_progress and self.rank == 0,
            observe=observe,
            extra=self.extra,
        )

    def _fit_stream(self, show_progress: bool) -> Fit:
        """Fit an ``IterableDataset`` with a cache, reading it once: fingerprinted while extracted.

        A stream may be readable only once, so its part of the cache key is taken in the pass
        that extracts its features (every batch hashed before the model sees it); a cache hit
        then saves the solve, not the extraction.
        """
        assert self.cache_dir is not None
        start = time.perf_counter()
        data = Fingerprint()
        store, labels = self._extract(show_progress, None, observe=data.update)
        self.weights.absorb(self.model)  # also on a cache hit: this pass ran the model
        try:
            key = stream_fingerprint(self._fingerprint(()), data)
            self.cache_path = cache_file(self.cache_dir, key)
            with entry_lock(self.cache_path, show_progress):
                return self._fit(show_progress, key, (store, labels, start))
        finally:
            store.close()

    def _widths(self, store: FeatureStore) -> Optional[list[int]]:
        """The feature blocks' widths (``phi`` first) of a fit with ``extra`` layers, None without."""
        if self.extra is None:
            return None
        extra = self.extra.widths or []
        return [int(store.features.shape[1]) - sum(extra), *extra]

    def _solve(
        self, store: FeatureStore, labels: torch.Tensor, key: Optional[str], extraction_time: float, show_progress: bool
    ) -> Union[DualDAState, Exception]:
        """Fit on rank 0; distributed, an error is returned (to be re-raised on every rank), not raised."""
        try:
            return fit_state(
                store.features,
                labels,
                self.n_classes,
                self.settings,
                device=self.device,
                show_progress=show_progress,
                extraction_time=extraction_time,
                fingerprint=key,
                whiten=self.whiten,
                # All features in memory in one process: keep them (rank_label_issues needs no
                # second forward pass). Memory-mapped (above memory_budget) or sharded: not kept.
                keep_features=store.path is None and store.is_complete and not self.distributed,
                feature_widths=self._widths(store),
            )
        except Exception as error:  # make every rank raise instead of hanging in the broadcast
            if self.distributed:
                return error
            raise
