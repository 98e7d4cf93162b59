"""The SVM surrogate ``s(x) = W phi(x) + b``: its logits and its Crammer-Singer hinge loss.

DualDA explains the network through this linear model on ``phi``. Its hinge loss per training
sample ranks label issues (:func:`~captum_dualxda.rank_label_issues`), its logits measure how
closely it follows the network (:func:`~captum_dualxda.metrics.surrogate_fidelity`).
"""

from __future__ import annotations

import math

import torch

from .._utils.chunking import row_chunk

__all__ = ["hinge_loss", "surrogate_logits"]


def hinge_loss(
    features: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, intercept: torch.Tensor
) -> torch.Tensor:
    """Per-sample Crammer-Singer hinge loss of a linear surrogate, in 32 MiB row chunks.

    ``max_m (1 - [m == y_i] + s_m(x_i)) - s_{y_i}(x_i)`` with ``s = weight @ phi + intercept``.
    Classes without a training sample take no part in the SVM problem, so they are left out of
    the maximum.

    Parameters
    ----------
    features : torch.Tensor
        ``(n, d)`` float features (may be memory-mapped).
    labels : torch.Tensor
        ``(n,)`` int64.
    weight, intercept : torch.Tensor
        ``(K, d)`` and ``(K,)`` float64.

    Returns
    -------
    torch.Tensor
        ``(n,)`` float64, ``>= 0``, on the features' device.
    """
    out = torch.empty(features.shape[0], dtype=torch.float64, device=features.device)
    weight, intercept = weight.to(features.device), intercept.to(features.device)
    absent = torch.bincount(labels, minlength=weight.shape[0]).to(features.device) == 0
    chunk = row_chunk(features.shape[1] + weight.shape[0])
    for start in range(0, features.shape[0], chunk):
        y = labels[start : start + chunk]
        scores = features[start : start + chunk].double() @ weight.T + intercept
        scores[:, absent] = -math.inf
        own = scores.gather(1, y[:, None]).squeeze(1)
        margins = scores + 1.0
        margins[torch.arange(y.shape[0], device=y.device), y] -= 1.0
        out[start : start + chunk] = (margins.amax(1) - own).clamp_min(0.0)  # >= 0 up to rounding
    return out


def surrogate_logits(features: torch.Tensor, weight: torch.Tensor, intercept: torch.Tensor) -> torch.Tensor:
    """``(N, K)`` float64 logits ``phi @ weight.T + intercept`` of the SVM surrogate, on the CPU.

    Parameters
    ----------
    features : torch.Tensor
        ``(N, d)`` features ``phi(x)``.
    weight, intercept : torch.Tensor
        ``(K, d)`` and ``(K,)`` (e.g. ``DualDA.weight`` and ``DualDA.intercept``).
    """
    return features.double().cpu() @ weight.double().cpu().T + intercept.double().cpu()
