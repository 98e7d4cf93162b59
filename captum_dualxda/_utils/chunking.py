"""Bounded-memory passes over the rows of a feature matrix (which may be memory-mapped).

Every chunked pass of the package keeps one float64 copy of a block within 32 MiB
(:func:`row_chunk`): squared norms, finiteness checks, the solver's certificates, scoring.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["row_chunk", "row_squared_norms", "all_finite", "nonfinite_rows"]


def row_chunk(n_columns: int, budget_bytes: int = 1 << 25) -> int:
    """Rows per chunk so that one float64 copy of a ``(rows, n_columns)`` block stays within
    ``budget_bytes`` (32 MiB): the bound on temporaries of every chunked pass over features."""
    return max(1, budget_bytes // (8 * max(1, n_columns)))


def row_squared_norms(features: torch.Tensor) -> torch.Tensor:
    """``(n,)`` float64 squared row norms of ``(n, d)`` features, in bounded-memory chunks."""
    out = torch.empty(features.shape[0], dtype=torch.float64, device=features.device)
    chunk = row_chunk(features.shape[1])
    for start in range(0, features.shape[0], chunk):
        block = features[start : start + chunk].double()
        out[start : start + chunk] = (block * block).sum(1)
    return out


def all_finite(values: torch.Tensor) -> bool:
    """Whether a floating-point tensor holds no NaN or inf.

    The sum first (one vectorised pass, no temporary): NaN and inf propagate through a sum, so a
    finite sum proves every entry finite. Only a non-finite sum, from a bad entry or an
    overflow of large finite ones, takes the exact element-wise check. CPU tensors are read
    through NumPy, which needs no thread pool (the first parallel torch operation of a process
    starts one, tens of milliseconds).
    """
    if values.numel() == 0:
        return True
    if values.device.type == "cpu":
        array = values.detach().numpy()
        with np.errstate(over="ignore", invalid="ignore"):  # an inf or NaN sum is the signal, not a warning
            total = float(array.sum())
        if math.isfinite(total):
            return True
        return bool(np.isfinite(array).all())
    if math.isfinite(float(values.sum())):
        return True
    return bool(torch.isfinite(values).all())


def nonfinite_rows(features: torch.Tensor, limit: int = 5) -> list[int]:
    """The first ``limit`` indices of rows of ``(n, d)`` ``features`` holding NaN or inf; ``[]`` if none.

    Read in row chunks of :func:`row_chunk` (features may be memory-mapped), each checked with
    :func:`all_finite` (one summing pass when it is finite).
    """
    chunk = row_chunk(features.shape[1])
    for start in range(0, features.shape[0], chunk):
        block = features[start : start + chunk]
        if not all_finite(block):
            return ((~torch.isfinite(block)).any(1).nonzero().flatten()[:limit] + start).tolist()
    return []
