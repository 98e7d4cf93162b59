"""Whitened features: DualDA's SVM fitted and scored in ``phi T`` instead of ``phi``.

``T = s (G + lambda I)^{-1/2}`` with ``G = Phi^T Phi / n`` the (uncentred) second moment of the
training features, ``lambda = ratio * tr(G) / d`` a ridge relative to the mean eigenvalue, and
``s`` the scale that keeps the mean squared norm of the rows (``tr(T G T) = tr(G)``), so that ``C``
keeps its meaning. The kernel ``phi_i T T phi`` is TRAK's last-layer kernel form
``g_i (G^T G)^{-1} g`` (ridge-regularised) on DualDA's features; ``benchmarks/README.md``
(*LDS variants*) measures what it does to the linear datamodeling score.
"""

from __future__ import annotations

import torch

from .._utils.chunking import row_chunk

__all__ = ["whitening_matrix", "whiten_rows", "block_scales"]


def whitening_matrix(features: torch.Tensor, ratio: float) -> torch.Tensor:
    """The ``(d, d)`` float64 symmetric whitening matrix ``T`` of training features.

    Parameters
    ----------
    features : torch.Tensor
        ``(n, d)`` float32/float64 training features (read in 32 MiB row chunks; may be memory-mapped).
    ratio : float
        ``> 0``: the ridge ``lambda = ratio * tr(G) / d``. Small values whiten fully, large ones
        approach the identity (up to scale).

    Returns
    -------
    torch.Tensor
        ``(d, d)`` float64 on the features' device, with ``mean_i ||phi_i T||^2 = mean_i ||phi_i||^2``.
    """
    n, d = features.shape
    gram = torch.zeros(d, d, dtype=torch.float64, device=features.device)
    for start in range(0, n, row_chunk(d)):
        block = features[start : start + row_chunk(d)].double()
        gram += block.T @ block
    gram /= max(n, 1)
    evals, evecs = torch.linalg.eigh(gram)
    evals = evals.clamp_min(0.0)
    trace = float(evals.sum())
    if trace <= 0.0:  # all features zero: nothing to whiten
        return torch.eye(d, dtype=torch.float64, device=features.device)
    lam = ratio * trace / d
    scale = (trace / float((evals / (evals + lam)).sum())) ** 0.5
    return (evecs * (scale / (evals + lam).sqrt())) @ evecs.T


def whiten_rows(features: torch.Tensor, transform: torch.Tensor) -> torch.Tensor:
    """``features @ transform`` in 32 MiB row chunks, float32, on the transform's device.

    Parameters
    ----------
    features : torch.Tensor
        ``(n, d)`` float features.
    transform : torch.Tensor
        ``(d, d)`` float64 (:func:`whitening_matrix`).

    Returns
    -------
    torch.Tensor
        ``(n, d)`` float32.
    """
    out = torch.empty(features.shape, dtype=torch.float32, device=transform.device)
    chunk = row_chunk(features.shape[1])
    for start in range(0, features.shape[0], chunk):
        block = features[start : start + chunk].to(transform.device, torch.float64)
        out[start : start + chunk] = (block @ transform).float()
    return out


def block_scales(features: torch.Tensor, widths: list[int]) -> torch.Tensor:
    """Column scales that give every block of ``features`` the mean squared row norm of the first.

    ``DualDA(feature_layers=...)`` concatenates ``phi`` (the first block) and the inputs of
    earlier layers; block ``b`` is scaled by ``s_b = sqrt(mean_i ||phi_i||^2 / mean_i ||f_b,i||^2)``
    so that no block dominates the kernel by its units alone (``s_b = 1`` where either mean is 0).

    Parameters
    ----------
    features : torch.Tensor
        ``(n, d)`` float training features, the blocks side by side (read in row chunks).
    widths : list of int
        The blocks' widths, ``phi`` first; they sum to ``d``.

    Returns
    -------
    torch.Tensor
        ``(d,)`` float64 on the CPU: 1 on ``phi``'s columns, ``s_b`` on block ``b``'s.
    """
    n, d = features.shape
    if sum(widths) != d:
        raise ValueError(f"Block widths {widths} do not add up to the feature dimension {d}.")
    sums = torch.zeros(d, dtype=torch.float64)
    for start in range(0, n, row_chunk(d)):
        sums += features[start : start + row_chunk(d)].double().square().sum(0).cpu()
    means = [float(block.sum()) / max(n, 1) for block in sums.split(widths)]
    scale = torch.ones(d, dtype=torch.float64)
    for block, mean in zip(scale.split(widths)[1:], means[1:]):
        if means[0] > 0.0 and mean > 0.0:
            block.fill_((means[0] / mean) ** 0.5)  # a view: fills scale's columns of this block
    return scale
