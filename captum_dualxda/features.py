"""The features ``phi``: which layer, and ``phi`` of one batch.

DualDA and XDA both work on ``phi(x)``: the INPUT of the network's final ``nn.Linear``
(Captum's ``final_fc_layer`` convention), flattened to ``(N, d)``. :func:`resolve_linear_layer`
finds that layer; :func:`batch_features` captures ``phi`` of one batch through a
:class:`~captum_dualxda.probe.ModelProbe`. Extraction over a whole training set is
:mod:`captum_dualxda.store`.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence, Tuple, Union

import torch
from torch import nn

from .probe import ModelProbe

__all__ = ["resolve_linear_layer", "layer_name", "model_device", "batch_features", "batch_features_and_output"]


def resolve_linear_layer(model: nn.Module, layer: Union[str, nn.Module], argument: str = "final_fc_layer") -> nn.Linear:
    """Return the model's final linear layer given as a module or a dotted name.

    Parameters
    ----------
    model : nn.Module
    layer : str or nn.Module
        e.g. ``"fc"`` or ``"classifier.3"`` or the module itself.
    argument : str
        Argument name used in error messages.

    Returns
    -------
    nn.Linear

    Raises
    ------
    ValueError
        The name does not exist in ``model``, or the module is not part of ``model``.
    TypeError
        The layer is not an ``nn.Linear`` (e.g. a ReLU picked by ``list(model.children())[-1]``).
    """
    if isinstance(layer, str):
        try:
            module = functools.reduce(getattr, layer.split("."), model) if layer else None
        except AttributeError:
            module = None
        if not isinstance(module, nn.Module):
            names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
            raise ValueError(
                f"`{argument}`={layer!r} is not a submodule of the model. "
                f"Linear layers found: {names or 'none'}."
            )
    elif isinstance(layer, nn.Module):
        module = layer
        if not any(m is module for m in model.modules()):
            raise ValueError(f"`{argument}` is a module that is not part of `model`.")
    else:
        raise TypeError(f"`{argument}` must be an nn.Linear module or its dotted name, got {type(layer).__name__}.")
    if not isinstance(module, nn.Linear):
        raise TypeError(
            f"`{argument}` must be the final nn.Linear layer (its input is the feature vector), "
            f"got {type(module).__name__}. Pass the Linear layer itself or its dotted name."
        )
    return module


def layer_name(model: nn.Module, layer: nn.Module) -> str:
    """Dotted name of ``layer`` inside ``model`` (``""`` for the model itself)."""
    for name, module in model.named_modules():
        if module is layer:
            return name
    raise ValueError("`layer` is not part of `model`.")


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (CPU for a model without any)."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _to_device(value: Any, device: torch.device) -> Any:
    return value.to(device) if isinstance(value, torch.Tensor) else value


def batch_features_and_output(model: nn.Module, layer: nn.Linear, inputs: Sequence[Any]) -> Tuple[torch.Tensor, Any]:
    """Features ``phi`` of one batch and the model's output, from one forward pass.

    Same as :func:`batch_features` (a :class:`~captum_dualxda.probe.ModelProbe`: eval mode, no
    grad, the model left as found), also returning what ``model(*inputs)`` returned (e.g.
    ``(N, K)`` logits).

    Returns
    -------
    features : torch.Tensor
        ``(N, d)`` on the model's device.
    output : Any
        The model output.
    """
    device = model_device(model)
    with ModelProbe(model, layer) as probe, torch.no_grad():
        output = probe.run(*[_to_device(value, device) for value in inputs])
        return probe.features(), output


def batch_features(model: nn.Module, layer: nn.Linear, inputs: Sequence[Any]) -> torch.Tensor:
    """Features ``phi`` of one batch: the flattened input of ``layer``.

    The model runs in eval mode under ``no_grad`` on its own device (inputs are moved there),
    through a :class:`~captum_dualxda.probe.ModelProbe`: every submodule's training flag and
    every parameter's ``requires_grad`` are restored afterwards, and concurrent calls from
    several threads never mix their features.

    Parameters
    ----------
    model : nn.Module
    layer : nn.Linear
    inputs : sequence
        Model inputs, called as ``model(*inputs)``.

    Returns
    -------
    torch.Tensor
        ``(N, d)``, dtype of the layer input, on the model's device.

    Raises
    ------
    RuntimeError
        The forward pass never reached ``layer``.
    """
    return batch_features_and_output(model, layer, inputs)[0]


def all_finite(features: torch.Tensor) -> bool:
    """Whether every entry of ``(n, d)`` ``features`` is finite, checked in row chunks of 32 MiB."""
    chunk = max(1, (1 << 25) // (4 * max(1, features.shape[1])))
    return all(bool(torch.isfinite(features[i : i + chunk]).all()) for i in range(0, features.shape[0], chunk))


