"""Tensors, arrays and sequences read as NumPy arrays, and sets of training samples (masks, indices)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional, Union

import numpy as np
import torch

__all__ = ["ArrayLike", "to_numpy", "sample_mask", "flag_mask", "check_index_matrix"]

ArrayLike = Union[np.ndarray, torch.Tensor, Sequence[Any]]
"""What the metrics and figures accept: a tensor (any device), a NumPy array, or a sequence."""


def to_numpy(values: Any, name: str, ndim: Optional[int] = None) -> np.ndarray:
    """``values`` as a NumPy array (tensors are detached and moved to the CPU).

    Parameters
    ----------
    values : array-like
        A tensor (half precision is read as float32, which NumPy can hold), an array, or
        anything ``np.asarray`` takes.
    name : str
        The argument's name, for the message.
    ndim : int, optional
        The number of axes required.

    Raises
    ------
    ValueError
        ``values`` has another number of axes than ``ndim``.
    """
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


def sample_mask(array: np.ndarray, n: int, name: str, where: str = "") -> np.ndarray:
    """Boolean ``(n,)`` mask from a 1-D boolean mask, a 0/1 vector or an array of distinct indices.

    The rule, the same for every argument that takes a set of training samples:

    - a boolean vector (NumPy ``bool``, ``torch.bool``) is a mask and must have ``n`` entries;
    - a vector with ``n`` entries, all 0 or 1, is a mask too (scikit-learn's ``y_true``
      convention: ``flags.astype(int)``, ``(noisy != clean).long()``), whatever its numeric
      dtype; such a vector could also be read as a list of indices only when its entries are
      distinct, i.e. for ``n <= 2`` (``[0, 1]``, ``[1, 0]``, ``[0]``), which is refused as
      ambiguous;
    - any other integer vector lists indices in ``0..n-1``, each at most once (a repeated index
      is refused: it is what a 0/1 vector of the wrong length looks like);
    - an empty vector selects nothing.
    """
    if array.dtype == bool:
        if array.shape[0] != n:
            raise ValueError(f"`{name}` is a mask with {array.shape[0]} entries, but there are {n} samples{where}.")
        return array
    mask = np.zeros(n, dtype=bool)
    if array.size == 0:
        return mask
    integer = np.issubdtype(array.dtype, np.integer)
    if not integer and not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"`{name}` must be a boolean mask or an array of integer indices, got dtype {array.dtype}.")
    if array.shape[0] == n and bool(np.isin(array, (0, 1)).all()):
        if integer and np.unique(array).size == array.size:
            raise ValueError(
                f"`{name}` = {array.tolist()} is ambiguous: with {n} sample(s) it reads both as a 0/1 mask and as "
                f"the indices {sorted(set(array.tolist()))}. Pass a boolean mask (`flags.astype(bool)`, "
                "`flags.bool()`) or the indices (`np.flatnonzero(flags)`)."
            )
        return array.astype(bool)
    if not integer:
        raise ValueError(
            f"`{name}` must be a boolean mask, a 0/1 vector with one entry per sample ({n}{where}) or an array of "
            f"integer indices, got dtype {array.dtype} with {array.shape[0]} entries."
        )
    if array.min() < 0 or array.max() >= n:
        raise ValueError(
            f"`{name}` has indices outside 0..{n - 1}{where}: found {int(array.min())}..{int(array.max())}."
        )
    indices = array.astype(np.int64)
    if np.unique(indices).size != indices.size:
        values, counts = np.unique(indices, return_counts=True)
        zero_one = bool(np.isin(array, (0, 1)).all())
        hint = (
            f" It holds only 0 and 1: as a 0/1 mask it would need one entry per sample ({n}{where}), not "
            f"{array.shape[0]}."
            if zero_one
            else ""
        )
        raise ValueError(
            f"`{name}` repeats a training index ({int(values[counts > 1][0])}); indices list each sample once.{hint} "
            "Pass a boolean mask with one entry per sample, or distinct indices."
        )
    mask[indices] = True
    return mask


def flag_mask(flipped: ArrayLike, n: int, name: str = "flipped") -> np.ndarray:
    """Boolean ``(n,)`` mask of ``flipped``: a mask, a 0/1 vector or indices (:func:`sample_mask`)."""
    return sample_mask(to_numpy(flipped, name, 1), n, name, " (one per score)")


def check_index_matrix(train_indices: Any, n_test: int, n_train: int) -> torch.Tensor:
    """``train_indices`` (or a ``KMostInfluentialResults``' ``indices``) as an ``(n_test, k)`` int64 CPU tensor.

    Raises
    ------
    TypeError, ValueError
        Not integer indices, another shape, ``k = 0``, or an index outside ``[0, n_train)``.
    """
    if hasattr(train_indices, "indices") and not isinstance(train_indices, torch.Tensor):
        train_indices = train_indices.indices  # a KMostInfluentialResults
    idx = torch.as_tensor(train_indices)
    if torch.is_floating_point(idx) or idx.dtype == torch.bool or torch.is_complex(idx):
        raise TypeError(f"`train_indices` must hold integer indices, got dtype {idx.dtype}.")
    if idx.ndim != 2 or idx.shape[0] != n_test:
        raise ValueError(f"`train_indices` must have shape (n_test, k) = ({n_test}, k), got {tuple(idx.shape)}.")
    if idx.shape[1] == 0:
        raise ValueError("`train_indices` has k = 0 partners per test sample; nothing to explain.")
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n_train):
        raise ValueError(
            f"`train_indices` must lie in [0, n_train) = [0, {n_train}), got values in "
            f"[{int(idx.min())}, {int(idx.max())}]."
        )
    return idx.long().cpu()
