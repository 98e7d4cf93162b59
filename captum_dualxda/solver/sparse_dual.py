"""Row-sparse dual variables: each sample keeps at most ``capacity`` non-zero class entries.

At the optimum a training sample is a support vector for few classes: a row of ``alpha`` holds
a handful of non-zeros even with hundreds of classes (``benchmarks/README.md``, *Numbers behind
the docstrings*). A dense float64 ``alpha`` costs ``8 n K`` bytes (8 GB for n = 1,000,000 and
K = 1000); this layout costs ``12 n m`` bytes for ``m`` slots per row (384 MB for m = 32).

Layout (ELLPACK, the GPU-friendly padded format): ``values`` ``(n, m)`` float64 and ``classes``
``(n, m)`` int32; an unused slot holds the value 0 (its class index is then irrelevant). The
solver works on dense ``(b, K)`` blocks of rows (:meth:`RowSparseDual.rows`) and writes them back
(:meth:`RowSparseDual.set_rows`), which widens the storage when a row needs more slots.

The functions :func:`dual_rows`, :func:`set_dual_rows`, :func:`dual_to_dense` and
:func:`dual_row_slices` accept either a dense ``(n, K)`` tensor or a :class:`RowSparseDual`,
so the optimality measures and the clean-up run unchanged on both.
"""

from __future__ import annotations

from typing import Iterator, Optional, Tuple, Union

import torch

__all__ = [
    "RowSparseDual",
    "DualVariables",
    "dual_rows",
    "dual_to_dense",
    "dual_row_slices",
    "set_dual_rows",
]

IndexLike = Union[slice, torch.Tensor]


def default_capacity(n_classes: int) -> int:
    """Initial slots per row: ``min(K, 32)`` (above every row count measured at an optimum)."""
    return max(1, min(int(n_classes), 32))


class RowSparseDual:
    """``(n, K)`` float64 dual variables stored as padded rows of non-zeros.

    Parameters
    ----------
    n_samples : int
        ``n``.
    n_classes : int
        ``K``.
    capacity : int, optional
        Slots per row ``m`` (``1 <= m <= K``); :func:`default_capacity` if omitted. Grows on
        demand in :meth:`set_rows`.
    device : torch.device or str, optional
        Where the storage lives (default CPU).

    Attributes
    ----------
    values : torch.Tensor
        ``(n, m)`` float64 entries; 0 in unused slots.
    classes : torch.Tensor
        ``(n, m)`` int32 class of each slot.
    """

    def __init__(
        self,
        n_samples: int,
        n_classes: int,
        capacity: Optional[int] = None,
        device: Optional[Union[str, torch.device]] = None,
    ) -> None:
        if n_classes < 1:
            raise ValueError(f"`n_classes` must be >= 1, got {n_classes!r}.")
        m = default_capacity(n_classes) if capacity is None else int(capacity)
        if not 1 <= m <= n_classes:
            raise ValueError(f"`capacity` must lie in 1..n_classes={n_classes}, got {capacity!r}.")
        device = torch.device("cpu") if device is None else torch.device(device)
        self.n_classes = int(n_classes)
        self.values = torch.zeros(int(n_samples), m, dtype=torch.float64, device=device)
        self.classes = torch.zeros(int(n_samples), m, dtype=torch.int32, device=device)

    # ------------------------------------------------------------------ properties
    @property
    def shape(self) -> Tuple[int, int]:
        """``(n, K)``, the shape of the dense matrix this stores."""
        return (self.values.shape[0], self.n_classes)

    @property
    def capacity(self) -> int:
        """Slots per row ``m``."""
        return self.values.shape[1]

    @property
    def device(self) -> torch.device:
        return self.values.device

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    def nbytes(self) -> int:
        """Bytes held by ``values`` and ``classes``."""
        return self.values.numel() * self.values.element_size() + self.classes.numel() * self.classes.element_size()

    def row_nnz(self) -> torch.Tensor:
        """``(n,)`` int64 number of non-zero entries of every row."""
        return (self.values != 0).sum(1)

    # ------------------------------------------------------------------ conversion
    @classmethod
    def from_dense(cls, dense: torch.Tensor, capacity: Optional[int] = None) -> RowSparseDual:
        """Compress a dense ``(n, K)`` matrix (in row chunks, no ``(n, K)`` temporaries).

        Parameters
        ----------
        dense : torch.Tensor
            ``(n, K)`` floating point.
        capacity : int, optional
            Initial slots per row; grown to the largest row count if needed.

        Returns
        -------
        RowSparseDual
            On ``dense``'s device.
        """
        if dense.ndim != 2:
            raise ValueError(f"`dense` must be 2-D (n, K), got shape {tuple(dense.shape)}.")
        out = cls(dense.shape[0], dense.shape[1], capacity, dense.device)
        for rows in dual_row_slices(out):
            out.set_rows(rows, dense[rows].to(torch.float64))
        return out

    def to_dense(self) -> torch.Tensor:
        """``(n, K)`` float64 dense copy (needs ``8 n K`` bytes)."""
        out = torch.zeros(self.shape, dtype=self.dtype, device=self.device)
        for rows in dual_row_slices(self):
            out[rows] = self.rows(rows)
        return out

    def to(self, device: Union[str, torch.device]) -> RowSparseDual:
        """A copy on ``device`` (``self`` if already there)."""
        device = torch.device(device)
        if device == self.device:
            return self
        return self._with_arrays(self.values.to(device), self.classes.to(device))

    def scaled(self, factor: float) -> RowSparseDual:
        """A copy with every entry multiplied by ``factor`` (e.g. a warm start for a new ``C``)."""
        return self._with_arrays(self.values * float(factor), self.classes.clone())

    def _with_arrays(self, values: torch.Tensor, classes: torch.Tensor) -> RowSparseDual:
        """A RowSparseDual with this ``K`` holding the given ``(n, m)`` arrays (not copied)."""
        out = RowSparseDual.__new__(RowSparseDual)
        out.n_classes, out.values, out.classes = self.n_classes, values, classes
        return out

    def cpu(self) -> RowSparseDual:
        return self.to("cpu")

    # ------------------------------------------------------------------ row access
    def rows(self, index: IndexLike) -> torch.Tensor:
        """Dense ``(b, K)`` float64 copy of the rows ``index`` (a slice or an int64 tensor)."""
        values, classes = self.values[index], self.classes[index].long()
        dense = torch.zeros(values.shape[0], self.n_classes, dtype=self.dtype, device=self.device)
        return dense.scatter_add_(1, classes, values)  # unused slots add 0

    def set_rows(self, index: IndexLike, dense: torch.Tensor) -> None:
        """Store the dense ``(b, K)`` rows ``dense`` at ``index``, widening the storage if a row
        has more non-zeros than :attr:`capacity` (to the larger of that count and twice the
        capacity, at most ``K``)."""
        nonzero = dense != 0
        need = int(nonzero.sum(1).max()) if dense.shape[0] else 0
        if need > self.capacity:
            self.grow(max(need, min(self.n_classes, 2 * self.capacity)))
        # the non-zero columns first (ranked 1 > 0); zero slots keep value 0
        slots = torch.topk(nonzero.to(torch.uint8), self.capacity, dim=1, sorted=False).indices
        self.values[index] = dense.gather(1, slots).to(self.dtype)
        self.classes[index] = slots.to(torch.int32)

    def grow(self, capacity: int) -> None:
        """Widen every row to ``capacity`` slots (``capacity <= K``); entries are kept."""
        capacity = min(int(capacity), self.n_classes)
        extra = capacity - self.capacity
        if extra <= 0:
            return
        n = self.values.shape[0]
        self.values = torch.cat([self.values, self.values.new_zeros(n, extra)], dim=1)
        self.classes = torch.cat([self.classes, self.classes.new_zeros(n, extra)], dim=1)

    def __repr__(self) -> str:
        n, k = self.shape
        return f"RowSparseDual(n={n}, K={k}, capacity={self.capacity}, device={self.device})"


DualVariables = Union[torch.Tensor, RowSparseDual]


def dual_row_slices(alpha: DualVariables, budget_bytes: int = 1 << 25) -> Iterator[slice]:
    """Row slices whose dense float64 ``(rows, K)`` copy stays within ``budget_bytes`` (32 MiB)."""
    n, k = alpha.shape
    chunk = max(1, budget_bytes // (8 * max(1, k)))
    for start in range(0, n, chunk):
        yield slice(start, min(n, start + chunk))


def dual_rows(alpha: DualVariables, index: IndexLike) -> torch.Tensor:
    """Dense ``(b, K)`` rows of ``alpha`` (dense tensor: ``alpha[index]``, a view for slices)."""
    if isinstance(alpha, RowSparseDual):
        return alpha.rows(index)
    return alpha[index]


def set_dual_rows(alpha: DualVariables, index: IndexLike, rows: torch.Tensor) -> None:
    """Write dense ``(b, K)`` ``rows`` into ``alpha`` at ``index``."""
    if isinstance(alpha, RowSparseDual):
        alpha.set_rows(index, rows)
    else:
        alpha[index] = rows


def dual_to_dense(alpha: DualVariables) -> torch.Tensor:
    """``alpha`` as a dense ``(n, K)`` tensor (itself if already dense)."""
    return alpha.to_dense() if isinstance(alpha, RowSparseDual) else alpha
