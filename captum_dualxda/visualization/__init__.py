"""Figures for DualDA / XDA explanations, and small image helpers.

Everything here returns data (NumPy arrays) or a :class:`matplotlib.figure.Figure`; nothing is
saved or shown. Figures are built without ``pyplot`` (no global state, no GUI backend needed):
display one in a notebook by leaving it as the cell's value, or save it with
``fig.savefig("explanation.png")``.

Modules: :mod:`.images` (Captum's image layout, heatmap colours, display-ready inputs),
:mod:`.explanation` (:func:`explain_figure`: a test sample with its proponents and opponents) and
:mod:`.text` (token heatmaps of a text pair).
"""

from .explanation import InfluentialSamples, explain_figure, plot_explanation
from .images import heatmap_rgb, image_for_display, to_captum_image
from .text import plot_text_pair, show_text_pair, text_pair_records

__all__ = [
    "to_captum_image",
    "heatmap_rgb",
    "image_for_display",
    "InfluentialSamples",
    "plot_explanation",
    "explain_figure",
    "text_pair_records",
    "show_text_pair",
    "plot_text_pair",
]
