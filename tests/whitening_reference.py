"""The independent reference for whitened fits, shared by ``test_whiten.py`` and ``test_feature_layers.py``."""

from __future__ import annotations

import numpy as np


def numpy_whitening(phi: np.ndarray, ratio: float) -> np.ndarray:
    """``s (G + ratio tr(G)/d I)^{-1/2}`` by eigendecomposition, ``s`` keeping the mean squared norm."""
    g = phi.T @ phi / len(phi)
    evals, evecs = np.linalg.eigh(g)
    lam = ratio * np.trace(g) / g.shape[0]
    t = evecs @ np.diag(1 / np.sqrt(evals + lam)) @ evecs.T
    return t * np.sqrt(np.trace(g) / np.mean(np.sum((phi @ t) ** 2, 1)))
