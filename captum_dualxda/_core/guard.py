"""Has the model changed since the fit? A cheap check before a fit is used with the model again.

A DualDA fit (the support vectors' features, the dual variables) belongs to the weights it was
made with. Scoring test inputs with a model trained further mixes the old fit with the new
model's features: wrong scores, and heatmaps that disagree with them. :class:`WeightsRecord`
notes, at the fit, every parameter and persistent buffer of the model (``state_dict()``, what
training and checkpoint loading change): the tensor object, its version counter (PyTorch bumps
it for every in-place change: optimiser steps, ``load_state_dict``, ``p -= ...`` under
``no_grad``), its storage address (``p.data = ...``, ``model.to(...)``), dtype and shape, and a
SHA-256 digest of its bytes.

A check compares the cheap items (microseconds per tensor). Only a tensor whose items differ
is hashed again; where its bytes are still those of the fit (a checkpoint ensemble that loaded
and restored the weights, ``load_state_dict`` of the same weights, a move to another device)
the record follows it, so such a false alarm costs one hash, once. Switching train/eval mode or
``requires_grad`` changes nothing the record looks at.

Inside an :class:`~captum_dualxda.XDA` block the composite's canonizers replace weights for the
block's duration (e.g. batch norm merged into a convolution); a check there judges the model by
the weights it had when the block was entered (:func:`push_entry_view`).

Not checked: non-persistent buffers, which models use for tables they build and rebuild
themselves (rotary embeddings, masks; they are part of the cache key all the same); buffers the
model's own forward pass rewrites (a counter), found when this package's passes change them
(:meth:`WeightsRecord.absorb`); tensors on the ``meta`` device (weights an offloading library
brings in only during the forward pass). A change made in place through ``p.data``
(``p.data.add_(...)``) bypasses the version counter and is not seen.
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from dataclasses import dataclass
from typing import Dict, List, Optional, Set, Tuple

import torch
from torch import nn

from ..exceptions import ModelChangedError

__all__ = ["WeightsRecord", "push_entry_view", "pop_entry_view"]

_View = List[Tuple[str, torch.Tensor, torch.Tensor]]
"""``(name, the Parameter or buffer object, a tensor with its values)`` of every model tensor."""

_ENTRY_VIEWS: weakref.WeakKeyDictionary[nn.Module, List[_View]] = weakref.WeakKeyDictionary()
_ENTRY_VIEWS_GUARD = threading.Lock()


def _live_view(model: nn.Module) -> _View:
    """Every parameter and persistent buffer (what ``state_dict()`` holds), by dotted name.

    The module tree is walked with a stack rather than ``named_modules()`` (a third of the cost:
    this runs on every call that uses a fit).
    """
    view: _View = []
    stack = [("", model)]
    seen = set()
    while stack:
        prefix, module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        for name, parameter in module._parameters.items():
            if parameter is not None:
                view.append((prefix + name, parameter, parameter))
        if module._buffers:
            transient = module._non_persistent_buffers_set
            for name, buffer in module._buffers.items():
                if buffer is not None and name not in transient:
                    view.append((prefix + name, buffer, buffer))
        children = [(prefix + name + ".", child) for name, child in module._modules.items() if child is not None]
        stack.extend(reversed(children))
    return view


def push_entry_view(model: nn.Module) -> None:
    """Judge ``model`` by its current weights until :func:`pop_entry_view` (nested blocks stack).

    For code that swaps weights for a while and puts them back (XDA's canonizers, which assign
    ``.data``): aliases of the current tensors keep their values (no copy) while the block runs.
    """
    view = [(name, tensor, tensor.detach()) for name, tensor, _ in _live_view(model)]
    with _ENTRY_VIEWS_GUARD:
        _ENTRY_VIEWS.setdefault(model, []).append(view)


def pop_entry_view(model: nn.Module) -> None:
    """End the innermost :func:`push_entry_view` of ``model``."""
    with _ENTRY_VIEWS_GUARD:
        views = _ENTRY_VIEWS.get(model)
        if views:
            views.pop()
            if not views:
                del _ENTRY_VIEWS[model]


def _current_view(model: nn.Module) -> _View:
    with _ENTRY_VIEWS_GUARD:
        views = _ENTRY_VIEWS.get(model)
        if views:
            return views[0]  # the outermost block saw the weights before any canonizer
    return _live_view(model)


def _digest(tensor: torch.Tensor) -> Optional[str]:
    """SHA-256 of a tensor's dtype, shape and bytes; None where the bytes cannot be read."""
    digest = hashlib.sha256(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    try:
        data = tensor.detach().reshape(-1).cpu().contiguous()
        if data.numel():
            digest.update(data.view(torch.uint8).numpy().data)
    except (RuntimeError, TypeError, NotImplementedError):  # sparse, quantized, meta tensors
        return None
    return digest.hexdigest()


@dataclass
class _Entry:
    """What the record knows of one tensor."""

    owner: weakref.ref[torch.Tensor]
    key: Tuple[int, int, torch.dtype, torch.Size]
    """Version counter, storage address, dtype and shape (a move to another device or dtype
    gives new storage)."""
    digest: Optional[str]

    @classmethod
    def of(cls, owner: torch.Tensor, values: torch.Tensor, digest: Optional[str]) -> _Entry:
        return cls(weakref.ref(owner), (values._version, values.data_ptr(), values.dtype, values.shape), digest)

    def unchanged(self, owner: torch.Tensor, values: torch.Tensor) -> bool:
        """The cheap test: same object, version counter, storage, dtype and shape."""
        return self.owner() is owner and (values._version, values.data_ptr(), values.dtype, values.shape) == self.key

    def same_values(self, values: torch.Tensor) -> bool:
        """The exact test (one hash): the bytes the record was made with."""
        return self.digest is not None and _digest(values) == self.digest

    def describe(self, name: str, values: torch.Tensor) -> str:
        dtype, shape = self.key[2], self.key[3]
        if values.dtype != dtype:
            return f"'{name}' ({dtype} -> {values.dtype})"
        if values.shape != shape:
            return f"'{name}' (shape {tuple(shape)} -> {tuple(values.shape)})"
        return f"'{name}'"


class WeightsRecord:
    """The parameters and buffers of a model as a fit saw them; :meth:`check` says if they moved on.

    Parameters
    ----------
    model : nn.Module
        Recorded as it is now (one SHA-256 pass over its weights).

    Examples
    --------
    >>> record = WeightsRecord(model)                           # doctest: +SKIP
    >>> optimizer.step()
    >>> record.check(model, "DualDA.influence")                 # raises ModelChangedError
    """

    def __init__(self, model: nn.Module) -> None:
        self._entries: Dict[str, _Entry] = {
            name: _Entry.of(owner, values, _digest(values)) for name, owner, values in _current_view(model)
        }
        self._volatile: Set[str] = set()

    def changes(self, model: nn.Module) -> List[str]:
        """Names (quoted, with what changed) of the tensors that differ from the record; [] if none.

        A tensor that fails the cheap test but holds the recorded bytes is followed (the record
        takes its new object, version and storage) and is not a change.
        """
        found: List[str] = []
        seen = set()
        for name, owner, values in _current_view(model):
            seen.add(name)
            entry = self._entries.get(name)
            if name in self._volatile or (entry is not None and entry.unchanged(owner, values)) or values.is_meta:
                continue  # a meta tensor (weights offloaded, e.g. by accelerate) has no values here to compare
            if entry is None:
                found.append(f"'{name}' (added)")
            elif entry.same_values(values):
                self._entries[name] = _Entry.of(owner, values, entry.digest)
            else:
                found.append(entry.describe(name, values))
        found += [f"'{name}' (removed)" for name in self._entries if name not in seen and name not in self._volatile]
        return found

    def check(self, model: nn.Module, call: str) -> None:
        """Raise :class:`ModelChangedError` if ``model`` differs from the record.

        Parameters
        ----------
        model : nn.Module
        call : str
            The public call that uses the fit (for the message), e.g. ``"DualDA.influence"``.
        """
        changed = self.changes(model)
        if changed:
            raise ModelChangedError(self.message(changed, call))

    @staticmethod
    def message(changed: List[str], call: str) -> str:
        """The error for ``changed`` (from :meth:`changes`; empty: another process's model), with the fix."""
        shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
        what = (
            f"{shown} of its parameters and buffers differ from the fit's"
            if changed
            else "on another rank of the process group; every rank stops"
        )
        return (
            f"`{call}`: the model changed after this DualDA was fitted ({what}). The fit's support vectors and dual "
            "variables belong to the old weights; "
            "scoring with the changed model's features would mix the two and give wrong scores. Refit for the "
            "current weights: `DualDA(model, ...)` again (with `cache_dir`, every set of weights is cached under "
            "its own key). Or, to keep using this fit, put the weights it was made with back into the model "
            "(e.g. `model.load_state_dict(saved_state)`)."
        )

    def absorb(self, model: nn.Module) -> None:
        """After this package's own passes: stop checking the tensors those passes changed.

        A buffer the model rewrites in its own eval-mode forward pass (a counter, a cache) is
        part of how it runs, not a change by the user; tensors that fail the cheap test but
        hold the recorded bytes are followed as in :meth:`changes`.
        """
        for name, owner, values in _current_view(model):
            entry = self._entries.get(name)
            if entry is None or name in self._volatile or entry.unchanged(owner, values) or values.is_meta:
                continue
            if entry.same_values(values):
                self._entries[name] = _Entry.of(owner, values, entry.digest)
            else:
                self._volatile.add(name)
