"""The row buffer: where workers decode rows to, and the seeded shuffle that draws batches.

A :class:`RowBuffer` holds preallocated columns of ``capacity`` rows (``(capacity, *shape)``
arrays for fixed-shape fields, object arrays for the rest) and two index lists: *free* rows and
*live* rows. The reader reserves free rows for a work item when it submits it, a worker thread
decodes the item straight into them (an image is written once, by ``cv2.cvtColor``), and the
rows become live when the item's turn in plan order comes (:meth:`commit`). While at least
``max(size, batch)`` rows are live, :meth:`select` draws ``batch`` of them uniformly without
replacement from the epoch's generator; :meth:`release` frees them after the batch was
gathered. With ``rng=None`` live rows are drawn first-in first-out: the stored order.

Determinism: which live rows are drawn depends only on the order of commits and on the
generator (derived from ``(seed, epoch, rank, world_size)``), never on where rows happen to sit
or on thread timing. Memory is fixed: ``size`` rows plus the rows of the items in flight.
"""

from __future__ import annotations

import numpy as np

from pipeline.reader.decode import FieldSpec

__all__ = ["RowBuffer"]


class RowBuffer:
    """Preallocated rows, reserved by the reader, filled by workers, drawn in seeded batches.

    Args:
        specs: The fields' specs (decide each column's dtype and row shape).
        capacity: Rows to allocate; must cover ``max(size, batch)`` plus every row in flight.
        size: Live rows to hold before drawing (the shuffle buffer size); ``0`` without ``rng``.
        rng: Generator that draws rows; ``None`` draws them in commit order.
    """

    def __init__(
        self, specs: dict[str, FieldSpec], capacity: int, size: int, rng: np.random.Generator | None
    ) -> None:
        self.columns: dict[str, np.ndarray] = {}
        """The buffer's columns; the positions of a selection index into them."""
        for name, spec in specs.items():
            if spec.kind == "fixed":
                self.columns[name] = np.empty((capacity, *spec.shape), dtype=spec.dtype)
            else:
                self.columns[name] = np.empty(capacity, dtype=object)
        self.capacity = capacity
        self.size = size if rng is not None else 0
        self._rng = rng
        self._free = np.arange(capacity - 1, -1, -1, dtype=np.int64)  # a stack
        self._num_free = capacity
        self._live = np.empty(capacity, dtype=np.int64)
        self._num_live = 0
        self._drawn: np.ndarray | None = None  # positions in _live of the last selection

    def __len__(self) -> int:
        """Live rows."""
        return self._num_live

    def set_rng(self, rng: np.random.Generator | None) -> None:
        """Draw the next rows with ``rng`` (one generator per epoch); ignored in FIFO mode."""
        if self._rng is not None:
            self._rng = rng

    def reserve(self, count: int) -> np.ndarray:
        """Take ``count`` free rows for a work item about to be read."""
        if count > self._num_free:
            raise RuntimeError(f"row buffer overflow: {count} rows wanted, {self._num_free} free")
        self._num_free -= count
        return self._free[self._num_free : self._num_free + count].copy()

    def commit(self, rows: np.ndarray) -> None:
        """Make reserved, now filled, rows live (call in plan order)."""
        self._live[self._num_live : self._num_live + len(rows)] = rows
        self._num_live += len(rows)

    def ready(self, batch: int) -> bool:
        """Whether a full batch can be drawn without draining."""
        return self._num_live >= max(self.size, batch)

    def select(self, count: int) -> np.ndarray:
        """Rows of the next batch (``min(count, len(self))`` of them), valid until :meth:`release`."""
        count = min(count, self._num_live)
        if self._rng is None:
            self._drawn = np.arange(count)
        else:
            self._drawn = self._rng.choice(self._num_live, size=count, replace=False)
        return self._live[self._drawn]

    def release(self) -> None:
        """Free the rows of the last selection."""
        if self._drawn is None:
            return
        drawn, self._drawn = self._drawn, None
        n, k = self._num_live, len(drawn)
        rows = self._live[drawn]
        for column in self.columns.values():
            if column.dtype == object:
                column[rows] = None  # drop references to strings and token arrays
        if self._rng is None:
            self._live[: n - k] = self._live[k:n]
        else:  # swap-remove: the last k live entries fill the holes
            chosen = np.zeros(n, dtype=bool)
            chosen[drawn] = True
            holes = np.sort(drawn[drawn < n - k])
            movers = np.arange(n - k, n)[~chosen[n - k :]]
            self._live[holes] = self._live[movers]
        self._num_live = n - k
        self._free[self._num_free : self._num_free + k] = rows
        self._num_free += k
