"""Checkpoints, Captum's way: the paths of a checkpoint ensemble and loading one for a while.

DualDA fits one SVM per checkpoint and averages their scores (see
:class:`~captum_dualxda.dualda.DualDA`'s ``checkpoints``). The arguments follow Captum's
``TracInCP``: ``checkpoints`` is a directory, a list of paths or an iterator of paths, and
``checkpoints_load_func(model, path)`` loads one into ``model`` in place (its return value, a
learning rate for TracIn, is ignored). Unlike TracIn, the model is always given back with the
parameters and buffers it had before (the same objects, with their values): :func:`weights_restored`
puts them back on exit.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Iterable, Iterator, List, Union

import torch
from torch import nn

from .probe import ModelState, model_lock

__all__ = ["CheckpointLoader", "checkpoint_paths", "weights_restored", "load_state_dict_checkpoint"]

CheckpointLoader = Callable[[nn.Module, str], Any]
"""``(model, path) -> anything``: loads the checkpoint at ``path`` into ``model`` in place."""


def load_state_dict_checkpoint(model: nn.Module, path: str) -> float:
    """Load a ``state_dict`` saved with ``torch.save`` (Captum's default loader's convention).

    Parameters
    ----------
    model : nn.Module
        Loaded in place (``strict``).
    path : str
        A file holding a state dict, or a dict with it under ``"model_state_dict"`` or
        ``"state_dict"``; a ``"module."`` prefix (``DataParallel``) is removed.

    Returns
    -------
    float
        The checkpoint's ``"learning_rate"`` entry if it has one, else 1.0 (Captum's convention).
    """
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict):
        raise TypeError(f"Checkpoint {path!r} does not hold a state dict (got {type(checkpoint).__name__}).")
    learning_rate = float(checkpoint.get("learning_rate", 1.0))
    for key in ("model_state_dict", "state_dict"):
        if isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    state = {
        name[7:] if name.startswith("module.") else name: value
        for name, value in checkpoint.items()
        if isinstance(value, torch.Tensor)
    }
    model.load_state_dict(state)
    return learning_rate


def checkpoint_paths(checkpoints: Union[str, os.PathLike, Iterable[str]], name: str = "checkpoints") -> List[str]:
    """The checkpoint files, in order: a directory's files sorted by name, or the given paths.

    Parameters
    ----------
    checkpoints : str or iterable of str
        A directory (every regular file in it, sorted), one file, or paths (list or iterator).
    name : str
        The argument's name, for errors.

    Returns
    -------
    list of str
        At least one path; each an existing file.
    """
    if isinstance(checkpoints, (str, os.PathLike)):
        path = os.fspath(checkpoints)
        if os.path.isdir(path):
            paths = sorted(os.path.join(path, f) for f in os.listdir(path) if os.path.isfile(os.path.join(path, f)))
        else:
            paths = [path]
    else:
        try:
            paths = [os.fspath(p) for p in checkpoints]
        except TypeError as error:
            raise TypeError(f"`{name}` must be a directory, a path or an iterable of paths: {error}") from None
    if not paths:
        raise ValueError(f"`{name}` names no checkpoint file.")
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"`{name}`: no such checkpoint file(s): {missing[:3]}.")
    return paths


@contextlib.contextmanager
def weights_restored(model: nn.Module) -> Iterator[None]:
    """Load checkpoints into ``model`` in the block as you like; it comes back as it was on exit.

    Holds the model's lock (:func:`~captum_dualxda._core.probe.model_lock`) for the block, so no other
    thread of this package runs the model with a checkpoint loaded. On exit, also after an
    exception, every module holds the very submodules, Parameter and buffer objects it held on entry (a
    loader calling ``load_state_dict(..., assign=True)`` replaces them; an optimiser built before
    keeps training the model), each with the value it had on entry (written back in place only
    where it changed), and every training flag and ``requires_grad`` is as on entry
    (:class:`~captum_dualxda._core.probe.ModelState`). The values are copied once on entry, however
    many checkpoints the block loads.

    Parameters
    ----------
    model : nn.Module

    Examples
    --------
    >>> with weights_restored(model):                               # doctest: +SKIP
    ...     for path in paths:
    ...         load_state_dict_checkpoint(model, path)
    ...         phi.append(model(x))
    """
    with model_lock(model):
        children = [(m, dict(m._modules)) for m in model.modules()]
        state = ModelState(model, objects=True)
        tensors = {
            id(t): t for m in model.modules() for t in [*m._parameters.values(), *m._buffers.values()] if t is not None
        }
        saved = [(t, t.detach().clone()) for t in tensors.values()]
        try:
            yield
        finally:
            for module, submodules in children:
                if module._modules != submodules:  # a loader that replaced submodules
                    module._modules.clear()
                    module._modules.update(submodules)
            state.restore()
            with torch.no_grad():
                for tensor, value in saved:
                    if (tensor.shape, tensor.dtype, tensor.device) != (value.shape, value.dtype, value.device):
                        tensor.data = value  # the loader swapped the object's data for another shape or dtype
                    elif not torch.equal(tensor, value):
                        tensor.copy_(value)
