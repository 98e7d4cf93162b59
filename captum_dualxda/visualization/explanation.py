"""The explanation figure: a test sample, its proponents and opponents, and their XDA heatmaps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from matplotlib.colors import Colormap
from matplotlib.figure import Figure
from matplotlib.gridspec import GridSpec

from .._core.features import model_device
from .._core.probe import ModelProbe
from .._utils.validation import check_flag, check_integer, check_positive
from ..dualda import DualDA
from ..xda import XDA, xda_pairs
from .images import OPPOSE_COLOUR, SUPPORT_COLOUR, ArrayLike, Denormalize, heatmap_rgb, image_for_display, to_numpy

__all__ = ["InfluentialSamples", "plot_explanation", "explain_figure"]


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


_Column = Tuple[str, Optional["InfluentialSamples"], int]


def _column_plan(non_empty: List[Tuple[str, InfluentialSamples]]) -> Tuple[List[_Column], List[float]]:
    """Columns ``test | gap | proponents | gap | opponents`` as ``(kind, group, m)`` and their widths."""
    columns: List[_Column] = [("test", None, 0)]
    widths = [1.0]
    for argument, group in non_empty:
        columns.append(("gap", None, 0))
        widths.append(0.25)
        for m in range(len(group)):
            columns.append((argument, group, m))
            widths.append(1.0)
    return columns, widths


def _heatmap_scales(
    non_empty: List[Tuple[str, InfluentialSamples]], heatmap_scale: str
) -> Dict[Tuple[str, int], Tuple[float, float]]:
    """``(group, m) -> (vmax training heatmap, vmax test heatmap)`` for the chosen ``heatmap_scale``."""

    def peak(rel: Any) -> float:
        return float(np.abs(to_numpy(rel, "relevance").astype(np.float64).sum(0)).max())

    scales = {
        (argument, m): (peak(_relevance(group.train_relevance)[m]), peak(_relevance(group.test_relevance)[m]))
        for argument, group in non_empty
        for m in range(len(group))
    }
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
    test = torch.as_tensor(to_numpy(test_image, "test_image"))
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
    grid = GridSpec(
        n_rows,
        len(columns),
        figure=fig,
        width_ratios=widths,
        wspace=0.08,
        hspace=0.55 / panel_size,
        left=0.02,
        right=0.98,
        top=1 - (title_h + header_h + panel_title_h) / height,
        bottom=legend_h / height,
    )
    header_y = 1 - (title_h + 0.05) / height

    scales = _heatmap_scales(non_empty, heatmap_scale) if with_heat else {}

    # Test sample
    ax = fig.add_subplot(grid[image_row, 0])
    _show_image(ax, test, denormalize)
    label = f"Test sample\npredicted: {_class_name(targets, class_names)}"
    if test_label is not None:
        label += f"\ntrue: {_class_name(test_label, class_names)}"
    ax.set_title(label, fontsize=9, fontweight="bold")

    first_heat_axes: Dict[int, Any] = {}
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
            heat = ((0, _relevance(group.train_relevance)[m], v_tr), (2, _relevance(group.test_relevance)[m], v_te))
            for row, rel, vmax in heat:
                hax = fig.add_subplot(grid[row, col])
                hax.imshow(heatmap_rgb(rel, cmap=cmap, vmax=vmax if vmax > 0 else None), interpolation="nearest")
                _strip(hax)
                first_heat_axes.setdefault(row, hax)
                if row == 0:
                    hax.set_title(f"sum = {float(to_numpy(rel, 'relevance').sum()):+.3g}", fontsize=7)

    # Group headers and legends
    for argument, _group in non_empty:
        cols = [c for c, (a, g, _) in enumerate(columns) if a == argument]
        left = grid[0, cols[0]].get_position(fig).x0
        right = grid[0, cols[-1]].get_position(fig).x1
        text = (
            "Proponents (support the prediction)" if argument == "proponents" else "Opponents (oppose the prediction)"
        )
        colour = SUPPORT_COLOUR if argument == "proponents" else OPPOSE_COLOUR
        fig.text(
            (left + right) / 2, header_y, text, ha="center", va="top", fontsize=10, fontweight="bold", color=colour
        )
    if with_heat:
        if 0 in first_heat_axes:
            first_heat_axes[0].set_ylabel("XDA on the\ntraining image", fontsize=7)
        if 2 in first_heat_axes:
            first_heat_axes[2].set_ylabel("XDA on the\ntest image", fontsize=7)
        scale_text = {
            "pair": "one symmetric scale per pair",
            "panel": "symmetric scale per heatmap",
            "figure": "one symmetric scale for the figure",
        }[heatmap_scale]
        fig.text(
            0.5,
            0.05 / height,
            f"Heatmaps: red = supports, blue = opposes ({scale_text}). Top: training image, bottom: test image.",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    if title is not None:
        fig.suptitle(title, fontsize=11, y=1 - 0.05 / height, va="top")
    return fig


def _to_tensor(x: Any) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def _first_input(dualda: DualDA, indices: Any) -> torch.Tensor:
    """The first model input (the images) of training samples ``indices``."""
    inputs: Any = dualda.train_inputs(indices)
    return _to_tensor(inputs[0])


def _relevance(relevance: Optional[torch.Tensor]) -> torch.Tensor:
    """Heatmaps that are there (``_heatmap_scales`` runs only when the samples carry them)."""
    if relevance is None:
        raise ValueError("The influential samples carry no heatmaps (`train_relevance` / `test_relevance`).")
    return relevance


def explain_figure(
    dualda: DualDA,
    test_input: torch.Tensor,
    targets: Optional[int] = None,
    k: int = 4,
    xda: Optional[XDA] = None,
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
    k = check_integer(k, "k", low=1)
    skip_zero = check_flag(skip_zero, "skip_zero")
    show_progress = check_flag(show_progress, "show_progress")
    x = _to_tensor(test_input)
    sample_ndim = _first_input(dualda, [0]).ndim
    if x.ndim == sample_ndim - 1:
        x = x[None]
    if x.ndim != sample_ndim or x.shape[0] != 1:
        raise ValueError(f"`test_input` must be one sample, (C, H, W) or (1, C, H, W), got shape {tuple(x.shape)}.")
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
        images = _first_input(dualda, idx).detach().cpu() if n else torch.zeros(0, *x.shape[1:])
        samples[argument] = InfluentialSamples(
            indices=idx,
            scores=scores,
            images=images,
            labels=torch.as_tensor(dualda.train_labels)[idx].cpu(),
            train_relevance=None if heat_train is None else heat_train[offset : offset + n],
            test_relevance=None if heat_test is None else heat_test[offset : offset + n],
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
