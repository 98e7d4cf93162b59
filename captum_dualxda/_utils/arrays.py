"""Tensors, arrays and sequences read as NumPy arrays, for the metrics and the figures."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional, Union

import numpy as np
import torch

__all__ = ["ArrayLike", "to_numpy"]

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
