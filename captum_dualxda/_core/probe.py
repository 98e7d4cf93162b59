"""The model probe: run a model in eval mode, capture ``phi`` at the final layer, put it all back.

Everything in this package that runs the user's model goes through :class:`ModelProbe`
(feature extraction, scoring, XDA, metrics, figures). A probe

- holds the model's lock (one re-entrant lock per model), so two threads that explain with the
  same model never see each other's features or each other's mode switches;
- records every submodule's ``training`` flag and every parameter's ``requires_grad`` and
  restores exactly those on exit, even when the forward pass raises: a model in train mode
  with a frozen (eval) BatchNorm comes back with that BatchNorm still in eval mode;
- puts the whole model in eval mode (no dropout, BatchNorm on running statistics);
- optionally captures the INPUT of one layer (``phi``, flattened to ``(N, d)``) with a forward
  pre-hook that only listens to the probing thread, and removes the hook on exit; a layer that
  runs more than once in one forward pass is refused (:meth:`ModelProbe.features`).

Examples
--------
>>> with ModelProbe(model, model.fc) as probe:                 # doctest: +SKIP
...     with torch.no_grad():
...         logits = model(x)
...     phi = probe.features()                                  # (N, d)
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from ..exceptions import FeaturesReached

__all__ = ["ModelProbe", "ModelState", "model_lock"]

_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()
_MISSING = object()


def model_lock(model: nn.Module) -> threading.RLock:
    """The re-entrant lock that serialises this package's passes through ``model``.

    Parameters
    ----------
    model : nn.Module

    Returns
    -------
    threading.RLock
        The same lock object for the same model, for as long as the model lives.
    """
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = threading.RLock()
            _LOCKS[model] = lock
        return lock


class ModelState:
    """What a pass through the model may change, recorded so that it can be put back.

    Records every submodule's own ``training`` flag and every parameter's ``requires_grad``.
    With ``objects=True`` it also records which Parameter and buffer objects each submodule
    holds (a canonizer that merges BatchNorm into a convolution replaces them; zennit 1.0's
    ResNet canonizer leaves zero ``bias`` Parameters behind after its ``remove``), so that
    :meth:`restore` puts the very same objects back (optimisers holding references keep working)
    and drops the ones that were added.

    Parameters
    ----------
    model : nn.Module
    objects : bool
        Also record the Parameter and buffer objects of every submodule.
    """

    def __init__(self, model: nn.Module, objects: bool = False) -> None:
        self.training: List[Tuple[nn.Module, bool]] = [(m, m.training) for m in model.modules()]
        self.requires_grad: List[Tuple[torch.Tensor, bool]] = [(p, p.requires_grad) for p in model.parameters()]
        self.objects: Optional[List[Tuple[nn.Module, Dict[str, Any], Dict[str, Any], set]]] = None
        if objects:
            self.objects = []
            for module in model.modules():
                names = set(module._parameters) | set(module._buffers)
                shadowed = {name for name in names if name in module.__dict__}
                self.objects.append((module, dict(module._parameters), dict(module._buffers), shadowed))

    def restore(self) -> None:
        """Put every recorded flag (and, with ``objects``, every Parameter and buffer) back.

        Objects are put back through ``setattr`` / ``delattr`` (what ``nn.Module`` offers for
        registering), and only where they differ from the record.
        """
        if self.objects is not None:
            for module, params, buffers, shadowed in self.objects:
                for name in [n for n in vars(module) if (n in params or n in buffers) and n not in shadowed]:
                    object.__delattr__(module, name)  # a plain attribute now hiding a parameter
                for name in [
                    n for n in list(module._parameters) + list(module._buffers) if n not in params and n not in buffers
                ]:
                    delattr(module, name)  # added since the record
                for name, value in params.items():
                    if module._parameters.get(name, _MISSING) is not value:
                        setattr(module, name, value)
                for name, value in buffers.items():
                    if module._buffers.get(name, _MISSING) is not value:
                        setattr(module, name, value)
        for module, training in self.training:
            module.training = training  # the flag itself: an overridden `train()` is not re-run
        for parameter, flag in self.requires_grad:
            if parameter.requires_grad != flag:
                parameter.requires_grad_(flag)


class ModelProbe:
    """Context manager: the model in eval mode under its lock, optionally capturing ``phi``.

    On entry it takes :func:`model_lock` ``(model)``, records a :class:`ModelState`, calls
    ``model.eval()`` and (with ``layer``) registers a forward pre-hook on ``layer``. On exit,
    also after an exception, it removes the hook, restores the state and releases the lock.
    Probes nest (the lock is re-entrant; each level restores what it recorded).

    Parameters
    ----------
    model : nn.Module
    layer : nn.Module, optional
        The layer whose input is captured (the final ``nn.Linear``); None captures nothing.
    stop : bool
        Raise :class:`FeaturesReached` from the hook once the input is captured (the forward
        pass ends at ``layer``; catch it around the model call, see :meth:`run`).
    prepend : bool
        Register the hook before every other pre-hook of ``layer`` (needed under a zennit
        composite, whose own pre-hook must not see the stopped pass).
    detach : bool
        Capture detached features (False keeps the autograd graph, for relevance passes).
    objects : bool
        Also restore Parameter and buffer objects (see :class:`ModelState`).
    argument : str
        The name the caller gave ``layer`` (for error messages).
    flatten : bool
        Flatten each captured input to ``(N, -1)``; False keeps its shape (e.g. ``(N, T, d)``
        for a head applied to every position).

    Attributes
    ----------
    captured : list of torch.Tensor
        Inputs of ``layer`` seen by this thread since entry (flattened to ``(N, d)`` unless
        ``flatten=False``).
    """

    def __init__(
        self,
        model: nn.Module,
        layer: Optional[nn.Module] = None,
        *,
        stop: bool = False,
        prepend: bool = False,
        detach: bool = True,
        objects: bool = False,
        argument: str = "final_fc_layer",
        flatten: bool = True,
    ) -> None:
        self.model = model
        self.layer = layer
        self.stop = stop
        self.prepend = prepend
        self.detach = detach
        self.objects = objects
        self.argument = argument
        self.flatten = flatten
        self.captured: List[torch.Tensor] = []
        self._lock = model_lock(model)
        self._state: Optional[ModelState] = None
        self._handle: Any = None
        self._thread: Optional[int] = None

    def _hook(self, module: nn.Module, args: Tuple[Any, ...]) -> None:
        if threading.get_ident() != self._thread:
            return  # another thread's forward pass through the same module: not ours
        value = args[0] if args else None
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"The input of `{self.argument}` is a {type(value).__name__}, expected a tensor.")
        value = value.detach() if self.detach else value
        if self.flatten:
            value = value.flatten(1) if value.ndim > 1 else value.reshape(value.shape[0], -1)
        self.captured.append(value)
        if self.stop:
            raise FeaturesReached

    def __enter__(self) -> ModelProbe:
        self._lock.acquire()
        try:
            self._thread = threading.get_ident()
            self._state = ModelState(self.model, objects=self.objects)
            self.captured = []
            self.model.eval()
            if self.layer is not None:
                self._handle = self.layer.register_forward_pre_hook(self._hook, prepend=self.prepend)
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        self._release()

    def _release(self) -> None:
        try:
            if self._handle is not None:
                self._handle.remove()
                self._handle = None
            if self._state is not None:
                self._state.restore()
                self._state = None
        finally:
            self._lock.release()

    def run(self, *inputs: Any, **kwargs: Any) -> Any:
        """Call ``model(*inputs, **kwargs)``; with ``stop``, swallow :class:`FeaturesReached`.

        Returns
        -------
        Any
            The model output (None when the pass was stopped at ``layer``).
        """
        try:
            return self.model(*inputs, **kwargs)
        except FeaturesReached:
            return None

    def features(self) -> torch.Tensor:
        """The input of ``layer`` in the one forward pass since the last call, ``(N, d)``; clears the list.

        Raises
        ------
        RuntimeError
            The forward pass never reached ``layer``.
        ValueError
            ``layer`` ran more than once in the pass (two views averaged, test-time augmentation,
            a head shared by several inputs): which call's input is ``phi`` is undefined.
        """
        if not self.captured:
            raise RuntimeError(
                f"The forward pass never reached `{self.argument}` ({self.layer}): it is not used by "
                "`model.forward`, so its input (the features) cannot be captured."
            )
        phi, calls = self.captured[0], len(self.captured)
        self.captured = []
        if calls > 1:
            raise ValueError(
                f"`{self.argument}` ({self._layer_name()}: {self.layer}) ran {calls} times in one forward pass of "
                "the model (e.g. two views averaged, test-time augmentation, or a head shared by several inputs): "
                "its input is no single feature vector per sample, and the logits are not one linear function of "
                "one of them. Pass a model whose forward calls this layer once (e.g. a wrapper that combines the "
                "views' features before the final layer, or that explains one view)."
            )
        return phi

    def _layer_name(self) -> str:
        """``layer``'s dotted name in the model, quoted (or its class name when not found)."""
        for name, module in self.model.named_modules():
            if module is self.layer:
                return f"`{name}`" if name else "the model itself"
        return type(self.layer).__name__
