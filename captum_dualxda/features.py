"""Feature layer lookup and penultimate-feature extraction.

DualDA and XDA both work on ``phi(x)``: the INPUT of the network's final ``nn.Linear``
(Captum's ``final_fc_layer`` convention), flattened to ``(N, d)``.
"""
from __future__ import annotations

import functools
import numbers
import os
import random
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn
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
from tqdm import tqdm

from .probe import ModelProbe
from .distributed import assemble_strided, gather_strided, rank_and_world_size, shard_indices, write_strided_rows

__all__ = [
    "resolve_linear_layer",
    "layer_name",
    "model_device",
    "as_dataloader",
    "split_batch",
    "iterate_batches",
    "batch_features",
    "batch_features_and_output",
    "extract_features",
    "shard_path",
    "all_finite",
    "dataset_items",
]

Batch = Union[Tuple[Any, ...], List[Any]]


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
        if not isinstance(batch_size, numbers.Integral) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"`batch_size` must be an integer >= 1, got {batch_size!r}.")
        loader = DataLoader(data, batch_size=int(batch_size), shuffle=False)
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


def split_batch(batch: Any, argument: str = "inputs") -> Tuple[Tuple[Any, ...], torch.Tensor]:
    """Split a Captum batch ``(x_1, ..., x_m, targets)`` into model inputs and targets.

    Returns
    -------
    inputs : tuple
        Everything but the last element, passed as ``model(*inputs)``.
    targets : torch.Tensor
        ``(N,)`` int64.
    """
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise ValueError(
            f"`{argument}` must be a tuple or list (x, ..., targets) whose last element holds the "
            f"classes to explain, got {type(batch).__name__}"
            + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
            + ". To explain the network's own predictions pass (x, model(x).argmax(1))."
        )
    targets = torch.as_tensor(batch[-1])
    if targets.ndim == 0:
        targets = targets.reshape(1)
    if torch.is_floating_point(targets) or targets.ndim != 1:
        raise ValueError(
            f"The last element of `{argument}` must be a 1-D tensor of integer class indices, "
            f"got dtype {targets.dtype} and shape {tuple(targets.shape)}."
        )
    return tuple(batch[:-1]), targets.long()


def iterate_batches(inputs: Union[Batch, DataLoader], argument: str = "inputs") -> Iterator[Any]:
    """Yield Captum batches from a single batch (tuple/list) or a DataLoader of batches."""
    if isinstance(inputs, DataLoader):
        yield from inputs
    else:
        split_batch(inputs, argument)  # validate before any work
        yield inputs


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


def _shard_loader(loader: DataLoader, rank: int, world_size: int) -> Tuple[DataLoader, int]:
    dataset = loader.dataset
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        raise ValueError(
            "`train_dataset` must be a map-style Dataset with a length for distributed feature "
            "extraction (an IterableDataset cannot be sharded deterministically)."
        )
    n = len(dataset)
    return _reordered(loader, 1, Subset(dataset, list(shard_indices(n, rank, world_size)))), n


def shard_path(out_path: str, rank: int) -> str:
    """Rank-local memory-map file of rank ``rank > 0`` next to ``out_path``: ``<stem>.rank<r>.npy``.

    Distinct per rank, so ranks never write the same file even when ``out_path`` lies on a
    filesystem they share.
    """
    root, ext = os.path.splitext(out_path)
    return f"{root}.rank{rank}{ext or '.npy'}"


def _feature_dtype(layer: nn.Linear) -> torch.dtype:
    """dtype extracted features are kept in: float64 for a float64 layer, float32 otherwise."""
    return torch.float64 if layer.weight.dtype == torch.float64 else torch.float32


def extract_features(
    model: nn.Module,
    layer: nn.Linear,
    loader: DataLoader,
    device: Optional[torch.device] = None,
    show_progress: bool = False,
    desc: str = "DualDA features",
    distributed: bool = False,
    out_path: Optional[str] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Features and labels of every batch of ``loader``, in loader order.

    Parameters
    ----------
    model : nn.Module
    layer : nn.Linear
    loader : DataLoader
        Yields batches ``(x_1, ..., x_m, labels)``, unshuffled.
    device : torch.device, optional
        Where to collect in-memory results (default: CPU).
    show_progress : bool
    desc : str
    distributed : bool
        Each rank ``r`` of the initialised process group (``W`` ranks) extracts the strided shard
        ``r, r + W, ...`` of ``loader.dataset`` (a map-style Dataset) and keeps it locally; rank
        0 then receives the other shards in bounded chunks
        (:func:`~captum_dualxda.distributed.assemble_strided`). No rank but 0 ever holds more
        than its own shard, and nothing is written to a file two ranks share. Collective: call
        it on every rank. A no-op without a process group.
    out_path : str, optional
        Write float32 features to a memory-mapped ``.npy`` file instead of holding them in
        memory (out-of-core). With ``distributed``, only rank 0 opens ``out_path`` (``(N, d)``,
        filled in original order); rank ``r > 0`` writes its shard to its own file
        :func:`shard_path` ``(out_path, r)`` next to it (in memory if its shard is empty). The
        directory need not be shared between ranks (node-local scratch works); the caller
        deletes the files.

    Returns
    -------
    features : torch.Tensor
        ``(N, d)`` float32 (float64 if the model computes in float64 and ``out_path`` is None);
        backed by the memory-mapped file when ``out_path`` is given. With ``distributed``,
        rank 0 gets all ``N`` rows (bitwise those of a single-process run); rank ``r > 0`` only
        its shard, ``(len(shard_indices(N, r, W)), d)``, whose row ``i`` is training sample
        ``r + i * W``.
    labels : torch.Tensor
        ``(N,)`` int64 on ``device``, all ``N`` labels on every rank.

    Raises
    ------
    ValueError
        ``distributed`` with an IterableDataset or a dataset without a length.
    """
    device = torch.device("cpu") if device is None else torch.device(device)
    rank, world = rank_and_world_size() if distributed else (0, 1)
    n_total: Optional[int] = None
    if world > 1:
        loader, n_total = _shard_loader(loader, rank, world)
    try:
        n_local: Optional[int] = len(loader.dataset)  # type: ignore[arg-type]
    except TypeError:
        n_local = None
    d = layer.in_features
    # Where this process's rows go: row i of its stream lands at target[i * step].
    # Single process: (N, d), in order. Distributed rank 0: the full (N, d) result, its own
    # rows at 0, W, 2W, ... (written in place, so it never holds its shard twice). Rank r > 0:
    # its shard only, in order. Out of core, rank r > 0 writes a rank-suffixed file rather than
    # keeping its shard in memory, so `memory_budget` holds on every rank (a shard is N / W of
    # the features, still 4 N d / W bytes) and no file is shared: the directory may be
    # node-local.
    step = world if rank == 0 else 1
    target: Optional[Union[torch.Tensor, np.ndarray]] = None
    target_path: Optional[str] = None
    if out_path is not None:
        rows_here = n_total if (world > 1 and rank == 0) else n_local
        if rows_here is None:
            rows_here = len(loader.dataset)  # type: ignore[arg-type]  (raises for unsized data)
        if rows_here > 0:
            target_path = out_path if rank == 0 else shard_path(out_path, rank)
            target = np.lib.format.open_memmap(target_path, mode="w+", dtype=np.float32, shape=(rows_here, d))
    rows_in_memory = n_total if (world > 1 and rank == 0) else n_local
    feats: List[torch.Tensor] = []
    labels: List[torch.Tensor] = []
    written = 0
    try:
        total = len(loader)
    except TypeError:
        total = None
    for batch in tqdm(loader, total=total, desc=desc, disable=not show_progress, leave=False):
        inputs, targets = split_batch(batch, "train_dataset")
        phi = batch_features(model, layer, inputs)
        if phi.dtype != torch.float64:
            phi = phi.float()
        if target is None and out_path is None and rows_in_memory is not None:
            # Known length: fill one preallocated tensor (peak 4nd bytes, not 8nd for list + cat).
            # Distributed, every rank uses the layer's dtype, so the assembled chunks agree.
            dtype = _feature_dtype(layer) if world > 1 else phi.dtype
            target = torch.empty((rows_in_memory, phi.shape[1]), dtype=dtype, device=device)
        if target is not None:
            write_strided_rows(target, written * step, step, phi)
        else:
            feats.append(phi.to(device))
        labels.append(targets.to(device))
        written += phi.shape[0]
    label_tensor = torch.cat(labels) if labels else torch.empty(0, dtype=torch.long, device=device)
    if world == 1:
        if isinstance(target, np.ndarray):
            target.flush()
            del target
            return torch.from_numpy(np.load(target_path, mmap_mode="r+")), label_tensor
        if target is not None:
            features = target[:written]
        elif feats:
            features = torch.cat(feats)
        else:
            features = torch.empty((0, d), device=device)
        return features, label_tensor
    label_tensor = gather_strided(label_tensor, n_total)  # type: ignore[arg-type]
    # Chunks travel in the dtype rank 0 assembles into: float32 out of core (`out_path` is given
    # on every rank or on none), the layer's dtype in memory.
    wire = torch.float32 if out_path is not None else _feature_dtype(layer)
    if target is None:  # an empty shard (more ranks than samples)
        target = torch.empty((0, d), dtype=wire, device=device)
    local = torch.from_numpy(target) if isinstance(target, np.ndarray) else target
    assemble_strided(None if rank == 0 else local.to(wire), n_total, out=target if rank == 0 else None)  # type: ignore[arg-type]
    if isinstance(target, np.ndarray):
        target.flush()
        del local, target
        return torch.from_numpy(np.load(target_path, mmap_mode="r+")), label_tensor
    return target, label_tensor


def dataset_items(data: Union[Dataset, DataLoader], indices: Sequence[int]) -> Tuple[Any, ...]:
    """Collate the samples ``data[j]`` for ``j`` in ``indices`` into one batch, labels dropped.

    Parameters
    ----------
    data : Dataset or DataLoader
        A DataLoader is read through its ``dataset`` (unshuffled order assumed).
    indices : sequence of int

    Returns
    -------
    tuple
        The stacked model inputs (every element of a sample but its last, the label).
    """
    dataset = data.dataset if isinstance(data, DataLoader) else data
    collate = data.collate_fn if isinstance(data, DataLoader) else default_collate
    batch = collate([dataset[int(j)] for j in indices])
    return tuple(batch[:-1])
