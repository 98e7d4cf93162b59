"""Model inputs in the two forms the package accepts: Captum's tuple and Hugging Face's dict.

A tuple (or a single tensor) is called as ``model(*inputs)``, a dict (or ``BatchEncoding``) as
``model(**inputs)``. Everything that moves, slices, counts or repeats model inputs goes through
these helpers, so both forms behave alike everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Union

import torch

__all__ = [
    "ModelInputs",
    "SingleInput",
    "call_model",
    "inputs_to",
    "batch_size_of",
    "repeat_row",
    "single_input",
    "input_batches",
    "LABEL_KEYS",
]

ModelInputs = Union[tuple[Any, ...], dict[str, Any]]
"""Positional model inputs ``model(*inputs)`` or keyword inputs ``model(**inputs)``."""

SingleInput = Union[torch.Tensor, dict[str, Any]]
"""The one input of a single-input model: a tensor (``model(x)``) or a dict (``model(**x)``)."""

LABEL_KEYS = ("labels", "label")
"""Keys under which a dict batch holds its labels (Hugging Face's convention), in this order."""


def call_model(model: Callable[..., Any], inputs: Any) -> Any:
    """``model(**inputs)`` for a dict (Hugging Face), ``model(*inputs)`` for a tuple (Captum),
    ``model(inputs)`` for a single tensor."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, torch.Tensor):
        return model(inputs)
    return model(*inputs)


def inputs_to(inputs: Any, device: torch.device, non_blocking: bool = False, detach: bool = False) -> Any:
    """Model inputs with every tensor moved to ``device``, in the form given (tensor, tuple or dict).

    ``non_blocking=True`` makes copies from pinned host memory to an accelerator asynchronous
    (a DataLoader with ``pin_memory=True``); it changes nothing for other copies. ``detach``:
    the tensors are detached first (no gradient history travels with them).
    """

    def move(value: Any) -> Any:
        if not isinstance(value, torch.Tensor):
            return value
        return (value.detach() if detach else value).to(device, non_blocking=non_blocking)

    if isinstance(inputs, Mapping):
        return {k: move(v) for k, v in inputs.items()}
    if isinstance(inputs, torch.Tensor):
        return move(inputs)
    return tuple(move(v) for v in inputs)


def batch_size_of(inputs: Any) -> int:
    """Rows of a batch of model inputs: the first axis of its first tensor.

    Raises
    ------
    TypeError
        The inputs hold no tensor.
    """
    if isinstance(inputs, torch.Tensor):
        return inputs.shape[0]
    values = inputs.values() if isinstance(inputs, Mapping) else inputs
    for value in values:
        if isinstance(value, torch.Tensor):
            return value.shape[0]
    raise TypeError(f"The model inputs ({type(inputs).__name__}) hold no tensor.")


def repeat_row(inputs: SingleInput, i: int, k: int) -> SingleInput:
    """Sample ``i`` of a batch (a tensor or a dict of tensors), ``k`` times."""

    def repeat(value: Any) -> Any:
        if not isinstance(value, torch.Tensor):
            return value
        return value[i : i + 1].expand(k, *value.shape[1:]).contiguous()

    if isinstance(inputs, Mapping):
        return {name: repeat(v) for name, v in inputs.items()}
    return repeat(inputs)


def single_input(value: Any, argument: str) -> SingleInput:
    """The one model input of a batch: a tensor (``model(x)``) or a dict (``model(**x)``).

    A dict's ``labels`` / ``label`` entry is dropped; a tuple or list must hold exactly one
    tensor.

    Raises
    ------
    TypeError
        A dict without tensors, or something that is not a tensor.
    ValueError
        A tuple or list of several model inputs.
    """
    if isinstance(value, Mapping):
        if any(key in value for key in LABEL_KEYS):
            value = {k: v for k, v in value.items() if k not in LABEL_KEYS}
        if not any(isinstance(v, torch.Tensor) for v in value.values()):
            raise TypeError(f"`{argument}` is a dict without tensors.")
        return dict(value)
    if isinstance(value, (tuple, list)):
        if len(value) != 1:
            raise ValueError(
                f"`{argument}` holds {len(value)} model inputs; XDA explains single-input models `model(x)` only."
            )
        value = value[0]
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"`{argument}` must be a tensor, got {type(value).__name__}.")
    return value


def input_batches(inputs: Any, batch_size: int, argument: str = "inputs") -> Iterator[ModelInputs]:
    """Batches of at most ``batch_size`` rows of a Tensor, a tuple or a dict of model inputs.

    A Tensor ``x`` gives ``(x[rows],)``; a tuple gives tuples, a dict gives dicts (values that
    are not tensors are passed along whole).

    Raises
    ------
    TypeError
        Anything else, or an empty tuple or dict.
    """
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    if isinstance(inputs, Mapping) and inputs:
        n = batch_size_of(inputs)
        for start in range(0, n, batch_size):
            yield {k: v[start : start + batch_size] if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        return
    if not isinstance(inputs, (tuple, list)) or not inputs:
        raise TypeError(f"`{argument}` must be a Tensor, a tuple or dict of model inputs, or a DataLoader.")
    n = inputs[0].shape[0]
    for start in range(0, n, batch_size):
        yield tuple(v[start : start + batch_size] if isinstance(v, torch.Tensor) else v for v in inputs)
