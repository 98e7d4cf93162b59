"""Fingerprints of what a fit depends on, and atomic cache files.

A cached fit is reused only when its fingerprint (model weights, layer, training data, solver
settings) matches exactly; files are written to a temporary name in the same directory and
renamed into place, so an interrupted write never leaves a file that later loads.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Mapping
import tempfile
import warnings
from typing import Any, Dict, Iterable, Iterator, Optional

import numpy as np
import torch
from filelock import FileLock, Timeout
from torch import nn
from tqdm import tqdm

__all__ = ["Fingerprint", "atomic_save", "load_cache", "check_writable_dir", "entry_lock"]


class Fingerprint:
    """Incremental SHA-256 over tensors, numbers and strings.

    Examples
    --------
    >>> fp = Fingerprint(); fp.update("C", 0.1); key = fp.hexdigest()
    """

    def __init__(self) -> None:
        self._hash = hashlib.sha256()

    def update(self, *values: Any) -> "Fingerprint":
        """Mix values in: tensors by dtype, shape and bytes; containers element-wise; else ``repr``."""
        for value in values:
            if isinstance(value, torch.Tensor):
                tensor = value.detach().cpu().contiguous()
                self._hash.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
                if tensor.dtype == torch.bfloat16:
                    tensor = tensor.float()
                self._hash.update(tensor.numpy().tobytes() if tensor.numel() else b"")
            elif isinstance(value, np.ndarray):
                self._hash.update(f"A{value.dtype}{value.shape}".encode())
                self._hash.update(np.ascontiguousarray(value).tobytes())
            elif isinstance(value, (list, tuple)):
                self._hash.update(f"L{len(value)}".encode())
                self.update(*value)
            elif isinstance(value, Mapping):  # dicts and Hugging Face BatchEncodings
                self._hash.update(f"D{len(value)}".encode())
                for key in sorted(value, key=str):
                    self.update(str(key), value[key])
            else:
                self._hash.update(f"{type(value).__name__}:{value!r};".encode())
        return self

    def update_module(self, model: nn.Module) -> "Fingerprint":
        """Mix in the architecture and every parameter and buffer of ``model``.

        The architecture is each submodule's dotted name, class (module and qualified name)
        and ``extra_repr()`` (kernel sizes, strides, ...): a changed module tree with equal
        weights gives another fingerprint. Code inside ``forward`` that no module records
        cannot be seen.
        """
        for name, module in model.named_modules():
            kind = type(module)
            self.update(name, f"{kind.__module__}.{kind.__qualname__}", module.extra_repr())
        for name, tensor in model.state_dict().items():
            self.update(name, tensor)
        return self

    def update_batches(self, batches: Iterable[Any]) -> "Fingerprint":
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
        try:
            os.unlink(tmp)
        except OSError:
            pass
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
            tqdm.write(f"DualDA: another process is fitting this configuration ({os.path.basename(path)}); waiting for it.")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
