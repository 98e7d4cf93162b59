"""Text: token heatmaps of a (test, training) pair, as records or a figure."""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from matplotlib.colors import Colormap
from matplotlib.figure import Figure

from .images import ArrayLike, colour_table, to_numpy

__all__ = ["text_pair_records", "show_text_pair", "plot_text_pair"]


def _token_relevance(tokens: Sequence[str], relevance: ArrayLike, argument: str) -> np.ndarray:
    values = to_numpy(relevance, argument).astype(np.float64).reshape(-1)
    if values.shape[0] < len(tokens):
        raise ValueError(f"`{argument}` has {values.shape[0]} scores for {len(tokens)} tokens.")
    values = values[: len(tokens)]  # right padding beyond the tokens carries no relevance
    if not np.isfinite(values).all():
        raise ValueError(f"`{argument}` contains NaN or inf; a heatmap with non-finite relevance cannot be drawn.")
    return values


def text_pair_records(
    test_tokens: Sequence[str],
    test_relevance: ArrayLike,
    train_tokens: Sequence[str],
    train_relevance: ArrayLike,
    score: float,
    target: Any,
    *,
    train_index: Optional[int] = None,
    train_label: Any = None,
    test_label: Any = None,
) -> List[Any]:
    """Captum ``VisualizationDataRecord``s of an XDA pair of texts, for ``visualize_text``.

    Both rows share one colour scale (the pair's largest ``|relevance|``), so the test text and
    the training text can be compared; red supports the prediction, blue opposes it.

    Parameters
    ----------
    test_tokens, train_tokens : sequence of str
        The tokens shown (e.g. ``tokenizer.convert_ids_to_tokens(ids)`` without padding).
    test_relevance, train_relevance : array-like
        ``(T,)`` token relevance from :func:`~captum_dualxda.xda_pairs` (scores past the tokens,
        right padding, are dropped).
    score : float
        The DualDA score ``tau`` of the pair.
    target : Any
        The class explained.
    train_index : int, optional
        The training sample's index, shown in the table.
    train_label, test_label : Any, optional
        Labels shown in Captum's "True Label" column.

    Returns
    -------
    list of captum.attr.visualization.VisualizationDataRecord
        ``[test row, training row]``; pass it to :func:`show_text_pair` or Captum's
        ``visualize_text``.
    """
    from captum.attr import visualization as viz

    test = _token_relevance(test_tokens, test_relevance, "test_relevance")
    train = _token_relevance(train_tokens, train_relevance, "train_relevance")
    scale = max(float(np.abs(test).max(initial=0.0)), float(np.abs(train).max(initial=0.0))) or 1.0
    name = "training" if train_index is None else f"training #{train_index}"
    return [
        viz.VisualizationDataRecord(
            torch.as_tensor(test / scale),
            float("nan"),
            target,
            "" if test_label is None else test_label,
            "test",
            float(test.sum()),
            list(test_tokens),
            float(score),
        ),
        viz.VisualizationDataRecord(
            torch.as_tensor(train / scale),
            float("nan"),
            target,
            "" if train_label is None else train_label,
            name,
            float(train.sum()),
            list(train_tokens),
            float(score),
        ),
    ]


def show_text_pair(*args: Any, **kwargs: Any) -> Any:
    """Captum's HTML table of an XDA text pair (in a notebook it displays itself).

    Takes the arguments of :func:`text_pair_records`; returns ``captum.attr.visualization.
    visualize_text(records)``.
    """
    from captum.attr import visualization as viz

    return viz.visualize_text(text_pair_records(*args, **kwargs))


def plot_text_pair(
    test_tokens: Sequence[str],
    test_relevance: ArrayLike,
    train_tokens: Sequence[str],
    train_relevance: ArrayLike,
    score: float,
    *,
    title: Optional[str] = None,
    cmap: Union[str, Colormap, Any] = "bwr",
    width: float = 9.0,
) -> Figure:
    """A matplotlib figure of an XDA text pair: each token on a box coloured by its relevance.

    Top row: the test text, bottom row: the training text; one symmetric colour scale for both
    (red supports the prediction, blue opposes it). For files; :func:`show_text_pair` gives
    Captum's HTML view.

    Parameters
    ----------
    test_tokens, test_relevance, train_tokens, train_relevance, score
        As for :func:`text_pair_records`.
    title : str, optional
    cmap : str or colormap
        As for :func:`heatmap_rgb`.
    width : float
        Figure width in inches; tokens wrap onto further lines.

    Returns
    -------
    matplotlib.figure.Figure
    """
    rows = [
        ("test", list(test_tokens), _token_relevance(test_tokens, test_relevance, "test_relevance")),
        ("training", list(train_tokens), _token_relevance(train_tokens, train_relevance, "train_relevance")),
    ]
    scale = max(float(np.abs(values).max(initial=0.0)) for _, _, values in rows) or 1.0
    palette = colour_table(cmap, 1.0)
    chars_per_line = max(20, int(width * 11))
    lines = []
    for name, tokens, values in rows:
        line: List[Tuple[str, float]] = []
        used = 0
        for token, value in zip(tokens, values):
            if used + len(token) + 1 > chars_per_line and line:
                lines.append((name, line))
                line, used, name = [], 0, ""
            line.append((token, value))
            used += len(token) + 1
        lines.append((name, line))
    fig = Figure(figsize=(width, 0.42 * len(lines) + (0.5 if title else 0.25)))
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_axis_off()
    step = 1.0 / (len(lines) + (1.2 if title else 0.6))
    if title:
        ax.text(0.01, 1 - 0.6 * step, title, fontsize=10, va="center")
    for row, (name, line) in enumerate(lines):
        y = 1 - (row + (1.6 if title else 1.0)) * step
        ax.text(0.01, y, name, fontsize=8, va="center", fontweight="bold")
        x = 0.11
        for token, value in line:
            colour = palette[int(np.clip((value / scale + 1) / 2 * 255, 0, 255))] / 255.0
            text = ax.text(
                x,
                y,
                token,
                fontsize=9,
                va="center",
                family="monospace",
                bbox=dict(boxstyle="square,pad=0.15", facecolor=colour, edgecolor="none"),
            )
            x += (len(token) + 1) / chars_per_line * 0.88
            text.set_gid(f"{value:+.4g}")
    ax.text(0.99, 0.02, f"tau = {score:+.3g}", fontsize=8, ha="right", va="bottom")
    return fig
