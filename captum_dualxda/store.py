"""The feature store: the training features ``phi(x_i)`` where one process holds them.

One process (or rank 0 of a distributed fit) holds all ``n`` rows, in memory or memory-mapped
from a ``.npy`` file; rank ``r > 0`` of ``W`` holds only its strided shard, the samples
``r, r + W, r + 2W, ...``. :class:`FeatureStore` hides which: :meth:`~FeatureStore.rows` takes
training indices, :meth:`~FeatureStore.chunks` walks the held rows in bounded blocks, and
:meth:`~FeatureStore.close` removes a scratch file.
"""
from __future__ import annotations

import os
from typing import Iterator, Optional, Tuple

import torch
from torch import nn
from torch.utils.data import DataLoader

from .distributed import rank_and_world_size, shard_indices
from .features import extract_features, shard_path
from .solver.problem import row_chunk

__all__ = ["FeatureStore"]


class FeatureStore:
    """Training features held by this process.

    Parameters
    ----------
    features : torch.Tensor
        ``(n_held, d)``: all ``n_train`` rows on rank 0 (or in one process), rank ``r``'s shard
        otherwise (its row ``i`` is training sample ``r + i W``). May be memory-mapped.
    n_train : int
        Training samples in all.
    rank, world : int
        This process's rank and the number of ranks (0 and 1 without distribution).
    path : str, optional
        The memory-mapped file behind ``features``, removed by :meth:`close`.
    """

    def __init__(self, features: torch.Tensor, n_train: int, rank: int = 0, world: int = 1, path: Optional[str] = None) -> None:
        self.features = features
        self.n_train = int(n_train)
        self.rank = int(rank)
        self.world = int(world)
        self.path = path

    @classmethod
    def extract(
        cls,
        model: nn.Module,
        layer: nn.Linear,
        loader: DataLoader,
        device: Optional[torch.device] = None,
        show_progress: bool = False,
        distributed: bool = False,
        out_path: Optional[str] = None,
    ) -> Tuple["FeatureStore", torch.Tensor]:
        """Extract the features of ``loader`` (see :func:`~captum_dualxda.features.extract_features`).

        Returns
        -------
        store : FeatureStore
            This process's rows; its file (``out_path``, or the rank's shard file) is removed by
            :meth:`close`, also when extraction fails.
        labels : torch.Tensor
            ``(n_train,)`` int64, all labels on every rank.
        """
        rank, world = rank_and_world_size() if distributed else (0, 1)
        path = None if out_path is None else (out_path if rank == 0 else shard_path(out_path, rank))
        try:
            features, labels = extract_features(model, layer, loader, device, show_progress, distributed=distributed, out_path=out_path)
        except BaseException:
            cls._remove(path)
            raise
        return cls(features, labels.shape[0], rank, world, path), labels

    @property
    def is_complete(self) -> bool:
        """Whether all ``n_train`` rows are held (one process, or rank 0)."""
        return self.rank == 0

    def rows(self, indices: torch.Tensor) -> torch.Tensor:
        """Float32 features of training samples ``indices`` (int64; all held by this process).

        Raises
        ------
        ValueError
            An index is not held here (another rank's shard).
        """
        indices = indices.long().cpu()
        if self.is_complete:
            local = indices
        else:
            if bool((indices % self.world != self.rank).any()):
                raise ValueError(f"Rank {self.rank} of {self.world} holds only the samples j with j % {self.world} == {self.rank}.")
            local = torch.div(indices - self.rank, self.world, rounding_mode="floor")
        return self.features[local.to(self.features.device)].float()

    def held_indices(self) -> torch.Tensor:
        """``(n_held,)`` int64 training indices of the rows held, in row order."""
        if self.is_complete:
            return torch.arange(self.n_train)
        return torch.as_tensor(list(shard_indices(self.n_train, self.rank, self.world)), dtype=torch.long)

    def chunks(self, budget_bytes: int = 1 << 25) -> Iterator[Tuple[int, torch.Tensor]]:
        """``(first row, block)`` over the held rows, blocks of at most ``budget_bytes`` (32 MiB)."""
        chunk = row_chunk(self.features.shape[1], budget_bytes)
        for start in range(0, self.features.shape[0], chunk):
            yield start, self.features[start : start + chunk]

    def close(self) -> None:
        """Drop the features and remove the memory-mapped file, if any."""
        self.features = torch.empty(0)
        self._remove(self.path)
        self.path = None

    @staticmethod
    def _remove(path: Optional[str]) -> None:
        if path is not None and os.path.exists(path):
            os.unlink(path)
