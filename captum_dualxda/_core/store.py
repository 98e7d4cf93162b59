"""The feature store: the training features ``phi(x_i)`` where one process holds them.

One process (or rank 0 of a distributed fit) holds all ``n`` rows, in memory or memory-mapped
from a ``.npy`` file; rank ``r > 0`` of ``W`` holds only its strided shard, the samples
``r, r + W, r + 2W, ...``. :class:`FeatureStore` hides which: :meth:`~FeatureStore.rows` takes
training indices, :meth:`~FeatureStore.chunks` walks the held rows in bounded blocks, and
:meth:`~FeatureStore.close` removes a scratch file. :func:`extract_features` fills it, one batch at
a time, with every rank writing only what it holds.
"""

from __future__ import annotations

import os
import uuid
from typing import Any, Callable, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset
from tqdm import tqdm

from .._utils.chunking import row_chunk
from .data import loader_batches, shard_loader, split_batch
from .distributed import assemble_strided, gather_strided, rank_and_world_size, shard_indices, write_strided_rows
from .features import FeatureExtractor, FeatureLayers

__all__ = ["FeatureStore", "extract_features", "scratch_path"]


def scratch_path(
    directory: Optional[str], key: Optional[str], loader: DataLoader, d: int, memory_budget: Optional[int]
) -> Optional[str]:
    """Where to memory-map the training features, or None when they fit in ``memory_budget``.

    The name belongs to this process alone (key prefix, process id, random suffix): two processes
    fitting the same configuration never write or truncate each other's file.

    Parameters
    ----------
    directory : str, optional
        The cache directory (required when a budget is given).
    key : str, optional
        The fit's cache key.
    loader : DataLoader
        The training data; its dataset needs a length when a budget is given.
    d : int
        Feature dimension.
    memory_budget : int, optional
        Bytes the float32 features (``4 n d``) may occupy in memory; None: no limit.

    Raises
    ------
    ValueError
        A budget with a dataset that has no length.
    """
    if memory_budget is None:
        return None
    try:
        n = len(loader.dataset)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError("`memory_budget` needs a `train_dataset` with a length.") from None
    if 4 * n * d <= memory_budget:
        return None
    tag = f"{key[:16] if key else 'nocache'}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    return os.path.join(directory, f".features-{tag}.npy")  # type: ignore[arg-type]


class FeatureStore:
    """Training features held by this process.

    Parameters
    ----------
    features : torch.Tensor
        ``(n_held, d)``: all ``n_train`` rows on rank 0 (or in one process), rank ``r``'s shard
        otherwise (its row ``i`` is training sample ``r + i W``). May be memory-mapped.
    n_train : int
        Training samples in all.
    rank, world : int
        This process's rank and the number of ranks (0 and 1 without distribution).
    path : str, optional
        The memory-mapped file behind ``features``, removed by :meth:`close`.
    """

    def __init__(
        self, features: torch.Tensor, n_train: int, rank: int = 0, world: int = 1, path: Optional[str] = None
    ) -> None:
        self.features = features
        self.n_train = int(n_train)
        self.rank = int(rank)
        self.world = int(world)
        self.path = path

    @classmethod
    def extract(
        cls,
        model: nn.Module,
        layer: nn.Linear,
        loader: DataLoader,
        device: Optional[torch.device] = None,
        show_progress: bool = False,
        distributed: bool = False,
        out_path: Optional[str] = None,
        *,
        autocast: Optional[torch.dtype] = None,
        observe: Optional[Callable[[Any], Any]] = None,
        desc: str = "DualDA features",
        extra: Optional[FeatureLayers] = None,
    ) -> Tuple[FeatureStore, torch.Tensor]:
        """Extract the features of ``loader`` (see :func:`extract_features`).

        Returns
        -------
        store : FeatureStore
            This process's rows; its file (``out_path``, or the rank's shard file) is removed by
            :meth:`close`, also when extraction fails.
        labels : torch.Tensor
            ``(n_train,)`` int64, all labels on every rank.
        """
        rank, world = rank_and_world_size() if distributed else (0, 1)
        path = _local_path(out_path, rank)
        try:
            features, labels = extract_features(
                model,
                layer,
                loader,
                device,
                show_progress,
                desc,
                distributed=distributed,
                out_path=out_path,
                autocast=autocast,
                observe=observe,
                extra=extra,
            )
        except BaseException:
            cls._remove(path)
            raise
        return cls(features, labels.shape[0], rank, world, path), labels

    @property
    def is_complete(self) -> bool:
        """Whether all ``n_train`` rows are held (one process, or rank 0)."""
        return self.rank == 0

    def rows(self, indices: torch.Tensor) -> torch.Tensor:
        """Float32 features of training samples ``indices`` (int64; all held by this process).

        Raises
        ------
        ValueError
            An index is not held here (another rank's shard).
        """
        indices = indices.long().cpu()
        if self.is_complete:
            local = indices
        else:
            if bool((indices % self.world != self.rank).any()):
                raise ValueError(
                    f"Rank {self.rank} of {self.world} holds only the samples j with j % {self.world} == {self.rank}."
                )
            local = torch.div(indices - self.rank, self.world, rounding_mode="floor")
        return self.features[local.to(self.features.device)].float()

    def held_indices(self) -> torch.Tensor:
        """``(n_held,)`` int64 training indices of the rows held, in row order."""
        if self.is_complete:
            return torch.arange(self.n_train)
        return torch.as_tensor(list(shard_indices(self.n_train, self.rank, self.world)), dtype=torch.long)

    def chunks(self, budget_bytes: int = 1 << 25) -> Iterator[Tuple[int, torch.Tensor]]:
        """``(first row, block)`` over the held rows, in blocks whose float64 copy stays within
        ``budget_bytes`` (32 MiB), the bound every chunked pass over features keeps."""
        chunk = row_chunk(self.features.shape[1], budget_bytes)
        for start in range(0, self.features.shape[0], chunk):
            yield start, self.features[start : start + chunk]

    def close(self) -> None:
        """Drop the features and remove the memory-mapped file, if any."""
        self.features = torch.empty(0)
        self._remove(self.path)
        self.path = None

    @staticmethod
    def _remove(path: Optional[str]) -> None:
        if path is not None and os.path.exists(path):
            os.unlink(path)


def shard_path(out_path: str, rank: int) -> str:
    """Rank-local memory-map file of rank ``rank > 0`` next to ``out_path``: ``<stem>.rank<r>.npy``.

    Distinct per rank, so ranks never write the same file even when ``out_path`` lies on a
    filesystem they share.
    """
    root, ext = os.path.splitext(out_path)
    return f"{root}.rank{rank}{ext or '.npy'}"


def _local_path(out_path: Optional[str], rank: int) -> Optional[str]:
    """The memory-map file this rank writes: ``out_path`` on rank 0, :func:`shard_path` otherwise."""
    return None if out_path is None else (out_path if rank == 0 else shard_path(out_path, rank))


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
    *,
    autocast: Optional[torch.dtype] = None,
    observe: Optional[Callable[[Any], Any]] = None,
    extra: Optional[FeatureLayers] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Features and labels of every batch of ``loader``, in loader order.

    One pass through the model under one :class:`~captum_dualxda._core.features.FeatureExtractor`:
    ``torch.no_grad()``, eval mode, batches moved to the model's device with
    ``non_blocking=True`` (asynchronous from a loader with ``pin_memory=True``). Each batch's
    features are written straight into storage allocated once when the number of rows is known
    (no list of blocks, no concatenation). Features computed on a CUDA device for storage on the
    host (``device="cpu"``, ``out_path``) travel through two pinned buffers with asynchronous
    copies, so the device runs the next batch while the previous one is copied.

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
        (:func:`~captum_dualxda._core.distributed.assemble_strided`). No rank but 0 ever holds more
        than its own shard, and nothing is written to a file two ranks share. Collective: call
        it on every rank. A no-op without a process group.
    out_path : str, optional
        Write float32 features to a memory-mapped ``.npy`` file instead of holding them in
        memory (out-of-core). With ``distributed``, only rank 0 opens ``out_path`` (``(N, d)``,
        filled in original order); rank ``r > 0`` writes its shard to its own file
        :func:`shard_path` ``(out_path, r)`` next to it (in memory if its shard is empty). The
        directory need not be shared between ranks (node-local scratch works); the caller
        deletes the files.
    autocast : torch.dtype, optional
        ``torch.bfloat16`` or ``torch.float16``: run the forward passes under
        ``torch.autocast`` (mixed precision); the features are stored in float32 all the same.
    observe : callable, optional
        Called with every batch as the loader yields it, before the model sees it (e.g.
        :meth:`~captum_dualxda._core.cache.Fingerprint.update`: a fingerprint taken in the same pass).
    extra : FeatureLayers, optional
        ``DualDA(feature_layers=...)``: the inputs of these layers concatenated after ``phi``
        (unscaled; in memory, one process only).

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
        ``distributed`` with an IterableDataset or a dataset without a length; a loader that
        yields another number of samples than its dataset's length (index ``j`` of the result
        must be ``dataset[j]``); an IterableDataset that yields nothing (a one-pass stream read
        before).
    """
    device = torch.device("cpu") if device is None else torch.device(device)
    rank, world = rank_and_world_size() if distributed else (0, 1)
    n_total: Optional[int] = None
    if world > 1:
        loader, n_total = shard_loader(loader, rank, world)
    try:
        n_local: Optional[int] = len(loader.dataset)  # type: ignore[arg-type]
    except TypeError:
        n_local = None
    # Single process: all N rows, in order. Distributed rank 0: the full (N, d) result, its own
    # rows at 0, W, 2W, ... (written in place, so it never holds its shard twice). Rank r > 0:
    # its shard only, in order; out of core in a rank-suffixed file of its own, so
    # `memory_budget` holds on every rank and no file is shared (the directory may be
    # node-local). Distributed, every rank keeps the layer's dtype, so assembled chunks agree.
    sink = _RowSink(
        n_total if (world > 1 and rank == 0) else n_local,
        layer.in_features,
        step=world if rank == 0 else 1,
        device=device,
        path=_local_path(out_path, rank),
        dtype=_feature_dtype(layer) if world > 1 else None,
        rows_required=lambda: len(loader.dataset),  # type: ignore[arg-type]
    )
    labels: List[torch.Tensor] = []
    try:
        total = len(loader)
    except TypeError:
        total = None
    rows = 0
    with FeatureExtractor(model, layer, autocast=autocast, extra=extra) as extract:
        for batch in tqdm(loader_batches(loader), total=total, desc=desc, disable=not show_progress, leave=False):
            if observe is not None:
                observe(batch)
            inputs, targets = split_batch(batch, "train_dataset")
            rows += targets.shape[0]
            if n_local is not None and rows > n_local:
                raise _row_count_error(rows, n_local)
            sink.write(extract(inputs)[0])
            labels.append(targets.cpu())
    sink.flush()
    if n_local is not None and rows != n_local:
        raise _row_count_error(rows, n_local)
    if n_local is None and rows == 0 and isinstance(loader.dataset, IterableDataset):
        raise ValueError(
            "`train_dataset` (an IterableDataset) yielded no samples. A stream that can be read only once (a "
            "generator, a network stream) is read once per fit, so what reads the training data again finds it used "
            "up: the next checkpoint of an ensemble, `rank_label_issues` at another C, a second DualDA on the same "
            "stream. Pass a dataset that can be read again (a map-style Dataset, or an IterableDataset whose "
            "`__iter__` starts over)."
        )
    label_tensor = (torch.cat(labels) if labels else torch.empty(0, dtype=torch.long)).to(device)
    if world == 1:
        return sink.result(), label_tensor
    label_tensor = gather_strided(label_tensor, n_total)  # type: ignore[arg-type]
    # Chunks travel in the dtype rank 0 assembles into: float32 out of core (`out_path` is given
    # on every rank or on none), the layer's dtype in memory.
    wire = torch.float32 if out_path is not None else _feature_dtype(layer)
    held = sink.held(wire)
    assemble_strided(None if rank == 0 else held.to(wire), n_total, out=sink.target if rank == 0 else None)  # type: ignore[arg-type]
    return sink.result(assembled=True), label_tensor


def _row_count_error(rows: int, n: int) -> ValueError:
    """The error for a loader that yields another number of samples than ``len(dataset)``."""
    return ValueError(
        f"`train_dataset` yields {'at least ' if rows > n else ''}{rows} samples but its dataset has {n} items "
        "(`len(dataset)`): index j of every result addresses `dataset[j]`, so each item must give one sample, "
        "read once. Check the dataset's `__len__` and the DataLoader's `collate_fn`."
    )


class _HostCopies:
    """Rows on a CUDA device to host storage without stalling the device.

    Each block is copied with ``non_blocking=True`` into one of two pinned host buffers and an
    event is recorded; the block is handed to its ``place`` callback only when the NEXT block
    arrives (or at :meth:`flush`), after waiting for its event. The device meanwhile runs the
    next forward pass. A buffer is reused only after its block has been placed.
    """

    def __init__(self) -> None:
        self.buffers: List[Optional[torch.Tensor]] = [None, None]
        self.turn = 0
        self.pending: Optional[Tuple[Any, torch.Tensor, Callable[[torch.Tensor], None]]] = None

    def submit(self, rows: torch.Tensor, place: Callable[[torch.Tensor], None]) -> None:
        """Start copying ``rows`` (on a CUDA device) to the host; ``place(host_rows)`` follows later."""
        buffer = self.buffers[self.turn]
        if (
            buffer is None
            or buffer.shape[0] < rows.shape[0]
            or buffer.shape[1:] != rows.shape[1:]
            or buffer.dtype != rows.dtype
        ):
            buffer = torch.empty(rows.shape, dtype=rows.dtype, pin_memory=True)
            self.buffers[self.turn] = buffer
        host = buffer[: rows.shape[0]]
        host.copy_(rows, non_blocking=True)
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(rows.device))
        self.flush()
        self.pending = (event, host, place)
        self.turn ^= 1

    def flush(self) -> None:
        """Wait for the block in flight, if any, and place it."""
        if self.pending is not None:
            event, host, place = self.pending
            self.pending = None
            event.synchronize()
            place(host)


class _RowSink:
    """Where one process's stream of feature rows goes: its row ``i`` lands at ``target[i * step]``.

    A float32 memory-mapped ``.npy`` file (``path``), a tensor preallocated at the first write
    when the number of rows is known (peak ``4 n d`` bytes, not ``8 n d`` for a list and a
    concatenation), or a list of blocks otherwise. Rows are cast to the storage dtype (float32,
    float64 for float64 features; ``dtype`` when given) as they are written; rows computed on a
    CUDA device for host storage are copied asynchronously (:class:`_HostCopies`): call
    :meth:`flush` after the last write.
    """

    def __init__(
        self,
        rows: Optional[int],
        d: int,
        step: int,
        device: torch.device,
        path: Optional[str],
        dtype: Optional[torch.dtype],
        rows_required: Any,
    ) -> None:
        self.rows, self.d, self.step, self.device, self.dtype = rows, d, step, device, dtype
        self.path: Optional[str] = None
        self.target: Optional[Union[torch.Tensor, np.ndarray]] = None
        self.blocks: List[torch.Tensor] = []
        self.written = 0
        self.in_memory = path is None
        self.copies: Optional[_HostCopies] = None
        if path is not None:
            rows = rows_required() if rows is None else rows  # raises for unsized data
            if rows > 0:
                self.path = path
                self.target = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, d))

    def write(self, phi: torch.Tensor) -> None:
        """Store the next rows ``phi`` ``(m, d)`` (any float dtype, any device)."""
        dtype = self.dtype or (torch.float64 if phi.dtype == torch.float64 else torch.float32)
        if self.target is None and self.in_memory and self.rows is not None:
            self.target = torch.empty((self.rows, phi.shape[1]), dtype=dtype, device=self.device)
        start = self.written * self.step
        self.written += phi.shape[0]
        host = self.device.type == "cpu" if self.in_memory else True
        if phi.device.type == "cuda" and host:
            if self.copies is None:
                self.copies = _HostCopies()
            self.copies.submit(phi, lambda rows: self._place(start, rows, dtype))
        else:
            self._place(start, phi, dtype)

    def _place(self, start: int, rows: torch.Tensor, dtype: torch.dtype) -> None:
        if isinstance(self.target, np.ndarray) and rows.dtype not in (torch.float32, torch.float64):
            rows = rows.to(dtype)  # NumPy has no bfloat16
        if self.target is not None:
            write_strided_rows(self.target, start, self.step, rows)  # casts to the target's dtype
        else:  # rows of unknown number (an IterableDataset), or a file for an empty shard
            self.blocks.append(rows.to(self.device, dtype, copy=True))

    def flush(self) -> None:
        """Place the rows still in flight from an accelerator (a no-op otherwise)."""
        if self.copies is not None:
            self.copies.flush()

    def held(self, wire: torch.dtype) -> torch.Tensor:
        """The rows held, as a tensor (an empty shard, more ranks than samples, as ``(0, d)``)."""
        self.flush()
        if self.target is None:
            self.target = torch.empty((0, self.d), dtype=wire, device=self.device)
        return torch.from_numpy(self.target) if isinstance(self.target, np.ndarray) else self.target

    def result(self, assembled: bool = False) -> torch.Tensor:
        """The features: the file re-opened memory-mapped, the filled tensor, or the blocks."""
        self.flush()
        if isinstance(self.target, np.memmap):
            assert self.path is not None  # a memory-mapped target is a file
            self.target.flush()
            self.target = None
            return torch.from_numpy(np.load(self.path, mmap_mode="r+"))
        if isinstance(self.target, torch.Tensor):
            return self.target if assembled else self.target[: self.written]
        if self.blocks:
            return torch.cat(self.blocks)
        return torch.empty((0, self.d), device=self.device)
