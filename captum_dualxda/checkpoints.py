"""Checkpoints, Captum's way: the paths of a checkpoint ensemble and loading one for a while.

DualDA fits one SVM per checkpoint and averages their scores (see
:class:`~captum_dualxda.dualda.DualDA`'s ``checkpoints``). The arguments follow Captum's
``TracInCP``: ``checkpoints`` is a directory, a list of paths or an iterator of paths, and
``checkpoints_load_func(model, path)`` loads one into ``model`` in place (its return value, a
learning rate for TracIn, is ignored). Unlike TracIn, the model is always given back with the
parameters and buffers it had before: :func:`weights_restored` puts them back on exit.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Iterable, Iterator, List, Union

import torch
from torch import nn

from .probe import model_lock

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
    state = {name[7:] if name.startswith("module.") else name: value for name, value in checkpoint.items()
             if isinstance(value, torch.Tensor)}
    model.load_state_dict(state)
    return learning_rate


def checkpoint_paths(checkpoints: Union[str, Iterable[str]], name: str = "checkpoints") -> List[str]:
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
    """Load checkpoints into ``model`` in the block as you like; its previous values come back on exit.

    Holds the model's lock (:func:`~captum_dualxda.probe.model_lock`) for the block, so no other
    thread of this package runs the model with a checkpoint loaded. On exit, also after an
    exception, every parameter and buffer gets the value it had on entry, in place (the same
    tensor objects). The values are copied once on entry, however many checkpoints the block
    loads.

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
        saved = {name: value.detach().clone() for name, value in model.state_dict(keep_vars=True).items()}
        try:
            yield
        finally:
            with torch.no_grad():
                for name, value in model.state_dict(keep_vars=True).items():
                    if name in saved:
                        value.copy_(saved[name])
