"""Shared fixtures: small synthetic problems and a digits CNN trained in a few seconds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn


def clustered_features(n=600, d=24, k=4, noise=0.05, seed=0, dtype=np.float32):
    """Non-negative class-clustered features (ReLU of Gaussian clusters) with flipped labels."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    means = rng.normal(size=(k, 12)) * 1.5
    z = means[y] + rng.normal(size=(n, 12))
    mix = rng.normal(size=(12, d)) / np.sqrt(12)
    x = np.maximum(z @ mix + 0.5, 0)
    x /= np.sqrt((x**2).sum(1).mean())
    flip = rng.random(n) < noise
    y[flip] = rng.integers(0, k, flip.sum())
    return x.astype(dtype), y.astype(np.int64)


def train_classifier(net, x, y, epochs, lr, batch_size, generator=None):
    """Train ``net`` with Adam and cross-entropy on shuffled mini-batches; return it in eval mode.

    The shuffles draw from ``generator`` (the global RNG if None), so seeding before the call
    makes the result reproducible.
    """
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=generator).split(batch_size):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    return net.eval()


class DigitsCNN(nn.Module):
    """A small CNN for 8x8 digits; ``fc`` is the final linear layer, its input 32-d."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(16 * 16, 32), nn.ReLU())
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(self.head(self.features(x)))


@pytest.fixture(scope="session")
def digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(y), generator=g)
    x, y = x[perm], y[perm]
    return x[:1400], y[:1400], x[1400:], y[1400:]


@pytest.fixture(scope="session")
def digits_cnn(digits):
    x, y, _, _ = digits
    torch.manual_seed(0)
    net = DigitsCNN()
    return train_classifier(net, x, y, epochs=4, lr=3e-3, batch_size=64, generator=torch.Generator().manual_seed(1))
