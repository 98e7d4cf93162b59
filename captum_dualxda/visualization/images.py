"""Images and heatmaps as arrays: Captum's image layout, coloured relevance, display-ready inputs.

Colour convention for heatmaps: red = the pixel supports the prediction, blue = it opposes it,
white = neutral, on a scale symmetric around zero.

Heatmaps are coloured with NumPy and :func:`zennit.image.palette`, not with
:func:`zennit.image.imgify`: with Pillow 13, images produced by ``imgify`` fail on
``.convert("RGB")``, ``.save()`` and ``imshow`` (the palette is passed as an array).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from matplotlib.colors import Colormap
from zennit.image import palette as zennit_palette

from .._utils.validation import check_positive

__all__ = [
    "to_captum_image",
    "heatmap_rgb",
    "image_for_display",
    "ArrayLike",
    "Denormalize",
    "SUPPORT_COLOUR",
    "OPPOSE_COLOUR",
    "to_numpy",
    "colour_table",
]

ArrayLike = Union[torch.Tensor, np.ndarray]
Denormalize = Optional[Tuple[Union[float, Sequence[float]], Union[float, Sequence[float]]]]

SUPPORT_COLOUR = "#b2182b"  # red: supports the prediction
OPPOSE_COLOUR = "#2166ac"  # blue: opposes the prediction


def to_numpy(x: Any, argument: str) -> np.ndarray:
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
    array = to_numpy(x, "x").astype(np.float64)
    if array.ndim == 2:
        return array[:, :, None]
    if array.ndim == 3:
        return np.transpose(array, (1, 2, 0))
    if array.ndim == 4:
        return np.transpose(array, (0, 2, 3, 1))
    raise ValueError(f"`x` must have shape (H, W), (C, H, W) or (N, C, H, W), got {tuple(array.shape)}.")


def colour_table(cmap: Union[str, Colormap, Any], level: float) -> np.ndarray:
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
    array = to_numpy(relevance, "relevance").astype(np.float64)
    if not np.isfinite(array).all():
        raise ValueError("`relevance` contains NaN or inf; a heatmap with non-finite relevance cannot be coloured.")
    if array.ndim == 2:
        maps, batched = array[None], False
    elif array.ndim == 3:
        maps, batched = _reduce_channels(array, False)[None], False
    elif array.ndim == 4:
        maps, batched = _reduce_channels(array, True), True
    else:
        raise ValueError(f"`relevance` must have shape (H, W), (C, H, W) or (N, C, H, W), got {tuple(array.shape)}.")
    if vmax is None:
        scale = np.abs(maps).max(axis=(1, 2), keepdims=True)
        scale[scale == 0] = 1.0
    else:
        scale = np.full((maps.shape[0], 1, 1), check_positive(vmax, "vmax"))
    unit = (maps + scale) / (2 * scale)  # [-vmax, vmax] -> [0, 1]
    index = (unit * 255).clip(0, 255).astype(np.uint8)  # same quantisation as imgify
    rgb = colour_table(cmap, level)[index]
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
    array = to_numpy(image, "image").astype(np.float64)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[0] not in (1, 3):
        raise ValueError(f"`image` must have shape (H, W), (1, H, W) or (3, H, W), got {tuple(array.shape)}.")
    if denormalize is not None:
        channels = array.shape[0]
        mean: Optional[np.ndarray] = None
        std: Optional[np.ndarray] = None
        try:
            given_mean, given_std = denormalize
            mean = np.asarray(given_mean, dtype=np.float64).reshape(-1, 1, 1)
            std = np.asarray(given_std, dtype=np.float64).reshape(-1, 1, 1)
        except (TypeError, ValueError):
            mean = std = None
        if mean is None or std is None or mean.shape[0] not in (1, channels) or std.shape[0] not in (1, channels):
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
