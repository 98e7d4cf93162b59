"""The demo's model: a small CNN for 8x8 digits and its deterministic training loop."""

from __future__ import annotations

import sys
from typing import List, Optional

import torch
from torch import nn
from tqdm import tqdm

from .._utils.validation import SEED_RANGE, check_flag, check_integer, check_positive, check_seed

__all__ = ["DEFAULT_EPOCHS", "DigitsCNN", "train_cnn"]

#: Default number of training epochs of the demo CNN.
DEFAULT_EPOCHS = 12


class DigitsCNN(nn.Module):
    """A small CNN for 8x8 digits: conv + batch norm, a 64-d feature layer, ``fc`` (64 -> 10).

    ``phi(x)`` (the input of ``fc``) is the output of a ReLU, so it is non-negative.
    """

    def __init__(self, n_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU())
        self.fc = nn.Linear(64, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 1, 8, 8)`` float -> ``(N, n_classes)`` logits."""
        return self.fc(self.head(self.features(x)))


def train_cnn(
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int = DEFAULT_EPOCHS,
    seed: int = 0,
    lr: float = 3e-3,
    batch_size: int = 64,
    show_progress: bool = False,
    checkpoint_paths: Optional[List[str]] = None,
) -> DigitsCNN:
    """Train a :class:`DigitsCNN` with Adam on ``(x, y)``, deterministically for the seed.

    Parameters
    ----------
    x : torch.Tensor
        ``(n, 1, 8, 8)`` float32 inputs.
    y : torch.Tensor
        ``(n,)`` int64 labels.
    epochs : int
        Passes over the data, ``>= 1``.
    seed : int
        Seeds the initialisation and the batch order.
    lr : float
        Adam learning rate.
    batch_size : int
    show_progress : bool
        A tqdm bar over the epochs, on stderr.
    checkpoint_paths : list of str, optional
        If given, the ``state_dict`` after the last ``len(checkpoint_paths)`` epochs is saved to
        these paths in order (for Captum's TracIn methods, which need checkpoints).

    Returns
    -------
    DigitsCNN
        In eval mode.
    """
    epochs = check_integer(epochs, "epochs", low=1)
    seed = check_seed(seed, high=SEED_RANGE[1] - 1)  # seed + 1 seeds the batch order
    lr = check_positive(lr, "lr")
    batch_size = check_integer(batch_size, "batch_size", low=1)
    show_progress = check_flag(show_progress, "show_progress")
    torch.manual_seed(seed)
    net = DigitsCNN()
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    # Cosine decay to zero: the last epochs settle instead of jumping between noisy-label fits.
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    generator = torch.Generator().manual_seed(seed + 1)
    checkpoint_paths = list(checkpoint_paths or [])
    first_saved = epochs - len(checkpoint_paths)
    bar = tqdm(
        range(epochs), desc="training CNN", unit="epoch", file=sys.stderr, disable=not show_progress, leave=False
    )
    for epoch in bar:
        net.train()
        total, n = 0.0, 0
        for idx in torch.randperm(len(y), generator=generator).split(batch_size):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
            total, n = total + float(loss.detach()) * len(idx), n + len(idx)
        scheduler.step()
        bar.set_postfix(loss=f"{total / n:.3f}")
        if epoch >= first_saved:
            torch.save(net.state_dict(), checkpoint_paths[epoch - first_saved])
    net.eval()
    return net
