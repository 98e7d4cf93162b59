"""Training data in, batches out: every read of training data goes through here.

Index ``j`` of every result of this package addresses ``dataset[j]``, so training data is always
read in dataset order, each sample once, whatever loader the user passes (:func:`as_dataloader`).
A batch is Captum's tuple or list whose last element holds the labels or the classes to explain,
or Hugging Face's dict with them under ``"labels"`` (:func:`split_batch`).
"""

from __future__ import annotations

import copy
import copyreg
import numbers
import random
from collections.abc import Mapping
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
    Subset,
    SubsetRandomSampler,
    TensorDataset,
    WeightedRandomSampler,
)
from torch.utils.data.dataloader import default_collate

from .._utils.inputs import LABEL_KEYS, ModelInputs, input_batches
from .._utils.validation import check_integer
from .distributed import shard_indices

__all__ = [
    "as_dataloader",
    "split_batch",
    "iterate_batches",
    "loader_batches",
    "dataset_items",
    "CheckedCollate",
    "model_input_batches",
    "shard_loader",
]

Batch = Union[Tuple[Any, ...], List[Any], Mapping[str, Any]]


_RANDOM_STATES = (torch.Generator, np.random.Generator, np.random.RandomState, random.Random)
"""Random generators a sampler may own: copied before it is enumerated, so theirs never advance."""


def _copy_generator(generator: Any) -> Any:
    """An independent generator in the same state as ``generator``."""
    try:
        return copy.deepcopy(generator)
    except Exception:  # a torch.Generator that cannot be deep-copied (an accelerator's)
        clone = torch.Generator(device=generator.device)
        clone.set_state(generator.get_state())
        return clone


def _private_copy(sampler: Any, depth: int = 2) -> Any:
    """A copy of ``sampler`` that can be iterated without changing ``sampler``.

    A shallow copy whose own attributes that iteration may change are copies too: its random
    generators (torch, NumPy, ``random``), lists, dicts, sets, integer index arrays and tensors,
    and the samplers it wraps (``depth`` levels), in its ``__dict__`` or its slots. Attributes
    rebound by ``__iter__`` (an epoch counter) change the copy only. State kept elsewhere (a
    closure, a global, an object of another kind held by the sampler) is shared. ``sampler``
    itself when it cannot be copied (a generator object, which can be iterated only once anyway).
    """
    try:
        clone = copy.copy(sampler)
    except Exception:
        return sampler
    if clone is sampler:
        return clone
    slots = copyreg._slotnames(type(clone))  # type: ignore[attr-defined]
    names = list(getattr(clone, "__dict__", {})) + [n for n in slots if hasattr(clone, n)]
    for name in names:
        value = getattr(clone, name)
        if isinstance(value, _RANDOM_STATES):
            value = _copy_generator(value)
        elif isinstance(value, (list, dict, set)):
            value = copy.copy(value)
        elif isinstance(value, np.ndarray) and value.dtype.kind in "iub":
            value = value.copy()
        elif isinstance(value, torch.Tensor) and not (value.is_floating_point() or value.is_complex()):
            value = value.clone()
        elif depth > 0 and isinstance(value, Sampler):
            value = _private_copy(value, depth - 1)
        else:
            continue
        try:
            object.__setattr__(clone, name, value)
        except Exception:  # a read-only attribute: the sampler is enumerated as it is
            return sampler
    return clone


def _drawn_indices(item: Any) -> List[int]:
    """The dataset indices in one item of a sampler (an index) or a batch sampler (a batch of them)."""
    if isinstance(item, (torch.Tensor, np.ndarray)):
        return [int(i) for i in item.reshape(-1).tolist()]
    if isinstance(item, (list, tuple, range)):
        return [int(i) for i in item]
    return [int(item)]


def _sampler_order(loader: DataLoader, n: int) -> Optional[str]:
    """Why ``loader`` cannot be read in dataset order, or None when it visits each sample once.

    Known samplers are judged by their attributes; any other sampler (or batch sampler) is
    iterated once, indices only, no data: a private copy of it (:func:`_private_copy`), so its
    own generators, lists and counters are left as they were (the user's next epoch draws the
    order it would have drawn), with the global random states of ``random``, NumPy and torch
    (and CUDA's, once initialised) restored.
    """
    batches = loader.batch_sampler
    # A BatchSampler is judged by the sampler it batches (a dropped last batch is undone anyway);
    # a custom batch sampler by the indices of all its batches.
    sampler = batches.sampler if isinstance(batches, BatchSampler) else (loader.sampler if batches is None else batches)
    if isinstance(sampler, (SequentialSampler, DistributedSampler)):
        return None
    if isinstance(sampler, RandomSampler):
        if sampler.replacement or sampler.num_samples != n:
            return f"its RandomSampler draws {sampler.num_samples} samples" + (
                " with replacement" if sampler.replacement else ""
            )
        return None
    if isinstance(sampler, WeightedRandomSampler):
        return "its WeightedRandomSampler draws samples with weights and replacement"
    if isinstance(sampler, SubsetRandomSampler):
        indices = [int(i) for i in sampler.indices]
    else:
        python_state, numpy_state = random.getstate(), np.random.get_state()
        accelerators = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
        with torch.random.fork_rng(devices=accelerators):
            try:
                indices = [i for item in _private_copy(sampler) for i in _drawn_indices(item)]
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
    - a DataLoader over a map-style dataset whose sampler visits each sample once, in order or
      in any other (``shuffle=True``, ``RandomSampler``, ``DistributedSampler``, a custom
      permutation), or that drops its last batch (``drop_last=True``): a new DataLoader over
      the same dataset in dataset order with the loader's batch size (``batch_size`` if it has
      none), ``collate_fn``, ``num_workers``, ``pin_memory`` and worker settings. A custom
      sampler is enumerated once to check it, through a private copy: the loader, its sampler
      and their random generators are left as they were;
    - a DataLoader over an ``IterableDataset``: used as is, read in iteration order (it has no
      other order).

    Over a map-style dataset the ``collate_fn`` is checked on every batch it makes
    (:class:`CheckedCollate`): one row per dataset item, in order, with the item's label. A
    ``TensorDataset`` with ``default_collate`` is read a whole batch at a time instead
    (:func:`loader_batches`), which makes the same batches with nothing to check.

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
        ``batch_size < 1``, an empty dataset, a loader whose sampler leaves samples out or
        draws some several times (``SubsetRandomSampler`` of a part, ``WeightedRandomSampler``,
        sampling with replacement): the model's training set is then not the loader's dataset;
        or a loader with ``batch_size=None`` over a map-style dataset (it yields the dataset's
        items unbatched, e.g. a dataset of ready-made batches).
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
    if isinstance(dataset, IterableDataset) or size is None:
        return loader
    if loader is data:
        if loader.batch_sampler is None:
            raise _unbatched(loader, argument)
        reason = _sampler_order(loader, size)
        if reason is not None:
            raise ValueError(
                f"`{argument}` is a DataLoader, but {reason}: DualXDA needs every training sample "
                "exactly once, and index j of every result addresses `dataset[j]`. Pass the dataset "
                "the model was trained on (wrap a part of it in `torch.utils.data.Subset`), or a "
                "DataLoader over it that visits each sample once."
            )
    return _reordered(loader, batch_size, argument=argument)


def _unbatched(loader: DataLoader, argument: str) -> ValueError:
    """The error for a loader over a map-style dataset with ``batch_size=None`` (saying what item 0 holds)."""
    found = ""
    try:
        rows = split_batch(loader.collate_fn(loader.dataset[0]), argument)[1].numel()
        found = f" (its item 0 holds {rows} sample{'' if rows == 1 else 's'})"
    except Exception:  # an item that is not a batch: the message stands without it
        pass
    return ValueError(
        f"`{argument}` is a DataLoader with batch_size=None: it yields each item of its dataset as it is, without "
        f"batching{found}. DualXDA needs one training sample per dataset item (index j of every result "
        "addresses `dataset[j]`): pass a Dataset of single samples and `batch_size`, or a DataLoader with a batch "
        "size over such a Dataset."
    )


def _reordered(
    loader: DataLoader, batch_size: int, dataset: Optional[Dataset] = None, argument: str = "train_dataset"
) -> DataLoader:
    """``loader``'s collate function (checked, :class:`CheckedCollate`) and worker settings over
    ``dataset`` (default: its own) in dataset order, no sample dropped; ``batch_size`` when the
    loader has no batch size."""
    options: Dict[str, Any] = dict(
        batch_size=loader.batch_size or getattr(loader.batch_sampler, "batch_size", None) or batch_size,
        shuffle=False,
        collate_fn=CheckedCollate.wrap(loader.collate_fn, argument),
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


def split_batch(batch: Any, argument: str = "inputs") -> Tuple[ModelInputs, torch.Tensor]:
    """Split a batch into model inputs and the classes to explain (or the training labels).

    Two conventions: Captum's tuple or list ``(x_1, ..., x_m, targets)`` (labels last, the model
    is called as ``model(x_1, ..., x_m)``), and Hugging Face's dict (or ``BatchEncoding``) with
    the labels under ``"labels"`` (or ``"label"``) and everything else passed as
    ``model(**rest)``.

    Returns
    -------
    inputs : tuple or dict
        The model inputs (see :func:`~captum_dualxda._utils.inputs.call_model`).
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


class CheckedCollate:
    """A loader's ``collate_fn`` that refuses batches that are not its dataset items, in order.

    Index ``j`` of every result addresses ``dataset[j]``, so the batch a ``collate_fn`` makes
    from the items ``dataset[s], ..., dataset[s + m - 1]`` must hold them as its rows ``0..m-1``.
    Each batch is checked against the items it was made from (in the worker that collates it,
    before the model sees it), by :func:`check_batch`: a ``collate_fn`` that drops samples
    (``default_collate([s for s in batch if s is not None])``), adds samples, or reorders them
    (sorts a batch by length) is refused with a ``ValueError``, never silently permuted.

    Parameters
    ----------
    collate_fn : callable
        The loader's own ``collate_fn`` (list of items -> batch); called unchanged.
    argument : str
        Argument name used in error messages.
    """

    def __init__(self, collate_fn: Callable[[List[Any]], Any], argument: str = "train_dataset") -> None:
        self.collate_fn = collate_fn
        self.argument = argument

    @classmethod
    def wrap(cls, collate_fn: Callable[[List[Any]], Any], argument: str = "train_dataset") -> CheckedCollate:
        """``collate_fn`` checked (itself when it already is a :class:`CheckedCollate`)."""
        return collate_fn if isinstance(collate_fn, cls) else cls(collate_fn, argument)

    def __call__(self, items: List[Any]) -> Any:
        batch = self.collate_fn(items)
        check_batch(items, batch, self.argument)
        return batch


def _raw_label(item: Any) -> Any:
    """What one dataset item holds as its label: Captum's last element, or a dict's ``"labels"`` /
    ``"label"``; None for an item without one."""
    if isinstance(item, (tuple, list)):
        return item[-1] if len(item) >= 2 else None
    if isinstance(item, Mapping):
        return next((item[k] for k in LABEL_KEYS if k in item), None)
    return None


def _item_labels(items: List[Any]) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(positions, labels)``: the items that carry an integer label, and their labels (int64)."""
    raws = [_raw_label(item) for item in items]
    if all(isinstance(raw, torch.Tensor) and raw.ndim == 0 for raw in raws):  # a TensorDataset's items
        stacked = torch.stack(raws).cpu()
        if not (stacked.is_floating_point() or stacked.is_complex()):
            return torch.arange(len(items)), stacked.long()
    known = []
    for i, raw in enumerate(raws):
        if isinstance(raw, torch.Tensor):
            raw = raw.item() if raw.numel() == 1 else None
        elif isinstance(raw, np.ndarray):
            raw = raw.reshape(-1)[0] if raw.size == 1 else None
        if isinstance(raw, (int, np.integer)):
            known.append((i, int(raw)))
    return torch.tensor([i for i, _ in known], dtype=torch.long), torch.tensor([y for _, y in known], dtype=torch.long)


def _input_columns(items: List[Any], inputs: ModelInputs) -> Iterator[Tuple[Any, Any, List[Any]]]:
    """``(name, batch value, the items' values)`` for every model input found in both the batch
    and each item: by position for Captum tuples, by key for dicts."""
    if isinstance(inputs, Mapping):
        if all(isinstance(item, Mapping) for item in items):
            for key, value in inputs.items():
                if all(key in item for item in items):
                    yield key, value, [item[key] for item in items]
    elif all(isinstance(item, (tuple, list)) and len(item) == len(inputs) + 1 for item in items):
        for position, value in enumerate(inputs):
            yield position, value, [item[position] for item in items]


_COMPARED = 128
"""Values compared per row and item of an input (spread over the row), so the input check costs a
small fraction of a forward pass (benchmarks/README.md, *Numbers behind the docstrings*)."""

_LIST_ENDS = 64
"""Values compared at each end of a sequence that an item holds as a Python list (token ids)."""

_Way = Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor], torch.Tensor]


def _ends(value: Any, dtype: torch.dtype, w: int) -> Optional[Tuple[int, torch.Tensor, torch.Tensor]]:
    """``(length, first values, last values)`` (at most ``w`` each) of a 1-D sequence: a tensor, an
    array or a flat list; None for anything else. A list is converted only at its ends."""
    if isinstance(value, (list, tuple)):
        if value and not isinstance(value[0], numbers.Number):
            return None
        n = len(value)
        k = min(n, w)
        return n, torch.as_tensor(value[:k], dtype=dtype), torch.as_tensor(value[n - k :], dtype=dtype)
    sequence = torch.as_tensor(value)
    if sequence.ndim != 1:
        return None
    n = sequence.shape[0]
    k = min(n, w)
    return n, sequence[:k].detach().cpu().to(dtype), sequence[n - k :].detach().cpu().to(dtype)


def _ways(column: Any, values: List[Any]) -> Optional[List[_Way]]:
    """How a row of a batch's input ``column`` may hold an item's value, as ``(rows, items, valid, possible)``.

    Row ``i`` holds item ``j``'s value in one such way when ``possible[j]`` and ``rows[i]``
    equals ``items[j]`` wherever ``valid[j]`` (``rows``, ``items``, ``valid``: ``(m, w)``; ``valid`` None: everywhere;
    ``possible``: ``(m,)``). The ways are those of a ``collate_fn`` that passes the values
    through: stacked in any shape with the same number of values (compared at up to
    :data:`_COMPARED` positions spread over the row), or 1-D sequences padded on the right or
    on the left (the item's first, respectively last, values; :data:`_LIST_ENDS` of them for
    Python lists). None where none applies (values that are not numbers, other shapes).
    """
    m = len(values)
    if not isinstance(column, torch.Tensor) or column.ndim == 0 or column.shape[0] != m:
        return None
    dtype = column.dtype
    flat = column.detach().reshape(m, -1)
    width = flat.shape[1]
    if width == 0:
        return None
    if not any(isinstance(value, (list, tuple)) for value in values):
        try:
            items = [
                value if isinstance(value, torch.Tensor) and value.dtype == dtype else torch.as_tensor(value).to(dtype)
                for value in values
            ]
        except Exception:  # strings, images: nothing to compare
            return None
        if all(item.numel() == width for item in items):
            step = -(-width // _COMPARED)  # every step-th value: at most _COMPARED of them, spread over the row
            picked = flat[:, ::step].cpu().contiguous()
            if all(item.shape == items[0].shape for item in items):  # one copy of all, as the collate made
                wanted = torch.stack(items).detach().reshape(m, -1)[:, ::step].cpu()
            else:
                wanted = torch.stack([item.detach().reshape(-1)[::step].cpu() for item in items])
            return [(picked, wanted, None, torch.ones(m, dtype=torch.bool))]  # valid everywhere
        window = _COMPARED
    else:
        window = _LIST_ENDS
    if column.ndim != 2:
        return None
    w = min(width, window)
    try:
        ends = [_ends(value, dtype, w) for value in values]
    except Exception:  # ragged or non-numeric lists
        return None
    if any(end is None or end[0] == 0 for end in ends):
        return None
    rows = flat.cpu()
    lead = torch.zeros(m, w, dtype=dtype)  # each item's first values, left-aligned
    trail = torch.zeros(m, w, dtype=dtype)  # each item's last values, right-aligned
    lead_valid = torch.zeros(m, w, dtype=torch.bool)
    trail_valid = torch.zeros(m, w, dtype=torch.bool)
    for j, (_, first, last) in enumerate(ends):  # type: ignore[misc]
        k = first.shape[0]
        lead[j, :k], lead_valid[j, :k] = first, True
        trail[j, w - k :], trail_valid[j, w - k :] = last, True
    fits = torch.tensor([end[0] <= width for end in ends])  # type: ignore[index]  # left padding keeps whole items
    right = (rows[:, :w], lead, lead_valid, torch.ones(m, dtype=torch.bool))
    return [right, (rows[:, width - w :], trail, trail_valid, fits)]


def _holds(ways: List[_Way], row: Optional[int] = None) -> torch.Tensor:
    """``(m,)`` bool: whether row ``i`` holds item ``i`` (``row`` None), or whether row ``row`` holds item ``j``."""
    held = torch.zeros(ways[0][1].shape[0], dtype=torch.bool)
    for rows, items, valid, possible in ways:
        seen = rows if row is None else rows[row][None]
        if valid is None and row is None and torch.equal(seen, items):  # the common case: every row its own item
            held |= possible
            continue
        same = seen == items
        if valid is not None:
            same |= ~valid
        held |= same.all(-1) & possible
    return held


def check_batch(items: List[Any], batch: Any, argument: str = "train_dataset") -> None:
    """Refuse a batch that does not hold ``items`` as its rows, in order.

    Checked, each cheaply: the batch has one row per item (its labels count them); every row's
    label is its item's label (all labels that the items carry as integers); and every model
    input that the ``collate_fn`` passes through (stacked, or 1-D sequences padded on either
    side) is not a reordering of the items' values: when every row of such an input equals the
    value of some item, each must equal its own item's. So a ``collate_fn`` that drops, adds or
    reorders samples is refused, also where their labels are equal. Inputs are compared at up
    to :data:`_COMPARED` values spread over each row (:data:`_LIST_ENDS` at each end of a
    sequence given as a Python list), so items that agree there count as equal. Not
    detectable: a ``collate_fn`` that transforms the inputs and swaps only samples with equal
    labels.

    Parameters
    ----------
    items : list
        The dataset items the batch was made from, in dataset order.
    batch : Any
        What the ``collate_fn`` returned; batches :func:`split_batch` cannot read are left to
        the caller, which refuses them with its own message.
    argument : str
        Argument name used in error messages.

    Raises
    ------
    ValueError
        Another number of rows, labels out of order (or changed), or rows of an input that are
        the items' values in another order.
    """
    try:
        inputs, labels = split_batch(batch, argument)
    except ValueError:
        return
    m = len(items)
    fix = (
        "Index j of every result addresses `dataset[j]`, so the collate_fn must turn every item into one row, "
        "in order, with its label: leave unreadable samples out of the dataset itself (e.g. "
        "`torch.utils.data.Subset(dataset, readable_indices)`), and sort or pack inside the model, not the collate_fn."
    )
    if labels.numel() != m:
        raise ValueError(
            f"The collate_fn of `{argument}` made a batch of {labels.numel()} samples from {m} dataset items: it "
            f"{'drops' if labels.numel() < m else 'adds'} samples (e.g. skips unreadable ones). {fix}"
        )
    rows, expected = _item_labels(items)
    if rows.numel():
        found = labels.cpu()[rows]
        wrong = (found != expected).nonzero().flatten()
        if wrong.numel():
            first = int(wrong[0])
            row, shown = int(rows[first]), slice(max(0, first - 2), first + 6)
            raise ValueError(
                f"The collate_fn of `{argument}` returned the label {int(found[first])} at row {row} of a batch whose "
                f"item {row} has the label {int(expected[first])} (from row {int(rows[shown][0])}: labels "
                f"{found[shown].tolist()}, the items' {expected[shown].tolist()}): it reorders samples (e.g. sorts a "
                f"batch by length) or changes their labels. {fix}"
            )
    for name, column, values in _input_columns(items, inputs):
        try:
            ways = _ways(column, values)
            if ways is None:
                continue
            moved = (~_holds(ways)).nonzero().flatten().tolist()
            sources = []
            for row in moved:  # a reordering when every such row holds another item's value
                held = _holds(ways, row).nonzero().flatten()
                if held.numel() == 0:
                    break  # the collate_fn changes this input: nothing to conclude from it
                sources.append(int(held[0]))
        except (RuntimeError, TypeError):  # values on several devices, or of sizes that do not stack
            continue
        if moved and len(sources) == len(moved):
            where = f"`{name}`" if isinstance(name, str) else f"element {name}"
            raise ValueError(
                f"The collate_fn of `{argument}` reorders samples: row {moved[0]} of a batch holds the model input "
                f"({where}) of its item {sources[0]}, not of item {moved[0]} (e.g. it sorts a batch by length). {fix}"
            )


def _sliced_batches(loader: DataLoader) -> Optional[Tuple[TensorDataset, int]]:
    """``(dataset, batch size)`` where ``loader``'s batches are consecutive slices of a ``TensorDataset``.

    That is a loader in one process (``num_workers=0``, no ``pin_memory``) over a
    ``TensorDataset`` of plain strided tensors (its own ``__getitem__`` and ``__len__``, no
    ``__getitems__``: a subclass that transforms its items is read item by item), whose batch
    sampler is a ``BatchSampler`` over a ``SequentialSampler`` of that dataset keeping its last
    batch, and whose ``collate_fn`` is ``default_collate`` (checked by :class:`CheckedCollate`
    or not). Its batch ``b`` is then ``default_collate([dataset[i] for i in range(b B, (b + 1) B)])``:
    a list of the stacked rows of each tensor, which is the slice of each tensor, copied. None
    otherwise.
    """
    dataset = loader.dataset
    kind = type(dataset)
    if not (
        isinstance(dataset, TensorDataset)
        and kind.__getitem__ is TensorDataset.__getitem__
        and getattr(kind, "__len__", None) is TensorDataset.__len__
        and getattr(kind, "__getitems__", None) is None
        and getattr(dataset, "__getitems__", None) is None
        and len(dataset.tensors) > 0
        and all(type(tensor) is torch.Tensor and tensor.layout == torch.strided for tensor in dataset.tensors)
    ):
        return None
    if loader.num_workers != 0 or loader.pin_memory:
        return None
    collate = loader.collate_fn
    if isinstance(collate, CheckedCollate):
        collate = collate.collate_fn
    if collate is not default_collate:
        return None
    batches = loader.batch_sampler
    if type(batches) is not BatchSampler or batches.drop_last:
        return None
    sampler = batches.sampler
    if type(sampler) is not SequentialSampler or sampler.data_source is not dataset:
        return None
    size = batches.batch_size
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        return None
    return dataset, size


def loader_batches(loader: DataLoader) -> Iterator[Any]:
    """The batches of ``loader``, as iterating it yields them, fetched whole where possible.

    A loader over a ``TensorDataset`` read in order by ``default_collate`` (:func:`_sliced_batches`)
    yields each batch as one copy of a slice of every tensor, which is bitwise what the
    DataLoader makes from the items one by one (and what :class:`CheckedCollate` would accept
    without comparing them): the item-by-item fetch and the collate check were most of what a
    fit's extraction cost above a plain forward pass on MNIST (benchmarks/README.md, *Numbers
    behind the docstrings*). Any other loader is iterated as it is. The loader, its dataset and
    sampler are only read, and no random generator is drawn from.

    Parameters
    ----------
    loader : DataLoader

    Yields
    ------
    Any
        The batches; for a ``TensorDataset``, lists of ``(m, ...)`` tensors on the dataset's
        devices, in its dtypes, contiguous, sharing no memory with it.
    """
    plan = _sliced_batches(loader)
    if plan is None:
        yield from loader
        return
    dataset, size = plan
    n = len(dataset)
    for start in range(0, n, size):
        yield [tensor[start : start + size].clone(memory_format=torch.contiguous_format) for tensor in dataset.tensors]


def iterate_batches(inputs: Union[Batch, DataLoader], argument: str = "inputs") -> Iterator[Any]:
    """Yield Captum batches from a single batch (tuple/list) or a DataLoader of batches (:func:`loader_batches`)."""
    if isinstance(inputs, DataLoader):
        yield from loader_batches(inputs)
    else:
        split_batch(inputs, argument)  # validate before any work
        yield inputs


def model_input_batches(inputs: Any, batch_size: int, argument: str = "inputs") -> Iterator[ModelInputs]:
    """Batches of model inputs (labels dropped) from a Tensor, a tuple or dict of model inputs
    (:func:`~captum_dualxda._utils.inputs.input_batches`), or a DataLoader of Captum batches."""
    if isinstance(inputs, DataLoader):
        for batch in loader_batches(inputs):
            yield split_batch(batch, argument)[0]
        return
    yield from input_batches(inputs, batch_size, argument)


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

    Raises
    ------
    ValueError
        An ``IterableDataset``: a stream has no samples by index.
    """
    dataset = data.dataset if isinstance(data, DataLoader) else data
    if isinstance(dataset, IterableDataset):
        raise ValueError(
            "`train_dataset` is an IterableDataset (a stream): its samples cannot be read by index, so training "
            "sample j cannot be fetched (`train_inputs`, the training side of XDA and `xda_pairs`). Fit DualDA on a "
            "map-style Dataset (with `__getitem__` and `__len__`) to show training samples."
        )
    collate = data.collate_fn if isinstance(data, DataLoader) else default_collate
    batch = collate([dataset[int(j)] for j in indices])
    return split_batch(batch, "train_dataset")[0]
