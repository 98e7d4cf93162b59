"""The support set: the training samples that can score, and the scores themselves.

A fitted DualDA keeps only its support vectors (rows of the dual variables ``a`` that are not all
zero): their training indices, their coefficients stored row-sparse (a sample is a support vector
for few classes) and their features ``phi(x_j)``. Every score of the method is computed here:

    tau(x, x_j; c) = a_j^c * phi(x_j) . phi(x)          (docs/method.md)

:class:`SupportSet` scores test features against the support vectors (:meth:`~SupportSet.scores`,
:meth:`~SupportSet.dense_scores`, :meth:`~SupportSet.top_k`), looks up single coefficients
(:meth:`~SupportSet.coefficients_at`), gives the self-influence of the training samples and splits
itself over the ranks of a distributed run (:meth:`~SupportSet.shard`).
"""

from __future__ import annotations

import warnings
from typing import Optional, Tuple, Union

import torch

from .._utils.chunking import row_chunk
from ..solver.sparse_dual import DualVariables, RowSparseDual, dual_rows
from .distributed import stable_topk, topk_of_candidates

__all__ = ["SupportSet", "warn_absent"]


class SupportSet:
    """Support vectors of a Crammer-Singer fit, with row-sparse coefficients and their features.

    Parameters
    ----------
    indices : torch.Tensor
        ``(n_sv,)`` int64 training indices of the support vectors, increasing.
    values : torch.Tensor
        ``(n_sv, m)`` float32 coefficients ``a_j^c``; a slot holding 0 is unused.
    classes : torch.Tensor
        ``(n_sv, m)`` int64 (or int32) class ``c`` of each slot.
    features : torch.Tensor, optional
        ``(n_sv, d)`` float32 features ``phi(x_j)`` (None: lookups only, no scoring).
    n_train : int
        Training samples ``n`` the indices refer to.
    n_classes : int
        ``K``.
    """

    def __init__(
        self,
        indices: torch.Tensor,
        values: torch.Tensor,
        classes: torch.Tensor,
        features: Optional[torch.Tensor],
        n_train: int,
        n_classes: int,
    ) -> None:
        self.indices = indices.long()
        self.values = values
        self.classes = classes.long()
        self.features = features
        self.n_train = int(n_train)
        self.n_classes = int(n_classes)

    @classmethod
    def from_dual(
        cls, alpha: DualVariables, support: torch.Tensor, features: Optional[torch.Tensor], n_classes: int
    ) -> SupportSet:
        """The support rows of solver dual variables, compressed in 32 MiB chunks.

        Parameters
        ----------
        alpha : torch.Tensor or RowSparseDual
            ``(n, K)`` float64 dual variables.
        support : torch.Tensor
            ``(n_sv,)`` int64 rows to keep (e.g. ``support_mask(alpha, C).nonzero()``).
        features : torch.Tensor, optional
            ``(n, d)`` training features; the support rows are copied as float32 (CPU).
        n_classes : int

        Returns
        -------
        SupportSet
            On the CPU, coefficients float32; never a dense ``(n_sv, K)`` float64 matrix.
        """
        rows = RowSparseDual(support.numel(), n_classes, capacity=1, device=support.device)
        chunk = row_chunk(n_classes)
        for start in range(0, support.numel(), chunk):
            rows.set_rows(slice(start, start + chunk), dual_rows(alpha, support[start : start + chunk]))
        kept = None if features is None else features[support.to(features.device)].float().cpu()
        return cls(support.cpu(), rows.values.float().cpu(), rows.classes.cpu(), kept, alpha.shape[0], n_classes)

    def __len__(self) -> int:
        return int(self.indices.numel())

    @property
    def device(self) -> torch.device:
        return self.values.device

    def to(self, device: Union[str, torch.device]) -> SupportSet:
        """A copy on ``device`` (``self`` if already there)."""
        device = torch.device(device)
        if device == self.device and (self.features is None or self.features.device == device):
            return self
        features = None if self.features is None else self.features.to(device)
        return SupportSet(
            self.indices.to(device),
            self.values.to(device),
            self.classes.to(device),
            features,
            self.n_train,
            self.n_classes,
        )

    def with_features(self, features: Optional[torch.Tensor]) -> SupportSet:
        """The same support vectors holding ``features`` ``(n_sv, d)`` (None: lookups only)."""
        return SupportSet(self.indices, self.values, self.classes, features, self.n_train, self.n_classes)

    def shard(self, rank: int, world: int) -> SupportSet:
        """The support vectors ``j`` with ``j % world == rank`` (a rank's part of a distributed fit).

        Parameters
        ----------
        rank, world : int

        Returns
        -------
        SupportSet
            ``self`` for one rank; otherwise the owned rows (with their features, if held).
        """
        if world == 1:
            return self
        owned = (self.indices % world == rank).nonzero().flatten()
        features = None if self.features is None else self.features[owned]
        return SupportSet(
            self.indices[owned], self.values[owned], self.classes[owned], features, self.n_train, self.n_classes
        )

    # ------------------------------------------------------------------ coefficients
    def coefficients_for(self, targets: torch.Tensor) -> torch.Tensor:
        """``(n_sv, N)`` coefficients ``a_j^{c_i}`` of every support vector for the classes ``targets``.

        ``O(n_sv (m + N))`` from the row-sparse storage; ``targets`` ``(N,)`` int64 on this device.
        """
        unique, inverse = torch.unique(targets, return_inverse=True)
        column = torch.full((self.n_classes,), unique.numel(), dtype=torch.long, device=self.device)
        column[unique] = torch.arange(unique.numel(), device=self.device)  # other classes -> sink
        per_class = torch.zeros(len(self), unique.numel() + 1, dtype=self.values.dtype, device=self.device)
        per_class.scatter_add_(1, column[self.classes], self.values)
        return per_class[:, inverse]

    def coefficients_at(self, indices: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Coefficients ``a_j^c`` for training indices ``indices`` and classes ``classes`` (any shape).

        Zero for samples that are not support vectors. Inputs are int64, broadcastable, and
        already checked to lie in range; the result is float32 of their broadcast shape.
        """
        indices, classes = torch.broadcast_tensors(indices, classes)
        position = torch.full((self.n_train,), -1, dtype=torch.long, device=self.device)
        position[self.indices] = torch.arange(len(self), device=self.device)
        rows = position[indices.flatten()]
        found = rows >= 0
        out = torch.zeros(indices.numel(), dtype=torch.float32, device=self.device)
        match = self.classes[rows[found]] == classes.flatten()[found][:, None]
        out[found] = (self.values[rows[found]] * match).sum(1)
        return out.reshape(indices.shape)

    def dense_coefficients(self) -> torch.Tensor:
        """``(n_train, K)`` float32 coefficients, zero rows off the support (``4 n K`` bytes)."""
        dense = torch.zeros(self.n_train, self.n_classes, dtype=torch.float32, device=self.device)
        dense[self.indices] = torch.zeros(len(self), self.n_classes, device=self.device).scatter_add_(
            1, self.classes, self.values
        )
        return dense

    def self_influence(self, labels: torch.Tensor, squared_norms: torch.Tensor) -> torch.Tensor:
        """``(n_train,)`` self-influence ``a_i^{y_i} ||phi(x_i)||^2`` of every training sample.

        Parameters
        ----------
        labels : torch.Tensor
            ``(n_train,)`` int64 training labels.
        squared_norms : torch.Tensor
            ``(n_train,)`` ``||phi(x_i)||^2``.
        """
        return self.coefficients_at(
            torch.arange(self.n_train, device=self.device), labels.to(self.device)
        ) * squared_norms.to(self.device)

    # ------------------------------------------------------------------ scores
    def scores(self, phi: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``(N, n_sv)`` scores ``a_j^{c_i} phi(x_j) . phi(x_i)`` of the support vectors.

        Parameters
        ----------
        phi : torch.Tensor
            ``(N, d)`` test features, dtype of ``features``, on this device.
        targets : torch.Tensor
            ``(N,)`` int64 classes to explain, on this device.
        """
        if self.features is None:
            raise RuntimeError("This SupportSet holds no features; it can look up coefficients but not score.")
        return (phi @ self.features.T) * self.coefficients_for(targets).T

    def dense_scores(self, phi: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``(N, n_train)`` scores of every training sample (exactly 0 off the support)."""
        scores = self.scores(phi, targets)
        dense = torch.zeros(scores.shape[0], self.n_train, dtype=scores.dtype, device=scores.device)
        dense[:, self.indices] = scores
        return dense

    def candidates(self, zeros: int, support: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Increasing training indices: this set's support vectors and the ``zeros`` lowest samples
        that are no support vector at all.

        Samples off the support score exactly 0, and the top-k order breaks ties towards the lower
        index, so with ``zeros >= k`` no other sample can enter a top-``k`` (:meth:`top_k`).

        Parameters
        ----------
        zeros : int
            How many zero-score samples to add.
        support : torch.Tensor, optional
            ``(n_sv,)`` int64 indices of ALL support vectors when this set is one rank's shard
            (:meth:`shard`): the added samples must score 0 on every rank. Default: this set's.

        Returns
        -------
        torch.Tensor
            ``(len(self) + min(zeros, free),)`` int64 on this device, increasing.
        """
        off_support = torch.ones(self.n_train, dtype=torch.bool)
        off_support[(self.indices if support is None else support).cpu()] = False
        off_support[self.indices.cpu()] = False
        zero = off_support.nonzero().flatten()[:zeros].to(self.device)
        return torch.sort(torch.cat([self.indices, zero])).values

    def top_k(
        self, phi: torch.Tensor, targets: torch.Tensor, k: int, largest: bool, candidates: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` largest (or smallest) scores among ``candidates`` (see :meth:`candidates`).

        Top-k order: by score, ties to the lower training index (:func:`~.distributed.stable_topk`).

        Parameters
        ----------
        phi : torch.Tensor
            ``(N, d)`` test features, dtype of ``features``, on this device.
        targets : torch.Tensor
            ``(N,)`` int64 classes to explain, on this device.
        k : int
        largest : bool
        candidates : torch.Tensor
            Increasing int64 indices holding this set's (:meth:`candidates`); the others score 0.

        Returns
        -------
        values, indices : torch.Tensor
            ``(N, min(k, len(candidates)))`` sorted scores and their int64 training indices.
        """
        values, columns = stable_topk(self.scores(phi, targets), k, largest)  # columns: increasing indices
        indices = self.indices[columns]
        zero = candidates[~torch.isin(candidates, self.indices)]
        if zero.numel():  # scores 0 of samples off the support: merged in the same order
            n = values.shape[0]
            values = torch.cat([values, values.new_zeros(n, zero.numel())], 1)
            indices = torch.cat([indices, zero.expand(n, -1)], 1)
            values, indices = topk_of_candidates(values, indices, k, largest)
        return values, indices


def warn_absent(absent_classes: torch.Tensor, targets: torch.Tensor, stacklevel: int = 4) -> None:
    """Warn when ``targets`` asks about classes without a training sample (their scores are all 0).

    Parameters
    ----------
    absent_classes : torch.Tensor
        int64 classes with no training sample (they take no part in the SVM problem).
    targets : torch.Tensor
        int64 classes asked about, any shape.
    stacklevel : int
        Passed to :func:`warnings.warn` (the caller's caller by default).
    """
    if absent_classes.numel() == 0 or targets.numel() == 0:
        return
    asked = torch.isin(absent_classes, targets.detach().flatten().to(absent_classes.device))
    if bool(asked.any()):
        warnings.warn(
            f"Class(es) {absent_classes[asked].tolist()} have no training sample: the SVM is fitted on the "
            "classes present in the training data (as scikit-learn does), so DualDA has no dual variables "
            "for them and every score for them is 0.",
            UserWarning,
            stacklevel=stacklevel,
        )
