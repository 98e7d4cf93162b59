"""DualDA: data attribution from the dual variables of a multiclass SVM, as a Captum DataInfluence.

``DualDA(model, final_fc_layer, train_dataset, C=...)`` extracts the training features
``phi(x_i)`` (the input of ``final_fc_layer``), fits a Crammer-Singer SVM on them and keeps its
dual variables ``a_i^c``. The influence of training sample ``i`` on the prediction of class
``c`` for input ``x`` is ``a_i^c * phi(x_i).phi(x)``; only support vectors score non-zero.

This class is the Captum face of the machinery in :mod:`captum_dualxda._core`: it validates the
arguments, asks the pipeline for the fit (:class:`~captum_dualxda._core.pipeline.FitJob`: cache,
extraction, solver), routes ``influence`` to ``_influence`` / ``_get_k_most_influential`` like
Captum's own classes, and scores with the support set (:mod:`captum_dualxda._core.support`). A
checkpoint ensemble is a :class:`~captum_dualxda._core.ensemble.CheckpointEnsemble` of single
fits. See ``docs/architecture.md``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Dict, Optional, Union, overload

import torch
from captum.influence import DataInfluence
from captum.influence._utils.common import KMostInfluentialResults, _influence_route_to_helpers
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset
from tqdm import tqdm

from ._core.cache import check_writable_dir
from ._core.checkpoints import CheckpointLoader
from ._core.data import as_dataloader, dataset_items, iterate_batches, split_batch
from ._core.distributed import all_reduce_sum, is_distributed, merge_topk, rank_and_world_size, stable_topk
from ._core.ensemble import CheckpointEnsemble
from ._core.features import (
    FeatureLayers,
    batch_features,
    batch_features_and_output,
    check_autocast,
    layer_name,
    model_device,
    resolve_feature_layers,
    resolve_linear_layer,
)
from ._core.guard import WeightsRecord
from ._core.pipeline import Fit, FitJob
from ._core.support import warn_absent
from ._utils.inputs import ModelInputs
from ._utils.validation import check_flag, check_integer, check_positive
from .exceptions import ModelChangedError
from .solver.settings import DEFAULT_C, SolverSettings

__all__ = ["DualDA"]


class DualDA(DataInfluence):
    r"""Sparse training-data attribution from a Crammer-Singer SVM's dual (Yolcu et al., TMLR 2025).

    A drop-in next to Captum's ``TracInCPFast``: same constructor conventions
    (``final_fc_layer``, ``train_dataset``, ``batch_size``) and the same ``influence`` /
    ``self_influence`` calls. The fit happens in the constructor.

    Parameters
    ----------
    model : nn.Module
        The classifier ``f(x) = W_f phi(x) + b_f``; it is never modified. The fit belongs to
        its weights at construction: once they change (trained further, other weights loaded),
        ``influence`` raises :class:`~captum_dualxda.exceptions.ModelChangedError` until the model
        is refitted or the weights are put back. Train/eval mode and ``requires_grad`` may
        change freely.
    final_fc_layer : nn.Linear or str
        The final linear layer (or its dotted name); ``phi(x)`` is its input. A head applied to
        every position (decoder classifiers: Llama's or GPT-2's ``score``) gives the input at
        the position the model classifies (the last non-padding token), found from the logits.
    train_dataset : Dataset or DataLoader
        Yields ``(x_1, ..., x_m, label)`` (Captum), or dicts with the label under ``"labels"`` or
        ``"label"`` and the model inputs under the other keys (Hugging Face: a Dataset of dicts,
        or a DataLoader with e.g. ``DataCollatorWithPadding``; the model is called as
        ``model(**inputs)``). Always read in dataset order, each sample once, so
        index ``j`` of every result addresses ``dataset[j]``: a Dataset with ``batch_size``; a
        DataLoader's dataset with its ``collate_fn``, ``num_workers`` and ``pin_memory`` even
        when it shuffles or drops its last batch (a loader whose sampler leaves samples out or
        repeats them is refused, and so is ``batch_size=None``; a custom sampler is checked on a
        private copy, its generator left as it was). Every batch the ``collate_fn`` makes is
        checked against its dataset items: one row each, in order, with the item's label (a
        ``collate_fn`` that skips unreadable samples or sorts a batch is refused; see
        :func:`~captum_dualxda._core.data.check_batch` for what is guaranteed). An ``IterableDataset``
        is read in iteration order, once per fit; as a stream has no samples by index,
        ``train_inputs`` (XDA, ``xda_pairs``) needs a map-style Dataset, and a stream that can be
        read only once cannot be read again (checkpoint ensembles, ``rank_label_issues`` at
        another C).
    C : float
        SVM regularisation, ``> 0`` (default ``1e-3``). Smaller C gives more support vectors
        (denser attributions) and converges in fewer passes; typical values 1e-5 .. 1. The
        README's "Choosing C" section has the measurements behind the default.
    batch_size : int
        Batch size for a Dataset ``train_dataset``.
    fit_intercept : bool
        Fit the SVM with LIBLINEAR's regularised intercept column.
    tol : float
        Solver tolerance on the largest natural residual (scikit-learn's default 1e-4).
    max_iter : int
        Maximum solver passes.
    device : str or torch.device, optional
        Where the solver and the scoring run (default: the model's device). Forward passes always
        run on the model's device; tensors are moved as needed.
    cache_dir : str, optional
        Directory for the fit. Reloaded only when the model (its class, module structure,
        weights, every buffer, also non-persistent ones, and plain tensor attributes), layer,
        training data (tensors inside any batch object included; a batch object whose state
        cannot be read is refused), C and solver settings are identical;
        anything else refits. Writes are atomic, and processes that fit the same configuration
        at the same time take turns (a file lock): the first fits and saves, the others load
        its result. A cached fit that did not converge warns again when loaded. An
        ``IterableDataset`` is read once: fingerprinted while its features are extracted, so a
        cached fit then saves the solve, not the extraction.
    show_progress : bool
        tqdm bars for feature extraction and the solver.
    seed : int
        Solver seed (results are deterministic for a seed).
    backend : str
        Solver backend (see :func:`~captum_dualxda.solver.fit_crammer_singer`).
    distributed : bool, optional
        Scale out over an initialised ``torch.distributed`` process group (default: whenever one
        with more than one process is initialised): each rank extracts its strided shard of the
        training set, rank 0 solves, every rank scores its share of the support vectors.
        ``influence`` and ``self_influence`` are then collective calls that return, on every
        rank, the single-process result. See ``docs/scaling.md``.
    memory_budget : int, optional
        Bytes the training features (``4 * n_train * d``) may occupy in memory; above it they are
        memory-mapped from a scratch file of this process in ``cache_dir`` (required then),
        deleted after the fit. See ``docs/scaling.md``. Features held in memory are kept after
        the fit (``train_features``, ``4 n_train d`` bytes, also in the cache file) for
        :func:`~captum_dualxda.rank_label_issues`; memory-mapped ones are not, and it extracts
        them again.
    autocast : torch.dtype, optional
        ``torch.bfloat16`` or ``torch.float16``: run the model's forward passes (training
        features and test features) under ``torch.autocast`` with that dtype; the features are
        stored, solved and scored in float32 all the same. Default None: the model's own
        precision, also when the call is made inside a ``torch.autocast`` block (which is
        switched off for these passes). Part of the cache key. Against float32 fits the support
        set and the top proponents stay the same while single scores move by a few per cent; it
        pays where the forward pass of a large model dominates (``benchmarks/README.md``, *Mixed
        precision*, measures both).
    checkpoints : str or iterable of str, optional
        A checkpoint ensemble, with Captum ``TracInCP``'s argument: a directory (its files sorted
        by name), or a list or iterator of checkpoint paths, e.g. the states after several
        epochs or independently trained models of one architecture. One SVM is fitted per
        checkpoint (each with its own features and cache entry); ``influence`` and
        ``self_influence`` return the MEAN of the per-checkpoint scores, and
        :func:`~captum_dualxda.xda_pairs` the mean of the per-checkpoint heatmaps, which adds up
        to that mean score. ``benchmarks/lds.py`` measures what this buys: with 3 independently
        trained models the linear datamodeling score rises from 0.143 to 0.166 at ``C=1e-4``
        (3 checkpoints of one run: 0.152), level with TRAK on the same 3 models. Every call
        loads each checkpoint once per test batch and then gives the model back the weights it
        had. Attributes of a single fit (``coefficients``, ``weight``, ``support_indices``, ...)
        do not exist on an ensemble; distributed fitting is not supported with checkpoints.
    checkpoints_load_func : callable, optional
        ``(model, path) -> Any`` loading one checkpoint into ``model`` in place (Captum's
        convention; the return value is ignored). Default:
        :func:`~captum_dualxda._core.checkpoints.load_state_dict_checkpoint` (a ``torch.save``-d
        state dict, optionally under ``"model_state_dict"``).

    whiten : float, optional
        Fit and score in whitened features ``phi T``, ``T = s (G + lambda I)^{-1/2}`` with
        ``G = Phi^T Phi / n`` over the training features, ``lambda = whiten * tr(G) / d`` and ``s``
        keeping the mean squared norm (so ``C`` keeps its scale): the score becomes
        ``a_i^c phi(x_i) T T phi(x)``, TRAK's last-layer kernel form. Default None (plain ``phi``).
        In dattri's MNIST setting it raises the linear datamodeling score from 0.101 to 0.175
        (``whiten=0.01``, ``C=1e-3``; 0.188 at ``C=1e-4``), above TRAK with one checkpoint (0.108),
        at about 1.1x the fit time, the attributions staying sparse (96 % zeros); the surrogate agrees
        with the network on 96 % instead of 99 % of the test images (``benchmarks/README.md``, *LDS
        variants*). Part of the cache key. Not with ``distributed`` or ``memory_budget``. ``xda_pairs``
        explains the whitened score: the test image's relevance at the features is
        ``a_j phi(x) * (T T phi(x_j))``, the training image's ``a_j phi(x_j) * (T T phi(x))``.
    feature_layers : sequence of nn.Module or str, optional
        Earlier layers (modules or dotted names, like ``final_fc_layer``) whose inputs, flattened per
        sample, are concatenated after ``phi`` as the SVM's features: ``psi(x) = [phi(x), s_1 f_1(x),
        s_2 f_2(x), ...]`` with ``f_b`` the input of layer ``b`` and ``s_b`` the scale that gives the
        block ``phi``'s mean squared norm over the training set (fitted once, kept in the fit and
        applied to test features: ``feature_scale``). Every score, ``weight``, ``train_features`` and
        ``whiten`` then refer to ``psi``. Measured with ``whiten``: in dattri's MNIST-MLP setting the
        inputs of all three layers (``feature_layers=["fc2", "fc1"]``: 64 + 128 + 784 values),
        ``whiten=0.1``, ``C=1e-3`` give a linear datamodeling score of 0.294 on one model (plain
        DualDA 0.101, TRAK-1 0.108) and 0.431 over TRAK's 10 checkpoints (``checkpoints=``; TRAK-10
        0.346), 67 % of the scores exactly zero, about 1 s per fit there; unwhitened they add little
        (0.131) (``benchmarks/README.md``, *LDS variants*). Each layer must run exactly once per
        forward pass, before ``final_fc_layer``, on a tensor with one row per sample and a fixed
        width (a layer that sees a token sequence is refused); checked on the first training sample
        before the fit. Its names are part of the cache key. Not with ``distributed`` or
        ``memory_budget``. XDA explains such a fit with ``XDA(..., feature_layers=...)`` of the same
        layers (:func:`~captum_dualxda.xda_pairs`: each block's relevance starts at its layer's input).

    Attributes
    ----------
    coefficients : torch.Tensor
        ``(n_train, K)`` float32 dual variables ``a_i^c`` (CPU); zero rows off the support. Built
        on first access; scoring uses only the support vectors' rows.
    support_indices : torch.Tensor
        ``(n_sv,)`` int64 training indices with a non-zero coefficient row.
    weight : torch.Tensor
        ``(K, d)`` float32 SVM weights, ``coefficients.T @ features`` (on ``psi`` with ``feature_layers``).
    intercept : torch.Tensor
        ``(K,)`` float32 SVM intercept (zeros without ``fit_intercept``).
    train_labels : torch.Tensor
        ``(n_train,)`` int64.
    absent_classes : torch.Tensor
        int64 classes of ``final_fc_layer`` without a training sample. The SVM is fitted on the
        classes present (scikit-learn's problem); absent classes have zero coefficients, weight
        and intercept, and explaining them returns zeros with a warning.
    train_hinge_loss : torch.Tensor
        ``(n_train,)`` float32 Crammer-Singer hinge loss (slack) of each training sample under
        the fitted surrogate, ``max_m (1 - [m == y_i] + s_m(x_i)) - s_{y_i}(x_i)`` with
        ``s = weight @ phi + intercept``; a by-product of the fit.
    train_features : torch.Tensor or None
        ``(n_train, d)`` all training features (CPU), kept from the fit when it held them in
        memory in one process (``4 n_train d`` bytes, also in the cache file); None above
        ``memory_budget`` or distributed.
    fit_stats : dict
        ``time`` (solver seconds), ``extraction_time``, ``gap`` (relative duality gap),
        ``n_iter``, ``n_support``, ``converged``, ``residual``, ``backend``, ``from_cache``.

    Examples
    --------
    >>> dualda = DualDA(net, "fc", train_set, C=1e-3)
    >>> top = dualda.influence((x_test, net(x_test).argmax(1)), k=5)   # proponents
    >>> scores = dualda.influence((x_test, net(x_test).argmax(1)))      # (n_test, n_train)
    """

    def __init__(
        self,
        model: nn.Module,
        final_fc_layer: Union[nn.Linear, str],
        train_dataset: Union[Dataset, DataLoader],
        *,
        C: float = DEFAULT_C,
        batch_size: int = 64,
        fit_intercept: bool = True,
        tol: float = 1e-4,
        max_iter: int = 100_000,
        device: Optional[Union[str, torch.device]] = None,
        cache_dir: Optional[str] = None,
        show_progress: bool = False,
        seed: int = 0,
        backend: str = "auto",
        distributed: Optional[bool] = None,
        memory_budget: Optional[int] = None,
        autocast: Optional[torch.dtype] = None,
        checkpoints: Optional[Union[str, Iterable[str]]] = None,
        checkpoints_load_func: Optional[CheckpointLoader] = None,
        whiten: Optional[float] = None,
        feature_layers: Optional[Sequence[Union[nn.Module, str]]] = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be an nn.Module, got {type(model).__name__}.")
        self.settings = SolverSettings(
            C=C, fit_intercept=fit_intercept, tol=tol, max_iter=max_iter, seed=seed, backend=backend
        )
        show_progress = check_flag(show_progress, "show_progress")
        distributed = check_flag(distributed, "distributed", optional=True)
        self.whiten = check_positive(whiten, "whiten", optional=True)
        memory_budget = check_integer(memory_budget, "memory_budget", low=0, optional=True, what="a number of bytes")
        self.model = model
        self.final_fc_layer = resolve_linear_layer(model, final_fc_layer)
        self.autocast = check_autocast(autocast, model_device(model))
        self.layer_name = layer_name(model, self.final_fc_layer)
        self.train_dataset = train_dataset
        self.train_dataloader = as_dataloader(train_dataset, batch_size)  # checks batch_size for a Dataset
        self.batch_size = batch_size if isinstance(train_dataset, DataLoader) else int(batch_size)
        self.device = torch.device(device) if device is not None else model_device(model)
        self.n_classes = self.final_fc_layer.out_features
        self.cache_dir = check_writable_dir(cache_dir, "cache_dir") if cache_dir is not None else None
        self.cache_path: Optional[str] = None
        self.distributed = is_distributed() if distributed is None else bool(distributed)
        self.memory_budget = memory_budget
        if memory_budget is not None and self.cache_dir is None:
            raise ValueError("`memory_budget` needs `cache_dir`: out-of-core features are memory-mapped there.")
        if self.n_classes < 2:
            raise ValueError(f"`final_fc_layer` has {self.n_classes} output(s); DualDA needs >= 2 classes.")
        if self.whiten is not None and (self.distributed or memory_budget is not None):
            raise ValueError("`whiten` cannot be combined with distributed fitting or `memory_budget` (not supported).")
        self._extra: Optional[FeatureLayers] = None
        if feature_layers is not None:
            if self.distributed or memory_budget is not None:
                raise ValueError(
                    "`feature_layers` cannot be combined with distributed fitting or `memory_budget` (not supported): "
                    "fit in one process with the features in memory, or without `feature_layers`."
                )
            self._extra = resolve_feature_layers(model, self.final_fc_layer, feature_layers)
            self._check_feature_layers()
        self._rank, self._world = rank_and_world_size() if self.distributed else (0, 1)
        self._fit: Optional[Fit] = None
        self._ensemble: Optional[CheckpointEnsemble[DualDA]] = None
        self._weights: Optional[WeightsRecord] = None
        if checkpoints is not None:
            if self.distributed:
                raise ValueError("`checkpoints` cannot be combined with distributed fitting.")
            settings: Dict[str, Any] = dict(
                C=C,
                fit_intercept=fit_intercept,
                tol=tol,
                max_iter=max_iter,
                seed=seed,
                backend=backend,
                batch_size=batch_size,
                device=device,
                cache_dir=cache_dir,
                distributed=False,
                memory_budget=memory_budget,
                autocast=autocast,
                whiten=self.whiten,
                feature_layers=None if self._extra is None else list(self._extra.modules),
            )
            self._ensemble = CheckpointEnsemble.fit(
                model,
                checkpoints,
                checkpoints_load_func,
                lambda: DualDA(model, self.final_fc_layer, train_dataset, show_progress=show_progress, **settings),
                show_progress,
            )
            self.fit_stats = self._ensemble.fit_stats()
            return
        if checkpoints_load_func is not None:
            raise ValueError("`checkpoints_load_func` needs `checkpoints`.")
        self._weights = WeightsRecord(self.model)  # what `influence` checks the model against
        job = FitJob(
            self.model,
            self.final_fc_layer,
            self.layer_name,
            self.train_dataloader,
            self.settings,
            self.device,
            self.autocast,
            self.cache_dir,
            self.memory_budget,
            self.distributed,
            self._weights,
            whiten=self.whiten,
            extra=self._extra,
        )
        self._fit = job.run(show_progress)
        widths = self._fit.state.feature_widths
        if self._extra is not None and self._extra.widths is None and widths is not None:
            self._extra.widths = list(widths[1:])  # a cache hit on a stream: no pass has seen the layers
        self.cache_path = job.cache_path
        self.fit_stats = dict(self._fit.stats)

    # ------------------------------------------------------------------ settings and what the fit kept
    @property
    def C(self) -> float:
        """SVM regularisation (``settings.C``)."""
        return self.settings.C

    @property
    def fit_intercept(self) -> bool:
        """Whether the SVM has LIBLINEAR's intercept column (``settings.fit_intercept``)."""
        return self.settings.fit_intercept

    @property
    def tol(self) -> float:
        """Solver tolerance (``settings.tol``)."""
        return self.settings.tol

    @property
    def max_iter(self) -> int:
        """Most solver passes (``settings.max_iter``)."""
        return self.settings.max_iter

    @property
    def seed(self) -> int:
        """Solver seed (``settings.seed``)."""
        return self.settings.seed

    @property
    def backend(self) -> str:
        """Solver backend as asked for (``settings.backend``; ``fit_stats["backend"]``: the one used)."""
        return self.settings.backend

    @property
    def checkpoints(self) -> Optional[list[str]]:
        """The checkpoint files of an ensemble, in order; None for a single fit."""
        return None if self._ensemble is None else self._ensemble.paths

    @property
    def ensemble(self) -> Optional[CheckpointEnsemble[DualDA]]:
        """The fits of a checkpoint ensemble (one per checkpoint, used together); None for a single fit."""
        return self._ensemble

    @property
    def checkpoints_load_func(self) -> Optional[CheckpointLoader]:
        """How an ensemble loads a checkpoint; None for a single fit."""
        return None if self._ensemble is None else self._ensemble.load

    def _single(self, name: str) -> Fit:
        """The single fit, or (an ensemble) the error that ``name`` belongs to a single fit."""
        if self._fit is None:
            assert self._ensemble is not None
            raise self._ensemble.single_fit_error(name)
        return self._fit

    @property
    def n_train(self) -> int:
        """Number of training samples."""
        return self._ensemble.first.n_train if self._ensemble is not None else self._single("n_train").state.n_train

    @property
    def train_labels(self) -> torch.Tensor:
        """``(n_train,)`` int64 training labels."""
        if self._ensemble is not None:
            return self._ensemble.first.train_labels
        return self._single("train_labels").state.train_labels

    @property
    def absent_classes(self) -> torch.Tensor:
        """int64 classes of ``final_fc_layer`` without a training sample."""
        if self._ensemble is not None:
            return self._ensemble.first.absent_classes
        return self._single("absent_classes").absent_classes

    @property
    def support_indices(self) -> torch.Tensor:
        """``(n_sv,)`` int64 training indices with a non-zero coefficient row."""
        return self._single("support_indices").state.support.indices

    @property
    def weight(self) -> torch.Tensor:
        """``(K, d)`` float32 SVM weights on ``phi``: the surrogate's logits are ``phi @ weight.T + intercept``
        (also for a whitened fit, whose weights on ``phi T`` are ``weight @ T^{-1}``)."""
        return self._single("weight").state.weight

    @property
    def feature_transform(self) -> Optional[torch.Tensor]:
        """``(d, d)`` float32 whitening matrix ``T`` of a fit with ``whiten`` (None without): the SVM is
        fitted and scores in ``phi T``."""
        return self._single("feature_transform").state.feature_transform

    @property
    def feature_layers(self) -> Optional[list[str]]:
        """Dotted names of the extra layers whose inputs follow ``phi`` in the SVM's features
        (``DualDA(feature_layers=...)``); None for ``phi`` alone."""
        return None if self._extra is None else list(self._extra.names)

    @property
    def feature_widths(self) -> Optional[list[int]]:
        """Widths of the feature blocks, ``phi`` first, then each of ``feature_layers`` (flattened
        input); None without ``feature_layers``."""
        return self._single("feature_widths").state.feature_widths

    @property
    def feature_scale(self) -> Optional[torch.Tensor]:
        """``(d,)`` float32 column scales of the concatenated features (1 on ``phi``, ``s_b`` on the
        input of ``feature_layers[b-1]``, fitted so that every block has ``phi``'s mean squared norm over
        the training set); None without ``feature_layers``."""
        return self._single("feature_scale").state.feature_scale

    @property
    def intercept(self) -> torch.Tensor:
        """``(K,)`` float32 SVM intercept."""
        return self._single("intercept").state.intercept

    @property
    def train_hinge_loss(self) -> torch.Tensor:
        """``(n_train,)`` float32 hinge loss of the surrogate on each training sample."""
        return self._single("train_hinge_loss").state.train_hinge_loss

    @property
    def train_features(self) -> Optional[torch.Tensor]:
        """``(n_train, d)`` all training features ``phi(x_i)`` on the CPU, or None.

        Kept from the fit (and in its cache file) when the fit held them in memory in one
        process: ``4 n_train d`` bytes in float32, e.g. 24 MB for 60,000 x 100. None when they
        were memory-mapped above ``memory_budget`` or sharded over the ranks of a distributed
        fit (a consumer such as :func:`~captum_dualxda.rank_label_issues` then extracts them again).
        """
        return self._single("train_features").state.train_features

    @property
    def coefficients(self) -> torch.Tensor:
        """``(n_train, K)`` float32 dual variables ``a_i^c`` (CPU); zero rows off the support.

        Built on first access (``4 n_train K`` bytes) from the support vectors' rows, which are
        all that scoring needs.
        """
        return self._single("coefficients").coefficients()

    def coefficients_at(self, indices: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Dual coefficients ``a_j^c`` of training samples ``indices`` for classes ``classes``.

        Not defined for a checkpoint ensemble (one set of coefficients per checkpoint).

        The same numbers as ``coefficients[indices, classes]`` without building the dense
        ``(n_train, K)`` matrix (read from the support vectors' row-sparse storage).

        Parameters
        ----------
        indices : torch.Tensor
            int64 training indices in ``0..n_train-1``, any shape.
        classes : torch.Tensor
            int64 classes in ``0..K-1``, broadcastable with ``indices``.

        Returns
        -------
        torch.Tensor
            float32 on the CPU, the broadcast shape of ``indices`` and ``classes``.
        """
        fit = self._single("coefficients_at")
        indices, classes = torch.broadcast_tensors(
            torch.as_tensor(indices).long().cpu(), torch.as_tensor(classes).long().cpu()
        )
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.n_train):
            raise ValueError(f"`indices` must lie in 0..{self.n_train - 1}.")
        if classes.numel() and (int(classes.min()) < 0 or int(classes.max()) >= self.n_classes):
            raise ValueError(f"`classes` must lie in 0..{self.n_classes - 1}.")
        warn_absent(self.absent_classes, classes)
        return fit.state.support.coefficients_at(indices, classes)

    @property
    def sparsity(self) -> float:
        """Fraction of training samples whose coefficient row is all zero (not support vectors)."""
        return 1.0 - self.support_indices.numel() / self.n_train

    # ------------------------------------------------------------------ scoring
    def test_features(self, inputs: ModelInputs) -> torch.Tensor:
        """``(N, d)`` float32 features ``phi(x)`` of model inputs (a tuple for ``model(*inputs)``, a
        dict for ``model(**inputs)``; eval mode, no grad, ``autocast`` as in the fit), on ``self.device``;
        ``phi(x) T`` for a fit with ``whiten`` (the features the SVM scores); with ``feature_layers``
        ``psi(x)`` (or ``psi(x) T``), ``phi`` followed by the scaled inputs of those layers.

        Raises :class:`~captum_dualxda.exceptions.ModelChangedError` if the model's parameters or
        buffers changed since the fit (see :meth:`influence`)."""
        self._single("test_features")
        self._check_model("DualDA.test_features")
        return self._test_features(inputs)

    def _test_features(self, inputs: ModelInputs) -> torch.Tensor:
        phi = self._features_and_output(inputs)[0]
        fit = self._single("test_features")
        features = fit.local.features
        assert features is not None  # this rank's support vectors keep their features
        transform = fit.state.feature_transform
        if transform is not None:
            return (phi.to(self.device, torch.float64) @ transform.to(self.device, torch.float64)).to(features.dtype)
        return phi.to(self.device, features.dtype)

    def _features_and_output(self, inputs: ModelInputs) -> tuple[torch.Tensor, Any]:
        """``(psi, output)``: the unwhitened SVM features of one batch (``phi``, or ``phi`` and the scaled
        inputs of ``feature_layers``; the model's device) and the model output, from one forward pass."""
        phi, output = batch_features_and_output(self.model, self.final_fc_layer, inputs, self.autocast, self._extra)
        scale = self._single("features").state.feature_scale
        if scale is not None:
            phi = phi * scale.to(phi.device, phi.dtype)
        return phi, output

    def _check_feature_layers(self) -> None:
        """Run the first training sample through the model to check ``feature_layers`` before any
        expensive work (the extraction checks every batch again; a stream is checked there only)."""
        loader = self.train_dataloader
        if isinstance(loader.dataset, IterableDataset):
            return
        try:
            empty = len(loader.dataset) == 0  # type: ignore[arg-type]
        except TypeError:
            return
        if empty:
            return
        batch_features(self.model, self.final_fc_layer, dataset_items(loader, [0]), self.autocast, self._extra)

    def _check_model(self, call: str, collective: bool = False) -> None:
        """Raise :class:`ModelChangedError` if the model's weights differ from the fit's (single fits).

        ``collective`` (a call every rank makes): distributed, every rank raises when any rank's
        model changed, so that no rank is left waiting in a collective.
        """
        record = self._weights
        if record is None:
            return
        changed = record.changes(self.model)
        elsewhere = collective and self.distributed and int(all_reduce_sum(torch.tensor([len(changed)])).item()) > 0
        if changed or elsewhere:
            raise ModelChangedError(record.message(changed, call))

    def _absorb_model_changes(self) -> None:
        """After this package's own passes through the model: see :meth:`WeightsRecord.absorb`."""
        if self._weights is not None:
            self._weights.absorb(self.model)

    def _batch(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``(phi (N, d), targets (N,))`` of one Captum batch, checked, on ``self.device``."""
        inputs, targets = split_batch(batch)
        if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= self.n_classes):
            raise ValueError(
                f"`inputs` targets must lie in 0..{self.n_classes - 1}, found "
                f"{int(targets.min())}..{int(targets.max())}."
            )
        phi = self._test_features(inputs)
        if phi.shape[0] != targets.shape[0]:
            raise ValueError(f"`inputs` has {phi.shape[0]} samples but {targets.shape[0]} targets in its last element.")
        if phi.shape[1] != self.weight.shape[1]:
            raise ValueError(
                f"Test features have dimension {phi.shape[1]}, the training features {self.weight.shape[1]}."
            )
        warn_absent(self.absent_classes, targets)
        return phi, targets.to(self.device)

    def _batches(self, inputs: Any, show_progress: bool) -> Any:
        return tqdm(
            iterate_batches(inputs),
            desc="DualDA influence",
            disable=not show_progress,
            leave=False,
            total=len(inputs) if isinstance(inputs, DataLoader) else 1,
        )

    @overload  # type: ignore[override]
    def influence(
        self,
        inputs: Union[tuple[Any, ...], DataLoader],
        k: None = None,
        proponents: bool = True,
        show_progress: bool = False,
    ) -> torch.Tensor: ...

    @overload
    def influence(
        self,
        inputs: Union[tuple[Any, ...], DataLoader],
        k: int,
        proponents: bool = True,
        show_progress: bool = False,
    ) -> KMostInfluentialResults: ...

    def influence(
        self,
        inputs: Union[tuple[Any, ...], DataLoader],
        k: Optional[int] = None,
        proponents: bool = True,
        show_progress: bool = False,
    ) -> Union[torch.Tensor, KMostInfluentialResults]:
        r"""Influence of every training sample on the given predictions.

        Parameters
        ----------
        inputs : tuple, dict or DataLoader
            A batch ``(x_1, ..., x_m, targets)`` (the model is called as ``model(x_1, ..., x_m)``;
            ``targets`` ``(n_test,)`` are the classes to explain), a dict of model inputs with
            the classes to explain under ``"labels"`` (``model(**rest)``), or a DataLoader of
            such batches. To explain the network's own predictions pass ``(x, model(x).argmax(1))``.
        k : int, optional
            ``None``: return all scores. An int: return the ``k`` most influential training
            samples per test sample (clipped to ``n_train``).
        proponents : bool
            With ``k``: the most positive scores (descending) if True, the most negative
            (ascending) otherwise; equal scores (such as the zeros of samples off the support)
            in increasing training index, with or without a process group.
        show_progress : bool
            A tqdm bar over test batches.

        Returns
        -------
        torch.Tensor or KMostInfluentialResults
            ``k=None``: ``(n_test, n_train)`` float32, ``[i, j] = a_j^{c_i} phi(x_j).phi(x_i)``.
            Otherwise ``KMostInfluentialResults(indices, influence_scores)``, both
            ``(n_test, k)``; indices int64 into ``train_dataset``.

        Raises
        ------
        captum_dualxda.exceptions.ModelChangedError
            A parameter or buffer of the model holds other values than at the fit (the model
            was trained further, other weights were loaded, its dtype changed): the fit belongs
            to the old weights. Refit, or load the fitted weights back. Checked cheaply on
            every call (version counters; a tensor is hashed only when its counter moved); a
            checkpoint ensemble loads its own weights for every call and is not checked.
        """
        if not isinstance(inputs, DataLoader):
            split_batch(inputs)  # validate before any work
        k = check_integer(k, "k", low=1, optional=True)
        proponents = check_flag(proponents, "proponents")
        show_progress = check_flag(show_progress, "show_progress")
        self._check_model("DualDA.influence", collective=True)
        result = _influence_route_to_helpers(self, inputs, k, proponents, show_progress=show_progress)
        self._absorb_model_changes()
        return result

    def _influence(self, inputs: Any, show_progress: bool = False) -> torch.Tensor:
        """All scores, ``(n_test, n_train)``; distributed, the disjoint per-rank parts are summed."""
        if self._ensemble is not None:
            return torch.cat(
                self._ensemble.mean_scores(
                    self._batches(inputs, show_progress), DualDA._dense_scores, lambda scores: scores
                )
            )
        rows = []
        for batch in self._batches(inputs, show_progress):
            dense = self._dense_scores(batch)
            rows.append(all_reduce_sum(dense) if self.distributed else dense)
        return torch.cat(rows)

    def _dense_scores(self, batch: Any) -> torch.Tensor:
        """``(N, n_train)`` scores of one batch by this process's support vectors (a single fit)."""
        return self._single("influence").local.dense_scores(*self._batch(batch))

    def _get_k_most_influential(
        self, inputs: Any, k: int, proponents: bool = True, show_progress: bool = False
    ) -> KMostInfluentialResults:
        """Exact top-``k`` in the top-k order (ties to the lower index): the support vectors plus the
        ``k`` lowest samples that are no support vector on any rank (added on rank 0) are candidates."""
        k = min(k, self.n_train)
        if self._ensemble is not None:
            top = self._ensemble.mean_scores(
                self._batches(inputs, show_progress),
                DualDA._dense_scores,
                lambda scores: stable_topk(scores, k, proponents),
            )
            return KMostInfluentialResults(torch.cat([t[1] for t in top]), torch.cat([t[0] for t in top]))
        local = self._single("influence").local
        candidates = local.candidates(k if self._rank == 0 else 0, self.support_indices)
        indices, values = [], []
        for batch in self._batches(inputs, show_progress):
            top_values, top_indices = local.top_k(*self._batch(batch), k, proponents, candidates)
            if self.distributed:
                top_values, top_indices = merge_topk(top_values, top_indices, k, largest=proponents)
            indices.append(top_indices)
            values.append(top_values)
        return KMostInfluentialResults(torch.cat(indices), torch.cat(values))

    def self_influence(
        self, inputs: Optional[Union[tuple[Any, ...], DataLoader, Dataset]] = None, show_progress: bool = False
    ) -> torch.Tensor:
        r"""Self-influence ``a_i^{y_i} ||phi(x_i)||^2`` of every training sample.

        Equals the diagonal of ``influence`` on the training set with its own labels. High values
        flag samples the SVM can only fit with large dual weight, e.g. mislabelled ones.

        Parameters
        ----------
        inputs : None, or the training set itself
            DualDA has dual variables only for its training samples, so ``inputs`` must be
            ``None``, ``train_dataset`` or an unshuffled DataLoader over the same dataset.
        show_progress : bool
            Accepted for Captum compatibility; this is a closed-form O(n_train) computation.

        Returns
        -------
        torch.Tensor
            ``(n_train,)`` float32 on ``self.device``.
        """
        if inputs is not None and not self._is_training_set(inputs):
            raise ValueError(
                "`inputs` of DualDA.self_influence must be None or the training set: DualDA has dual "
                "variables only for its training samples. For other samples use `influence`."
            )
        if self._ensemble is not None:
            return self._ensemble.self_influence().to(self.device)
        return self._single("self_influence").self_influence.to(self.device)

    def _is_training_set(self, inputs: Any) -> bool:
        own = self.train_dataloader.dataset
        if inputs is self.train_dataset or inputs is own:
            return True
        if isinstance(inputs, DataLoader) and inputs.dataset is own:
            return isinstance(inputs.sampler, torch.utils.data.SequentialSampler)
        return False

    # ------------------------------------------------------------------ helpers for XDA
    def train_inputs(self, indices: Union[torch.Tensor, Sequence[int]]) -> ModelInputs:
        """Stacked model inputs of training samples ``indices`` (labels dropped).

        Parameters
        ----------
        indices : LongTensor or sequence of int
            ``(m,)`` training indices.

        Returns
        -------
        tuple or dict
            The model inputs batched over the ``m`` samples, as ``model(*result)`` (or
            ``model(**result)`` for dict batches) expects.
        """
        flat = torch.as_tensor(indices).flatten().tolist()
        bad = [j for j in flat if not 0 <= j < self.n_train]
        if bad:
            raise ValueError(f"`indices` must lie in 0..{self.n_train - 1}, got {bad[:5]}.")
        return dataset_items(self.train_dataloader, flat)

    def __repr__(self) -> str:
        whiten = "" if self.whiten is None else f", whiten={self.whiten:g}"
        if self._extra is not None:
            whiten += f", feature_layers={self._extra.names}"
        if self._ensemble is not None:
            return (
                f"DualDA(layer={self.layer_name!r}, C={self.C:g}{whiten}, n_train={self.n_train}, "
                f"checkpoints={len(self._ensemble)})"
            )
        return (
            f"DualDA(layer={self.layer_name!r}, C={self.C:g}{whiten}, n_train={self.n_train}, "
            f"n_support={self.support_indices.numel()}, sparsity={self.sparsity:.3f})"
        )
