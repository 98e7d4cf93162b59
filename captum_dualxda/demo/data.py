"""The demo's data: scikit-learn's 8x8 digits (bundled, no download), split, with flipped training labels."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch.utils.data import TensorDataset

from .._utils.validation import check_flag, check_integer, check_real, check_seed

__all__ = ["DigitsData", "load_digits_data", "check_flip_rate"]


def check_flip_rate(flip_rate: float) -> float:
    """``flip_rate`` as a float in ``[0, 1)``; raises naming it otherwise."""
    return check_real(flip_rate, "flip_rate", low=0.0, high=1.0, high_inclusive=False)


@dataclass
class DigitsData:
    """scikit-learn's digits, scaled to [0, 1] and split, with flipped training labels.

    Attributes
    ----------
    x_train : torch.Tensor
        ``(n_train, 1, 8, 8)`` float32 pixels scaled to ``[0, 1]`` (``x / 16``), standardised to
        ``(x / 16 - mean) / std`` if requested.
    y_train : torch.Tensor
        ``(n_train,)`` int64 training labels AS USED FOR TRAINING (flipped where ``flipped``).
    y_train_clean : torch.Tensor
        ``(n_train,)`` int64 original training labels.
    flipped : torch.Tensor
        ``(n_train,)`` bool, True where the label was flipped (``y_train != y_train_clean``).
    x_test : torch.Tensor
        ``(n_test, 1, 8, 8)`` float32, scaled like ``x_train``.
    y_test : torch.Tensor
        ``(n_test,)`` int64 true test labels (never flipped).
    mean : float
        Pixel mean subtracted (0 unless standardised; for display: ``x * std + mean``).
    std : float
        Pixel standard deviation divided by (1 unless standardised).
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    y_train_clean: torch.Tensor
    flipped: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    mean: float
    std: float

    @property
    def train_dataset(self) -> TensorDataset:
        """``TensorDataset(x_train, y_train)``: the (noisy) training set the network saw."""
        return TensorDataset(self.x_train, self.y_train)

    @property
    def denormalize(self) -> Tuple[float, float]:
        """``(mean, std)`` for :func:`~captum_dualxda.visualization.explain_figure`."""
        return (self.mean, self.std)


def load_digits_data(
    flip_rate: float = 0.1,
    seed: int = 0,
    n_train: Optional[int] = None,
    test_fraction: float = 0.25,
    standardize: bool = False,
) -> DigitsData:
    """Load scikit-learn's digits (no download), scale them to [0, 1], split, flip training labels.

    Parameters
    ----------
    flip_rate : float
        Fraction of training labels replaced by a different, uniformly drawn class; in ``[0, 1)``.
        ``round(flip_rate * n_train)`` labels are flipped.
    seed : int
        Seeds the split and the flips.
    n_train : int, optional
        Keep only the first ``n_train`` training samples (default: all, 1348 of 1797).
    test_fraction : float
        Fraction of the 1797 digits held out as test data.
    standardize : bool
        Also standardise with the training pixels' mean and std. Off by default: pixels in
        ``[0, 1]`` with a zero background give LRP heatmaps that follow the strokes (relevance of
        a zero pixel is zero under the z+ rule).

    Returns
    -------
    DigitsData
    """
    from sklearn.datasets import load_digits

    check_flip_rate(flip_rate)
    seed = check_seed(seed)
    test_fraction = check_real(
        test_fraction, "test_fraction", low=0.0, high=1.0, low_inclusive=False, high_inclusive=False
    )
    standardize = check_flag(standardize, "standardize")
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8)
    labels = torch.tensor(digits.target, dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=generator)
    n_test = int(round(test_fraction * len(labels)))
    test_idx, train_idx = order[:n_test], order[n_test:]
    if n_train is not None:
        n_train = check_integer(n_train, "n_train", low=2)
        if n_train > len(train_idx):
            warnings.warn(
                f"`n_train`={n_train} exceeds the {len(train_idx)} training samples available; using all "
                f"{len(train_idx)}.",
                UserWarning,
                stacklevel=2,
            )
        train_idx = train_idx[:n_train]
    x_train, y_clean = images[train_idx], labels[train_idx]
    mean, std = (float(x_train.mean()), float(x_train.std())) if standardize else (0.0, 1.0)
    x_train = (x_train - mean) / std
    x_test = (images[test_idx] - mean) / std

    n_flip = int(round(flip_rate * len(y_clean)))
    flipped = torch.zeros(len(y_clean), dtype=torch.bool)
    flipped[torch.randperm(len(y_clean), generator=generator)[:n_flip]] = True
    shift = torch.randint(1, 10, (len(y_clean),), generator=generator)
    y_train = torch.where(flipped, (y_clean + shift) % 10, y_clean)
    return DigitsData(x_train, y_train, y_clean, flipped, x_test, labels[test_idx], mean, std)
