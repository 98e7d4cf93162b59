"""Training data in, batches out: every read of training data goes through here.

Index ``j`` of every result of this package addresses ``dataset[j]``, so training data is always
read in dataset order, each sample once, whatever loader the user passes (:func:`as_dataloader`).
A batch is Captum's tuple or list whose last element holds the labels or the classes to explain,
or Hugging Face's dict with them under ``"labels"`` (:func:`split_batch`).
"""
from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    Subset,
    SubsetRandomSampler,
    WeightedRandomSampler,
)
from torch.utils.data.dataloader import default_collate

from ._validation import check_integer
from .distributed import shard_indices

__all__ = ["as_dataloader", "split_batch", "iterate_batches", "dataset_items"]

Batch = Union[Tuple[Any, ...], List[Any], Mapping[str, Any]]
ModelInputs = Union[Tuple[Any, ...], Dict[str, Any]]
"""Positional model inputs ``model(*inputs)`` or keyword inputs ``model(**inputs)``."""


def _sampler_order(loader: DataLoader, n: int) -> Optional[str]:
    """Why ``loader`` cannot be read in dataset order, or None when it visits each sample once.

    Known samplers are judged by their attributes; any other sampler is iterated once (indices
    only, no data) with the global random states of ``random``, NumPy and torch restored.
    """
    batches = loader.batch_sampler
    # A BatchSampler is judged by the sampler it batches (a dropped last batch is undone anyway);
    # a custom batch sampler by the indices of all its batches.
    sampler = batches.sampler if isinstance(batches, BatchSampler) else (loader.sampler if batches is None else batches)
    if isinstance(sampler, (SequentialSampler, DistributedSampler)):
        return None
    if isinstance(sampler, RandomSampler):
        if sampler.replacement or sampler.num_samples != n:
            return f"its RandomSampler draws {sampler.num_samples} samples" + (" with replacement" if sampler.replacement else "")
        return None
    if isinstance(sampler, WeightedRandomSampler):
        return "its WeightedRandomSampler draws samples with weights and replacement"
    if isinstance(sampler, SubsetRandomSampler):
        indices = [int(i) for i in sampler.indices]
    else:
        python_state, numpy_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            try:
                indices = [int(i) for item in sampler for i in (item if isinstance(item, (list, tuple)) else [item])]
            except Exception as error:  # a sampler that cannot be iterated here
                return f"its sampler ({type(sampler).__name__}) could not be enumerated ({error})"
            finally:
                random.setstate(python_state)
                np.random.set_state(numpy_state)
    if len(indices) == n and sorted(indices) == list(range(n)):
        return None
    return (
        f"its {type(sampler).__name__} visits {len(set(indices))} distinct samples of the {n} in its "
        f"dataset ({len(indices)} draws)"
    )


def as_dataloader(data: Union[Dataset, DataLoader], batch_size: int, argument: str = "train_dataset") -> DataLoader:
    """A DataLoader that reads ``data`` in dataset order, every sample exactly once.

    Index ``j`` of every result of this package addresses ``dataset[j]``, so training data is
    always read in dataset order, whatever loader the user passes:

    - a Dataset: ``DataLoader(data, batch_size, shuffle=False)``;
    - a DataLoader over a map-style dataset whose sampler visits each sample once in any order
      (``shuffle=True``, ``RandomSampler``, ``DistributedSampler``, a custom permutation) or
      that drops its last batch (``drop_last=True``): a new DataLoader over the same dataset in
      dataset order with the loader's batch size (``batch_size`` if it has none),
      ``collate_fn``, ``num_workers``, ``pin_memory`` and worker settings. An unshuffled loader
      is used as is;
    - a DataLoader over an ``IterableDataset``: read in iteration order (it has no other order),
      without dropping a last partial batch.

    Parameters
    ----------
    data : Dataset or DataLoader
        Yields Captum batches ``(x_1, ..., x_m, label)``.
    batch_size : int
        Batch size for a Dataset (and for a loader built on a custom ``batch_sampler``).
    argument : str
        Argument name used in error messages.

    Returns
    -------
    DataLoader

    Raises
    ------
    ValueError
        ``batch_size < 1``, an empty dataset, or a loader whose sampler leaves samples out or
        draws some several times (``SubsetRandomSampler`` of a part, ``WeightedRandomSampler``,
        sampling with replacement): the model's training set is then not the loader's dataset.
    TypeError
        ``data`` is neither a Dataset nor a DataLoader.
    """
    if isinstance(data, DataLoader):
        loader = data
    elif isinstance(data, Dataset) or hasattr(data, "__getitem__"):
        loader = DataLoader(data, batch_size=check_integer(batch_size, "batch_size", low=1), shuffle=False)
    else:
        raise TypeError(f"`{argument}` must be a torch Dataset or DataLoader, got {type(data).__name__}.")
    dataset = loader.dataset
    try:
        size: Optional[int] = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        size = None
    if size == 0:
        raise ValueError(f"`{argument}` is empty.")
    if loader is data:
        iterable = isinstance(dataset, IterableDataset)
        if not iterable and size is not None:
            reason = _sampler_order(loader, size)
            if reason is not None:
                raise ValueError(
                    f"`{argument}` is a DataLoader, but {reason}: DualXDA needs every training sample "
                    "exactly once, and index j of every result addresses `dataset[j]`. Pass the dataset "
                    "the model was trained on (wrap a part of it in `torch.utils.data.Subset`), or a "
                    "DataLoader over it that visits each sample once."
                )
        batches = loader.batch_sampler
        sequential = isinstance(batches, BatchSampler) and isinstance(batches.sampler, SequentialSampler)
        if batches is None:
            sequential = isinstance(loader.sampler, SequentialSampler)
        if not (iterable or size is None or sequential) or getattr(batches, "drop_last", loader.drop_last):
            loader = _reordered(loader, batch_size)
    return loader


def _reordered(loader: DataLoader, batch_size: int, dataset: Optional[Dataset] = None) -> DataLoader:
    """``loader``'s collate function and worker settings over ``dataset`` (default: its own) in
    dataset order, no sample dropped; ``batch_size`` when the loader has no batch size."""
    options: Dict[str, Any] = dict(
        batch_size=loader.batch_size or getattr(loader.batch_sampler, "batch_size", None) or batch_size,
        shuffle=False,
        collate_fn=loader.collate_fn,
        num_workers=loader.num_workers,
        pin_memory=loader.pin_memory,
        drop_last=False,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context,
        persistent_workers=loader.persistent_workers,
    )
    if loader.num_workers > 0:
        options["prefetch_factor"] = loader.prefetch_factor
    return DataLoader(loader.dataset if dataset is None else dataset, **options)


LABEL_KEYS = ("labels", "label")
"""Keys under which a dict batch holds its labels (Hugging Face's convention), in this order."""


def split_batch(batch: Any, argument: str = "inputs") -> Tuple[ModelInputs, torch.Tensor]:
    """Split a batch into model inputs and the classes to explain (or the training labels).

    Two conventions: Captum's tuple or list ``(x_1, ..., x_m, targets)`` (labels last, the model
    is called as ``model(x_1, ..., x_m)``), and Hugging Face's dict (or ``BatchEncoding``) with
    the labels under ``"labels"`` (or ``"label"``) and everything else passed as
    ``model(**rest)``.

    Returns
    -------
    inputs : tuple or dict
        The model inputs (see :func:`~captum_dualxda.features.call_model`).
    targets : torch.Tensor
        ``(N,)`` int64.

    Raises
    ------
    ValueError
        Neither form, no labels, or labels that are not 1-D integers.
    """
    if isinstance(batch, Mapping):
        key = next((k for k in LABEL_KEYS if k in batch), None)
        if key is None:
            raise ValueError(
                f"`{argument}` is a dict without a 'labels' (or 'label') entry: put the classes to explain "
                f"there (got keys {sorted(batch)}). To explain the model's own predictions pass its argmax."
            )
        inputs: ModelInputs = {k: v for k, v in batch.items() if k not in LABEL_KEYS}
        where = f"`{argument}['{key}']`"
        raw = batch[key]
    elif isinstance(batch, (tuple, list)) and len(batch) >= 2:
        inputs, where, raw = tuple(batch[:-1]), f"The last element of `{argument}`", batch[-1]
    else:
        raise ValueError(
            f"`{argument}` must be a tuple or list (x, ..., targets) whose last element holds the "
            f"classes to explain, or a dict with them under 'labels', got {type(batch).__name__}"
            + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
            + ". To explain the network's own predictions pass (x, model(x).argmax(1))."
        )
    targets = torch.as_tensor(raw)
    if targets.ndim == 0:
        targets = targets.reshape(1)
    if torch.is_floating_point(targets) or targets.ndim != 1:
        raise ValueError(
            f"{where} must be a 1-D tensor of integer class indices, got dtype {targets.dtype} and shape "
            f"{tuple(targets.shape)}."
        )
    return inputs, targets.long()


def iterate_batches(inputs: Union[Batch, DataLoader], argument: str = "inputs") -> Iterator[Any]:
    """Yield Captum batches from a single batch (tuple/list) or a DataLoader of batches."""
    if isinstance(inputs, DataLoader):
        yield from inputs
    else:
        split_batch(inputs, argument)  # validate before any work
        yield inputs


def shard_loader(loader: DataLoader, rank: int, world_size: int) -> Tuple[DataLoader, int]:
    """Rank ``rank``'s strided shard ``rank, rank + W, ...`` of ``loader``'s dataset, and the dataset's size.

    Raises
    ------
    ValueError
        An IterableDataset, or a dataset without a length.
    """
    dataset = loader.dataset
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        raise ValueError(
            "`train_dataset` must be a map-style Dataset with a length for distributed feature "
            "extraction (an IterableDataset cannot be sharded deterministically)."
        )
    n = len(dataset)
    return _reordered(loader, 1, Subset(dataset, list(shard_indices(n, rank, world_size)))), n


def dataset_items(data: Union[Dataset, DataLoader], indices: Sequence[int]) -> ModelInputs:
    """Collate the samples ``data[j]`` for ``j`` in ``indices`` into one batch, labels dropped.

    Parameters
    ----------
    data : Dataset or DataLoader
        A DataLoader is read through its ``dataset`` (unshuffled order assumed).
    indices : sequence of int

    Returns
    -------
    tuple or dict
        The model inputs of the batch (:func:`split_batch` without the labels).
    """
    dataset = data.dataset if isinstance(data, DataLoader) else data
    collate = data.collate_fn if isinstance(data, DataLoader) else default_collate
    batch = collate([dataset[int(j)] for j in indices])
    return split_batch(batch, "train_dataset")[0]
