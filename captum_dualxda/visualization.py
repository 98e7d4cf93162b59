"""Figures for DualDA / XDA explanations, and small image helpers.

Everything here returns data (NumPy arrays) or a :class:`matplotlib.figure.Figure`; nothing is
saved or shown.  Figures are built without ``pyplot`` (no global state, no GUI backend needed):
display one in a notebook by leaving it as the cell's value, or save it with
``fig.savefig("explanation.png")``.

Colour convention for heatmaps: red = the pixel supports the prediction, blue = it opposes it,
white = neutral, on a scale symmetric around zero.

Heatmaps are coloured with NumPy and :func:`zennit.image.palette`, not with
:func:`zennit.image.imgify`: with Pillow 13, images produced by ``imgify`` fail on
``.convert("RGB")``, ``.save()`` and ``imshow`` (the palette is passed as an array).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from matplotlib.colors import Colormap
from matplotlib.figure import Figure
from matplotlib.gridspec import GridSpec
from zennit.image import palette as zennit_palette

from ._utils.validation import check_flag, check_integer, check_positive
from ._core.features import model_device
from ._core.probe import ModelProbe

__all__ = [
    "to_captum_image",
    "heatmap_rgb",
    "image_for_display",
    "InfluentialSamples",
    "plot_explanation",
    "explain_figure", "text_pair_records", "show_text_pair", "plot_text_pair"]

ArrayLike = Union[torch.Tensor, np.ndarray]
Denormalize = Optional[Tuple[Union[float, Sequence[float]], Union[float, Sequence[float]]]]

SUPPORT_COLOUR = "#b2182b"   # red: supports the prediction
OPPOSE_COLOUR = "#2166ac"    # blue: opposes the prediction


def _to_numpy(x: Any, argument: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    try:
        return np.asarray(x)
    except Exception:  # pragma: no cover - defensive
        raise TypeError(f"`{argument}` must be a tensor or array, got {type(x).__name__}.") from None


# --------------------------------------------------------------------------------------------
# Conversions
# --------------------------------------------------------------------------------------------
def to_captum_image(x: ArrayLike) -> np.ndarray:
    """Channel-last NumPy image(s), as Captum's ``visualize_image_attr`` expects.

    Captum's ``visualization.visualize_image_attr(attr, original_image, ...)`` wants
    ``(H, W, C)`` arrays; given ``(C, H, W)`` it silently sums over the wrong axis.

    Parameters
    ----------
    x : torch.Tensor or numpy.ndarray
        ``(H, W)`` (one greyscale map), ``(C, H, W)`` or ``(N, C, H, W)``, any float dtype.
        Tensors are detached and moved to the CPU.

    Returns
    -------
    numpy.ndarray
        float64: ``(H, W, 1)`` for ``(H, W)``, ``(H, W, C)`` for ``(C, H, W)``,
        ``(N, H, W, C)`` for ``(N, C, H, W)``.

    Raises
    ------
    ValueError
        ``x`` has fewer than 2 or more than 4 axes.

    Examples
    --------
    >>> from captum.attr import visualization as viz                      # doctest: +SKIP
    >>> viz.visualize_image_attr(to_captum_image(heat), to_captum_image(img),
    ...                          "blended_heat_map", sign="all", use_pyplot=False)
    """
    array = _to_numpy(x, "x").astype(np.float64)
    if array.ndim == 2:
        return array[:, :, None]
    if array.ndim == 3:
        return np.transpose(array, (1, 2, 0))
    if array.ndim == 4:
        return np.transpose(array, (0, 2, 3, 1))
    raise ValueError(f"`x` must have shape (H, W), (C, H, W) or (N, C, H, W), got {tuple(array.shape)}.")


def _palette(cmap: Union[str, Colormap, Any], level: float) -> np.ndarray:
    """(256, 3) uint8 colour table from a zennit colour map (name/code/ColorMap) or a matplotlib one."""
    if isinstance(cmap, Colormap):
        return np.round(cmap(np.linspace(0.0, 1.0, 256))[:, :3] * 255).astype(np.uint8)
    return np.asarray(zennit_palette(cmap, level), dtype=np.uint8).reshape(256, 3)


def _reduce_channels(array: np.ndarray, batched: bool) -> np.ndarray:
    # (C, H, W) -> (H, W); (N, C, H, W) -> (N, H, W)
    return array.sum(axis=1 if batched else 0)


def heatmap_rgb(
    relevance: ArrayLike,
    cmap: Union[str, Colormap, Any] = "bwr",
    vmax: Optional[float] = None,
    level: float = 1.0,
) -> np.ndarray:
    """Colour relevance maps on a zero-centred, symmetric scale (red > 0, blue < 0 with ``bwr``).

    Channels are summed (the usual way to show LRP heatmaps of RGB inputs), the map is scaled to
    ``[-vmax, vmax] -> [0, 255]`` exactly as ``zennit.image.imgify(..., symmetric=True)`` does, and
    looked up in the colour table with NumPy, so this works with any Pillow version.

    Parameters
    ----------
    relevance : torch.Tensor or numpy.ndarray
        ``(H, W)``, ``(C, H, W)`` or ``(N, C, H, W)`` float.
    cmap : str or zennit.cmap.ColorMap or matplotlib.colors.Colormap
        A zennit colour map name (``"bwr"``, ``"coldnhot"``, ``"france"``, ``"seismic"``, ...), a
        zennit colour-map code, or a matplotlib colormap object.
    vmax : float, optional
        The magnitude mapped to the ends of the scale (shared across maps when given).  Default:
        ``max |relevance|`` of each map (an all-zero map becomes the centre colour).
    level : float
        zennit palette level (1.0 = plain colour map).

    Returns
    -------
    numpy.ndarray
        uint8 ``(H, W, 3)``, or ``(N, H, W, 3)`` for a batch.

    Raises
    ------
    ValueError
        Wrong number of axes, non-finite relevance, or ``vmax <= 0``.
    """
    array = _to_numpy(relevance, "relevance").astype(np.float64)
    if not np.isfinite(array).all():
        raise ValueError("`relevance` contains NaN or inf; a heatmap with non-finite relevance cannot be coloured.")
    if array.ndim == 2:
        maps, batched = array[None], False
    elif array.ndim == 3:
        maps, batched = _reduce_channels(array, False)[None], False
    elif array.ndim == 4:
        maps, batched = _reduce_channels(array, True), True
    else:
        raise ValueError(
            f"`relevance` must have shape (H, W), (C, H, W) or (N, C, H, W), got {tuple(array.shape)}."
        )
    if vmax is None:
        scale = np.abs(maps).max(axis=(1, 2), keepdims=True)
        scale[scale == 0] = 1.0
    else:
        scale = np.full((maps.shape[0], 1, 1), check_positive(vmax, "vmax"))
    unit = (maps + scale) / (2 * scale)                       # [-vmax, vmax] -> [0, 1]
    index = (unit * 255).clip(0, 255).astype(np.uint8)        # same quantisation as imgify
    rgb = _palette(cmap, level)[index]
    return rgb if batched else rgb[0]


def image_for_display(image: ArrayLike, denormalize: Denormalize = None) -> np.ndarray:
    """Turn a model input into something ``imshow`` shows faithfully.

    Parameters
    ----------
    image : torch.Tensor or numpy.ndarray
        ``(H, W)``, ``(1, H, W)`` (greyscale) or ``(3, H, W)`` (RGB) float.
    denormalize : (mean, std), optional
        Undo ``transforms.Normalize(mean, std)``: ``x * std + mean`` per channel (scalars or
        sequences of length C).

    Returns
    -------
    numpy.ndarray
        float64 in ``[0, 1]``: ``(H, W)`` for greyscale, ``(H, W, 3)`` for RGB.  Values already in
        ``[0, 1]`` are kept (clipped); any other range is min-max scaled.

    Raises
    ------
    ValueError
        Unsupported shape, or ``denormalize`` not matching the channels.
    """
    array = _to_numpy(image, "image").astype(np.float64)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[0] not in (1, 3):
        raise ValueError(
            f"`image` must have shape (H, W), (1, H, W) or (3, H, W), got {tuple(array.shape)}."
        )
    if denormalize is not None:
        channels = array.shape[0]
        try:
            mean, std = denormalize
            mean = np.asarray(mean, dtype=np.float64).reshape(-1, 1, 1)
            std = np.asarray(std, dtype=np.float64).reshape(-1, 1, 1)
        except (TypeError, ValueError):
            mean = std = None
        if mean is None or mean.shape[0] not in (1, channels) or std.shape[0] not in (1, channels):
            raise ValueError(
                f"`denormalize` must be (mean, std) with a scalar or {channels} value(s) each for this "
                f"{channels}-channel image, got {denormalize!r}."
            )
        array = array * std + mean
    low, high = float(array.min()), float(array.max())
    tol = 1e-3
    if low < -tol or high > 1 + tol:
        array = (array - low) / (high - low) if high > low else np.zeros_like(array)
    array = array.clip(0.0, 1.0)
    return array[0] if array.shape[0] == 1 else np.transpose(array, (1, 2, 0))


# --------------------------------------------------------------------------------------------
# The explanation figure
# --------------------------------------------------------------------------------------------
@dataclass
class InfluentialSamples:
    """Training samples to show next to a test sample (proponents or opponents).

    Attributes
    ----------
    indices : torch.Tensor
        ``(k,)`` int64 training indices.
    scores : torch.Tensor
        ``(k,)`` float DualDA scores ``tau``.
    images : torch.Tensor
        ``(k, C, H, W)`` float training inputs (C = 1 or 3), as fed to the model.
    labels : torch.Tensor
        ``(k,)`` int64 training labels.
    train_relevance : torch.Tensor, optional
        ``(k, C, H, W)`` XDA heatmaps of the training images.
    test_relevance : torch.Tensor, optional
        ``(k, C, H, W)`` XDA heatmaps of the test image, one per training sample.
    """

    indices: torch.Tensor
    scores: torch.Tensor
    images: torch.Tensor
    labels: torch.Tensor
    train_relevance: Optional[torch.Tensor] = None
    test_relevance: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return int(torch.as_tensor(self.indices).numel())

    def validate(self, argument: str) -> None:
        """Check that all fields agree in length (and heatmaps in shape); raise ValueError naming ``argument``."""
        k = len(self)
        for name in ("scores", "labels"):
            n = int(torch.as_tensor(getattr(self, name)).numel())
            if n != k:
                raise ValueError(f"`{argument}.{name}` has {n} entries but `{argument}.indices` has {k}.")
        images = torch.as_tensor(self.images)
        if images.shape[0] != k or images.ndim != 4:
            raise ValueError(f"`{argument}.images` must have shape ({k}, C, H, W), got {tuple(images.shape)}.")
        have = [self.train_relevance is not None, self.test_relevance is not None]
        if any(have) and not all(have):
            raise ValueError(f"`{argument}` needs both `train_relevance` and `test_relevance`, or neither.")
        for name in ("train_relevance", "test_relevance"):
            value = getattr(self, name)
            if value is not None and tuple(torch.as_tensor(value).shape) != tuple(images.shape):
                raise ValueError(
                    f"`{argument}.{name}` must have the shape of `{argument}.images` {tuple(images.shape)}, "
                    f"got {tuple(torch.as_tensor(value).shape)}."
                )
            if value is not None and not bool(torch.isfinite(torch.as_tensor(value)).all()):
                raise ValueError(
                    f"`{argument}.{name}` contains NaN or inf: a heatmap with non-finite relevance "
                    "cannot be drawn (the LRP rules used do not cover the model)."
                )

    @property
    def has_heatmaps(self) -> bool:
        """Whether XDA heatmaps are attached."""
        return self.train_relevance is not None and self.test_relevance is not None


def _class_name(c: int, class_names: Optional[Sequence[str]]) -> str:
    if class_names is None:
        return str(int(c))
    if not 0 <= int(c) < len(class_names):
        raise ValueError(f"`class_names` has {len(class_names)} entries, but class {int(c)} is shown.")
    return str(class_names[int(c)])


def _show_image(ax: Any, image: ArrayLike, denormalize: Denormalize) -> None:
    shown = image_for_display(image, denormalize)
    if shown.ndim == 2:
        ax.imshow(shown, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(shown, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _strip(ax: Any) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _column_plan(non_empty: List[Tuple[str, InfluentialSamples]]) -> Tuple[List[Tuple[str, Optional[InfluentialSamples], int]], List[float]]:
    """Columns ``test | gap | proponents | gap | opponents`` as ``(kind, group, m)`` and their widths."""
    columns: List[Tuple[str, Optional[InfluentialSamples], int]] = [("test", None, 0)]
    widths = [1.0]
    for argument, group in non_empty:
        columns.append(("gap", None, 0))
        widths.append(0.25)
        for m in range(len(group)):
            columns.append((argument, group, m))
            widths.append(1.0)
    return columns, widths


def _heatmap_scales(non_empty: List[Tuple[str, InfluentialSamples]], heatmap_scale: str) -> Dict[Tuple[str, int], Tuple[float, float]]:
    """``(group, m) -> (vmax training heatmap, vmax test heatmap)`` for the chosen ``heatmap_scale``."""
    def peak(rel: Any) -> float:
        return float(np.abs(_to_numpy(rel, "relevance").astype(np.float64).sum(0)).max())

    scales = {(argument, m): (peak(group.train_relevance[m]), peak(group.test_relevance[m]))
              for argument, group in non_empty for m in range(len(group))}
    if heatmap_scale == "figure":
        top = max([max(v) for v in scales.values()] + [0.0])
        return {key: (top, top) for key in scales}
    if heatmap_scale == "pair":
        return {key: (max(v), max(v)) for key, v in scales.items()}
    return scales


def plot_explanation(
    test_image: ArrayLike,
    targets: int,
    proponents: Optional[InfluentialSamples],
    opponents: Optional[InfluentialSamples] = None,
    *,
    test_label: Optional[int] = None,
    class_names: Optional[Sequence[str]] = None,
    denormalize: Denormalize = None,
    heatmap_scale: str = "pair",
    cmap: Union[str, Colormap, Any] = "bwr",
    panel_size: float = 1.7,
    title: Optional[str] = None,
    annotate: Optional[Callable[[int], str]] = None,
) -> Figure:
    """One figure: a test sample, its top proponents and opponents, and optionally XDA heatmaps.

    Layout (columns): the test image, then the proponents (scores descending), then the
    opponents (most negative first).  Each training image is titled with its index, label and
    score.  With heatmaps there are three rows: the training-side heatmap *above* each training
    image (why that training image supports / opposes the prediction), the images, and the
    test-side heatmap *below* it (which part of the test image it matches).  Red = supports, blue =
    opposes, symmetric colour scale.

    Parameters
    ----------
    test_image : torch.Tensor or numpy.ndarray
        ``(C, H, W)``, ``(1, C, H, W)`` or ``(H, W)`` float, C = 1 (greyscale) or 3 (RGB).
    targets : int
        The class explained (normally the network's prediction).
    proponents : InfluentialSamples or None
        Training samples with positive scores (may be empty or None).
    opponents : InfluentialSamples, optional
        Training samples with negative scores.
    test_label : int, optional
        True label of the test sample, shown if given.
    class_names : sequence of str, optional
        Names indexed by class; default: the class numbers.
    denormalize : (mean, std), optional
        Undo input normalisation for display (see :func:`image_for_display`).
    heatmap_scale : {"pair", "panel", "figure"}
        Symmetric colour scale per (training, test) heatmap pair (default; both heatmaps of a pair
        sum to the same score, so they share a scale), per heatmap, or one for the whole figure.
    cmap : str or zennit ColorMap or matplotlib Colormap
        Heatmap colours (see :func:`heatmap_rgb`).
    panel_size : float
        Size in inches of one image panel.
    title : str, optional
        Figure title.
    annotate : callable, optional
        ``training index -> str``, appended to the label in each training panel's title (e.g.
        ``lambda j: " (was 3)" if j in relabelled else ""``).

    Returns
    -------
    matplotlib.figure.Figure
        Not shown, not saved.  It has ``1 + P + O`` image axes, plus ``2 (P + O)`` heatmap axes
        when heatmaps are given (P, O = number of proponents, opponents).

    Raises
    ------
    ValueError
        Inconsistent lengths or shapes in ``proponents`` / ``opponents``, heatmaps given for one
        group only, an unknown ``heatmap_scale``, or a class outside ``class_names``.
    """
    if heatmap_scale not in ("pair", "panel", "figure"):
        raise ValueError(f"`heatmap_scale` must be 'pair', 'panel' or 'figure', got {heatmap_scale!r}.")
    panel_size = check_positive(panel_size, "panel_size")
    test = torch.as_tensor(_to_numpy(test_image, "test_image"))
    if test.ndim == 4:
        if test.shape[0] != 1:
            raise ValueError(f"`test_image` must be one sample, got a batch of {test.shape[0]}.")
        test = test[0]
    if test.ndim == 2:
        test = test[None]
    groups: List[Tuple[str, InfluentialSamples]] = []
    for argument, group in (("proponents", proponents), ("opponents", opponents)):
        if group is None:
            continue
        if not isinstance(group, InfluentialSamples):
            raise TypeError(f"`{argument}` must be an InfluentialSamples, got {type(group).__name__}.")
        group.validate(argument)
        groups.append((argument, group))
    non_empty = [(a, g) for a, g in groups if len(g)]
    heat_flags = {g.has_heatmaps for _, g in non_empty}
    if len(heat_flags) > 1:
        raise ValueError("Give XDA heatmaps for both `proponents` and `opponents`, or for neither.")
    with_heat = heat_flags == {True}

    columns, widths = _column_plan(non_empty)
    n_rows = 3 if with_heat else 1
    image_row = 1 if with_heat else 0
    # Vertical budget in inches: [title] [group headers] [panel titles] rows... [legend]
    title_h = 0.35 if title is not None else 0.0
    header_h = 0.3
    panel_title_h = 0.45
    legend_h = 0.35 if with_heat else 0.1
    height = title_h + header_h + panel_title_h + n_rows * panel_size + (n_rows - 1) * 0.55 + legend_h
    width = panel_size * sum(widths) * 1.08 + 0.3
    fig = Figure(figsize=(width, height))
    grid = GridSpec(n_rows, len(columns), figure=fig, width_ratios=widths, wspace=0.08,
                    hspace=0.55 / panel_size, left=0.02, right=0.98,
                    top=1 - (title_h + header_h + panel_title_h) / height, bottom=legend_h / height)
    header_y = 1 - (title_h + 0.05) / height

    scales = _heatmap_scales(non_empty, heatmap_scale) if with_heat else {}

    # Test sample
    ax = fig.add_subplot(grid[image_row, 0])
    _show_image(ax, test, denormalize)
    label = f"Test sample\npredicted: {_class_name(targets, class_names)}"
    if test_label is not None:
        label += f"\ntrue: {_class_name(test_label, class_names)}"
    ax.set_title(label, fontsize=9, fontweight="bold")

    first_heat_axes = {}
    for col, (argument, group, m) in enumerate(columns):
        if group is None:
            continue
        colour = SUPPORT_COLOUR if argument == "proponents" else OPPOSE_COLOUR
        ax = fig.add_subplot(grid[image_row, col])
        _show_image(ax, group.images[m], denormalize)
        for spine in ax.spines.values():
            spine.set_edgecolor(colour)
            spine.set_linewidth(2.0)
        idx = int(torch.as_tensor(group.indices).reshape(-1)[m])
        lab = int(torch.as_tensor(group.labels).reshape(-1)[m])
        score = float(torch.as_tensor(group.scores).reshape(-1)[m])
        note = annotate(idx) if annotate is not None else ""
        ax.set_title(f"#{idx}  label {_class_name(lab, class_names)}{note}\nτ = {score:+.3g}", fontsize=8, color=colour)
        if with_heat:
            v_tr, v_te = scales[(argument, m)]
            for row, rel, vmax in ((0, group.train_relevance[m], v_tr), (2, group.test_relevance[m], v_te)):
                hax = fig.add_subplot(grid[row, col])
                hax.imshow(heatmap_rgb(rel, cmap=cmap, vmax=vmax if vmax > 0 else None), interpolation="nearest")
                _strip(hax)
                first_heat_axes.setdefault(row, hax)
                if row == 0:
                    hax.set_title(f"sum = {float(_to_numpy(rel, 'relevance').sum()):+.3g}", fontsize=7)

    # Group headers and legends
    for argument, group in non_empty:
        cols = [c for c, (a, g, _) in enumerate(columns) if a == argument]
        left = grid[0, cols[0]].get_position(fig).x0
        right = grid[0, cols[-1]].get_position(fig).x1
        text = "Proponents (support the prediction)" if argument == "proponents" else \
            "Opponents (oppose the prediction)"
        colour = SUPPORT_COLOUR if argument == "proponents" else OPPOSE_COLOUR
        fig.text((left + right) / 2, header_y, text, ha="center", va="top",
                 fontsize=10, fontweight="bold", color=colour)
    if with_heat:
        if 0 in first_heat_axes:
            first_heat_axes[0].set_ylabel("XDA on the\ntraining image", fontsize=7)
        if 2 in first_heat_axes:
            first_heat_axes[2].set_ylabel("XDA on the\ntest image", fontsize=7)
        scale_text = {"pair": "one symmetric scale per pair", "panel": "symmetric scale per heatmap",
                      "figure": "one symmetric scale for the figure"}[heatmap_scale]
        fig.text(0.5, 0.05 / height, f"Heatmaps: red = supports, blue = opposes ({scale_text}). "
                 "Top: training image, bottom: test image.", ha="center", va="bottom", fontsize=8)
    if title is not None:
        fig.suptitle(title, fontsize=11, y=1 - 0.05 / height, va="top")
    return fig


def _to_tensor(x: Any) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def explain_figure(
    dualda: Any,
    test_input: torch.Tensor,
    targets: Optional[int] = None,
    k: int = 4,
    xda: Optional[Any] = None,
    *,
    test_label: Optional[int] = None,
    class_names: Optional[Sequence[str]] = None,
    denormalize: Denormalize = None,
    skip_zero: bool = True,
    show_progress: bool = False,
    **plot_kwargs: Any,
) -> Figure:
    """Explain one prediction with DualDA (and XDA heatmaps if ``xda`` is given) in one figure.

    Runs ``dualda.influence`` for the top-``k`` proponents and opponents, fetches their images and
    labels, runs :func:`captum_dualxda.xda.xda_pairs` if ``xda`` is given, and calls
    :func:`plot_explanation`.

    Parameters
    ----------
    dualda : DualDA
        A fitted :class:`captum_dualxda.dualda.DualDA`.
    test_input : torch.Tensor
        ``(C, H, W)`` or ``(1, C, H, W)`` float, one model input.
    targets : int, optional
        Class to explain; default: the model's prediction.
    k : int
        Number of proponents and of opponents (each).
    xda : XDA, optional
        Attributor on the same model and feature layer; None = no heatmaps.
    test_label : int, optional
        True label of the test sample, shown if given.
    class_names : sequence of str, optional
        Names indexed by class.
    denormalize : (mean, std), optional
        Undo input normalisation for display.
    skip_zero : bool
        Drop "proponents" with score <= 0 and "opponents" with score >= 0 (DualDA is sparse: a
        test sample may have fewer than ``k`` non-zero scores of either sign).
    show_progress : bool
        tqdm bars for the influence and XDA passes.
    **plot_kwargs
        Passed on to :func:`plot_explanation` (``heatmap_scale``, ``cmap``, ``panel_size``,
        ``title``, ``annotate``).

    Returns
    -------
    matplotlib.figure.Figure
        Not shown, not saved.

    Raises
    ------
    ValueError
        ``k < 1`` or ``test_input`` is a batch of more than one sample.
    """
    from .xda import xda_pairs  # local import: visualization works without XDA

    k = check_integer(k, "k", low=1)
    skip_zero = check_flag(skip_zero, "skip_zero")
    show_progress = check_flag(show_progress, "show_progress")
    x = _to_tensor(test_input)
    sample_ndim = _to_tensor(dualda.train_inputs([0])[0]).ndim
    if x.ndim == sample_ndim - 1:
        x = x[None]
    if x.ndim != sample_ndim or x.shape[0] != 1:
        raise ValueError(
            f"`test_input` must be one sample, (C, H, W) or (1, C, H, W), got shape {tuple(x.shape)}."
        )
    model = dualda.model
    x = x.to(model_device(model))
    if targets is None:
        with ModelProbe(model), torch.no_grad():
            targets = int(model(x).argmax(1)[0])
    target_t = torch.tensor([int(targets)], device=x.device)

    groups = {}
    for argument, sign in (("proponents", True), ("opponents", False)):
        res = dualda.influence((x, target_t), k=k, proponents=sign, show_progress=show_progress)
        idx, scores = res.indices[0].cpu(), res.influence_scores[0].cpu()
        if skip_zero:
            keep = scores > 0 if sign else scores < 0
            idx, scores = idx[keep], scores[keep]
        groups[argument] = (idx, scores)

    all_idx = torch.cat([groups["proponents"][0], groups["opponents"][0]])
    heat_train = heat_test = None
    if xda is not None and all_idx.numel():
        pairs = xda_pairs(dualda, xda, x, target_t, all_idx[None], show_progress=show_progress)
        heat_train, heat_test = pairs.train_relevance[0], pairs.test_relevance[0]

    samples = {}
    offset = 0
    for argument in ("proponents", "opponents"):
        idx, scores = groups[argument]
        n = idx.numel()
        if n:
            images = _to_tensor(dualda.train_inputs(idx)[0]).detach().cpu()
        else:
            images = torch.zeros(0, *x.shape[1:])
        samples[argument] = InfluentialSamples(
            indices=idx,
            scores=scores,
            images=images,
            labels=torch.as_tensor(dualda.train_labels)[idx].cpu(),
            train_relevance=None if heat_train is None else heat_train[offset:offset + n],
            test_relevance=None if heat_test is None else heat_test[offset:offset + n],
        )
        offset += n

    return plot_explanation(
        x[0].detach().cpu(),
        int(targets),
        samples["proponents"],
        samples["opponents"],
        test_label=test_label,
        class_names=class_names,
        denormalize=denormalize,
        **plot_kwargs,
    )


# --------------------------------------------------------------------------------------------
# Text: token heatmaps of a (test, training) pair
# --------------------------------------------------------------------------------------------
def _token_relevance(tokens: Sequence[str], relevance: ArrayLike, argument: str) -> np.ndarray:
    values = _to_numpy(relevance, argument).astype(np.float64).reshape(-1)
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
        viz.VisualizationDataRecord(torch.as_tensor(test / scale), float("nan"), target,
                                    "" if test_label is None else test_label, "test", float(test.sum()),
                                    list(test_tokens), float(score)),
        viz.VisualizationDataRecord(torch.as_tensor(train / scale), float("nan"), target,
                                    "" if train_label is None else train_label, name, float(train.sum()),
                                    list(train_tokens), float(score)),
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
    rows = [("test", list(test_tokens), _token_relevance(test_tokens, test_relevance, "test_relevance")),
            ("training", list(train_tokens), _token_relevance(train_tokens, train_relevance, "train_relevance"))]
    scale = max(float(np.abs(values).max(initial=0.0)) for _, _, values in rows) or 1.0
    palette = _palette(cmap, 1.0)
    chars_per_line = max(20, int(width * 11))
    lines = []
    for name, tokens, values in rows:
        line, used = [], 0
        for token, value in zip(tokens, values):
            if used + len(token) + 1 > chars_per_line and line:
                lines.append((name, line))
                line, used, name = [], 0, ""
            line.append((token, value))
            used += len(token) + 1
        lines.append((name, line))
    fig = Figure(figsize=(width, 0.42 * len(lines) + (0.5 if title else 0.25)))
    ax = fig.add_axes([0, 0, 1, 1])
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
            text = ax.text(x, y, token, fontsize=9, va="center", family="monospace",
                           bbox=dict(boxstyle="square,pad=0.15", facecolor=colour, edgecolor="none"))
            x += (len(token) + 1) / chars_per_line * 0.88
            text.set_gid(f"{value:+.4g}")
    ax.text(0.99, 0.02, f"tau = {score:+.3g}", fontsize=8, ha="right", va="bottom")
    return fig
