"""The demo's figures besides the XDA explanations: detection curves and the most suspicious labels."""

from __future__ import annotations

import math
from typing import Any, Dict, List, Tuple

import numpy as np
from matplotlib.figure import Figure

from ..metrics import mislabel_detection_curve
from ..visualization import image_for_display
from .data import DigitsData

__all__ = ["curve_figure", "suspects_figure"]


def curve_figure(flipped: np.ndarray, rankings: List[Tuple[str, np.ndarray, float, Dict[str, Any]]]) -> Figure:
    """Detection curves of ``(name, scores, auc, plot style)`` rankings; needs a flipped label."""
    fig = Figure(figsize=(5.2, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    for name, scores, auc, style in rankings:
        ax.plot(
            *mislabel_detection_curve(scores, flipped),
            **style,
            label=f"{name} (AUC {'n/a' if math.isnan(auc) else format(auc, '.3f')})",
        )
    ax.plot([0, 1], [0, 1], color="0.6", ls="--", lw=1, label="expected for random order")
    rate = float(flipped.mean())
    ax.plot([0, rate, 1], [0, 1, 1], color="#2166ac", ls=":", lw=1, label="perfect ranking")
    ax.axvline(0.1, color="0.85", lw=0.8, zorder=0)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("fraction of training data inspected (highest score first)")
    ax.set_ylabel("fraction of flipped labels found")
    ax.set_title("Finding flipped labels with DualDA", fontsize=11)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def suspects_figure(data: DigitsData, rankings: List[Tuple[str, np.ndarray]], n: int = 8) -> Figure:
    """One row per ``(name, scores)`` ranking: its ``n`` highest-scoring training images."""
    cols = n
    fig = Figure(figsize=(cols * 1.1, len(rankings) * 1.45 + 0.4))
    for r, (name, scores) in enumerate(rankings):
        for m, j in enumerate(np.argsort(-scores, kind="stable")[:n]):
            ax = fig.add_subplot(len(rankings), cols, r * cols + m + 1)
            ax.imshow(
                image_for_display(data.x_train[j], data.denormalize),
                cmap="gray",
                vmin=0,
                vmax=1,
                interpolation="nearest",
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if m == 0:
                ax.set_ylabel(name, fontsize=7)
            given, true = int(data.y_train[j]), int(data.y_train_clean[j])
            flipped = given != true
            ax.set_title(
                f"#{j}: label {given}" + (f"\n(was {true})" if flipped else "\n(correct)"),
                fontsize=7,
                color="#b2182b" if flipped else "0.3",
            )
    fig.suptitle("Most suspicious training labels, per ranking (red = really flipped)", fontsize=9)
    fig.tight_layout()
    return fig
