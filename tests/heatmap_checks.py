"""Shared assertion for XDA heatmaps of text models: each heatmap adds up to its pair's ``tau``."""

from __future__ import annotations

import torch


def assert_token_heatmaps_conserve(pairs, median: float, largest: float) -> None:
    """Both heatmaps of every pair sum to ``tau`` within the relative bounds, with ``tau``'s sign.

    Parameters
    ----------
    pairs : XDAPairs
        ``train_relevance`` and ``test_relevance`` ``(n_test, k, T)``, ``scores`` ``(n_test, k)``.
    median, largest : float
        Bounds on the median and the largest ``|sum - tau| / |tau|`` over pairs whose ``|tau|`` is
        above 1e-3 of the largest (smaller ones are rounding-dominated).
    """
    for relevance in (pairs.train_relevance, pairs.test_relevance):
        sums = relevance.sum(-1)
        big = pairs.scores.abs() > 1e-3 * pairs.scores.abs().max()
        error = ((sums - pairs.scores).abs() / pairs.scores.abs())[big]
        assert float(error.median()) <= median and float(error.max()) <= largest, (
            float(error.median()),
            float(error.max()),
        )
        assert bool((torch.sign(sums[big]) == torch.sign(pairs.scores[big])).all())
