"""Fingerprints of what a fit depends on, and atomic cache files.

A cached fit is reused only when its fingerprint (model weights, layer, training data, solver
settings) matches exactly; files are written to a temporary name in the same directory and
renamed into place, so an interrupted write never leaves a file that later loads.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import os
import tempfile
import types
import warnings
from collections.abc import Iterator, Mapping
from typing import Any, Dict, Iterable, Optional

import numpy as np
import torch
from filelock import FileLock, Timeout
from torch import nn
from tqdm import tqdm

from ..exceptions import UnreadableState

__all__ = ["Fingerprint", "atomic_save", "load_cache", "check_writable_dir", "entry_lock"]


_ATOMS = (
    type(None),
    bool,
    int,
    float,
    complex,
    str,
    bytes,
    torch.dtype,
    torch.device,
    torch.layout,
    torch.memory_format,
    np.generic,
    np.dtype,
    enum.Enum,
    slice,
    range,
)
"""Values whose ``repr`` shows all they hold (hashed by type name and ``repr``)."""

_MAX_DEPTH = 64
"""How deep :meth:`Fingerprint.update` follows objects inside objects before refusing."""


class Fingerprint:
    """Incremental SHA-256 over tensors, arrays, containers, numbers, strings and objects.

    Examples
    --------
    >>> fp = Fingerprint(); fp.update("C", 0.1); key = fp.hexdigest()
    """

    def __init__(self) -> None:
        self._hash = hashlib.sha256()

    def update(self, *values: Any) -> Fingerprint:
        """Mix values in, each by everything it holds.

        Tensors by dtype, shape and bytes; NumPy arrays likewise; lists, tuples and mappings
        element by element (mappings in key order), sets by their sorted elements' digests; numbers,
        strings and other values whose ``repr`` shows all they hold (``torch.dtype``, enums, ...) by
        type and ``repr``; classes and functions by qualified name. Any other object (a dataclass,
        a graph batch, a plain class holding tensors) by its class and the state Python's pickle
        protocol reads from it (``__reduce_ex__``: its ``__dict__`` and ``__slots__``, or the
        object's own reduction), followed recursively, so a tensor inside an object is hashed in
        full, never through an abbreviating ``repr``.

        Raises
        ------
        TypeError
            An object whose state cannot be read (a type neither listed above nor picklable, e.g.
            an open file or a C-extension handle), or objects nested deeper than 64 levels.
        """
        for value in values:
            try:
                self._mix(value, set(), 0)
            except UnreadableState as error:
                inside = "".join(f" inside a {owner}" for owner in error.owners)
                raise TypeError(
                    f"Cannot fingerprint an object of type {error.kind}{inside} in the data for the cache key: its "
                    f"state cannot be read ({error.reason}). A cache hit after the data changed would return a stale "
                    "fit, so this is refused: fit without `cache_dir`, or give the batches tensors, arrays, numbers, "
                    "strings, containers of these, or objects that can be pickled."
                ) from None
        return self

    def _mix(self, value: Any, path: set, depth: int) -> None:
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous()
            self._hash.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
            if tensor.dtype == torch.bfloat16:
                tensor = tensor.float()
            self._hash.update(tensor.numpy().tobytes() if tensor.numel() else b"")
            return
        if isinstance(value, np.ndarray) and value.dtype != object:
            self._hash.update(f"A{value.dtype}{value.shape}".encode())
            self._hash.update(np.ascontiguousarray(value).tobytes())
            return
        if isinstance(value, _ATOMS):
            self._hash.update(f"{type(value).__name__}:{value!r};".encode())
            return
        if isinstance(value, (type, types.FunctionType, types.BuiltinFunctionType, types.MethodType)):
            name = getattr(value, "__qualname__", getattr(value, "__name__", "?"))
            self._hash.update(f"G{getattr(value, '__module__', None)}.{name};".encode())
            return
        if id(value) in path:  # a reference cycle: the object is already being hashed above
            self._hash.update(b"cycle;")
            return
        if depth >= _MAX_DEPTH:
            raise TypeError(
                f"Cannot fingerprint the data for the cache key: objects nested more than {_MAX_DEPTH} levels "
                f"deep (reached a {type(value).__qualname__}). Fit without `cache_dir`, or give the batches a "
                "flatter structure."
            )
        path.add(id(value))
        try:
            self._mix_container(value, path, depth + 1)
        finally:
            path.discard(id(value))

    def _mix_container(self, value: Any, path: set, depth: int) -> None:
        if isinstance(value, np.ndarray):  # object arrays: element by element
            self._hash.update(f"O{value.shape}".encode())
            for item in value.flat:
                self._mix(item, path, depth)
        elif isinstance(value, (list, tuple)):
            self._hash.update(f"L{len(value)}".encode())
            for item in value:
                self._mix(item, path, depth)
        elif isinstance(value, Mapping):  # dicts and Hugging Face BatchEncodings
            self._hash.update(f"D{len(value)}".encode())
            for key in sorted(value, key=str):
                self._mix(str(key), path, depth)
                self._mix(value[key], path, depth)
        elif isinstance(value, (set, frozenset)):  # iteration order varies between processes
            digests = []
            for item in value:
                inner = Fingerprint()
                inner._mix(item, path, depth)
                digests.append(inner.hexdigest())
            self._hash.update(f"S{len(value)}:{','.join(sorted(digests))};".encode())
        else:
            self._mix_object(value, path, depth)

    def _mix_object(self, value: Any, path: set, depth: int) -> None:
        """An arbitrary object: its class and the state the pickle protocol reads from it."""
        kind = type(value)
        name = f"{kind.__module__}.{kind.__qualname__}"
        try:
            reduced = value.__reduce_ex__(4)
        except Exception as error:
            raise UnreadableState(name, str(error)) from None
        self._hash.update(f"R{name};".encode())
        if isinstance(reduced, str):  # a global object, pickled by its name
            self._hash.update(reduced.encode())
            return
        self._hash.update(f"L{len(reduced)}".encode())
        try:
            for part in reduced:
                if isinstance(part, Iterator):  # list and dict items of the reduction
                    part = list(part)
                self._mix(part, path, depth)
        except UnreadableState as error:
            error.owners.append(name)
            raise

    def update_module(self, model: nn.Module) -> Fingerprint:
        """Mix in the architecture and the whole state of ``model``.

        The architecture is each submodule's dotted name, class (module and qualified name)
        and ``extra_repr()`` (kernel sizes, strides, ...): a changed module tree with equal
        weights gives another fingerprint. The state is the ``state_dict()`` (parameters,
        persistent buffers, extra state), every non-persistent buffer (e.g. an input
        normalisation registered with ``persistent=False``), and each submodule's plain tensor,
        number and string attributes (a tensor kept without ``register_buffer``, a scale factor),
        apart from the ``training`` flag. Code inside ``forward`` that no module records cannot
        be seen.
        """
        for name, module in model.named_modules():
            kind = type(module)
            self.update(name, f"{kind.__module__}.{kind.__qualname__}", module.extra_repr())
        state = model.state_dict()
        for name, tensor in state.items():
            self.update(name, tensor)
        for name, buffer in model.named_buffers():
            if name not in state:
                self.update("buffer", name, buffer)
        for name, module in model.named_modules():
            for attribute, value in sorted(vars(module).items()):
                if attribute != "training" and isinstance(value, (torch.Tensor, *_ATOMS)):
                    self.update("attribute", name, attribute, value)
        return self

    def update_batches(self, batches: Iterable[Any]) -> Fingerprint:
        """Mix in every batch of a data iterable (inputs and labels)."""
        for batch in batches:
            self.update(batch)
        return self

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def check_writable_dir(path: str, argument: str) -> str:
    """Create ``path`` if needed and check it is a writable directory; return its absolute path."""
    path = os.path.abspath(os.fspath(path))
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise ValueError(f"`{argument}`={path!r} cannot be created: {error}.") from error
    if not os.path.isdir(path) or not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"`{argument}`={path!r} is not a writable directory.")
    return path


def atomic_save(obj: Dict[str, Any], path: str) -> None:
    """``torch.save`` to a temporary file in the same directory, fsync, then rename onto ``path``.

    On any error the temporary file is removed and ``path`` is untouched.
    """
    directory = os.path.dirname(os.path.abspath(path))
    handle, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=directory)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(obj, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def load_cache(path: str, fingerprint: str) -> Optional[Dict[str, Any]]:
    """Load a cache file if it exists, is readable and carries ``fingerprint``; else ``None``."""
    if not os.path.exists(path):
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unreadable file: refit and overwrite, never trust it
        warnings.warn(f"Ignoring unreadable DualDA cache {path!r} ({error}); refitting.", stacklevel=3)
        return None
    if not isinstance(state, dict) or state.get("fingerprint") != fingerprint:
        return None
    return state


@contextlib.contextmanager
def entry_lock(path: str, show_progress: bool = False) -> Iterator[None]:
    """Hold an inter-process lock on the cache entry ``path`` (the file ``path + ".lock"``).

    Processes that fit the same configuration into one directory (a job array, two notebooks)
    take turns: the first fits and publishes, the next find the entry and load it. The operating
    system releases the lock if its process dies. The lock file itself is empty and stays.

    Parameters
    ----------
    path : str
        The cache file the lock protects.
    show_progress : bool
        Say on the progress stream when another process holds the lock.
    """
    lock = FileLock(path + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if show_progress:
            tqdm.write(
                f"DualDA: another process is fitting this configuration ({os.path.basename(path)}); waiting for it."
            )
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
