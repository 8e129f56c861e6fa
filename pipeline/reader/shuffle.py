"""The row buffer: where workers decode rows to, and the seeded shuffle that draws batches.

A :class:`RowBuffer` holds preallocated columns of ``capacity`` rows (``(capacity, *shape)``
arrays for fixed-shape fields, object arrays for the rest) and two index lists: *free* rows and
*live* rows. The reader reserves free rows for a work item when it submits it, a worker thread
decodes the item straight into them (an image is written once, by ``cv2.cvtColor``), and the
rows become live when the item's turn in plan order comes (:meth:`RowBuffer.commit`). While at
least ``max(size, batch)`` rows are live, :meth:`RowBuffer.select` draws ``batch`` of them
uniformly without replacement from the epoch's generator; :meth:`RowBuffer.release` frees them
after the batch was gathered. With ``rng=None`` live rows are drawn first-in first-out: the
stored order.

Determinism: which live rows are drawn depends only on the order of commits and on the
generator (derived from ``(seed, epoch, rank, world_size)``), never on where rows happen to sit
or on thread timing. The bookkeeping of that choice is one class, :class:`LiveOrder`, used by
the buffer on row slots and by :func:`replay_epoch` on row *numbers* of the epoch: replaying an
epoch's draws up to a batch needs no reading and no decoding, and gives the buffer's exact
content and generator at that batch (how a loader resumes mid-epoch). Memory is fixed:
``size`` rows plus the rows of the items in flight.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.reader.decode import FieldSpec

__all__ = ["BufferCut", "LiveOrder", "RowBuffer", "replay_epoch"]


class LiveOrder:
    """The live entries of a shuffle buffer, in the order that decides the next draws.

    Args:
        capacity: Most entries ever live at once.
        size: Live entries to hold before drawing (the shuffle buffer size); ``0`` without ``rng``.
        rng: Generator that draws entries; ``None`` draws them in commit order.
    """

    def __init__(self, capacity: int, size: int, rng: np.random.Generator | None) -> None:
        self.size = size if rng is not None else 0
        self.rng = rng
        self.live = np.empty(capacity, dtype=np.int64)
        self.num_live = 0
        self._drawn: np.ndarray | None = None  # positions in `live` of the last selection

    def commit(self, entries: np.ndarray) -> None:
        self.live[self.num_live : self.num_live + len(entries)] = entries
        self.num_live += len(entries)

    def ready(self, batch: int) -> bool:
        return self.num_live >= max(self.size, batch)

    def select(self, count: int) -> np.ndarray:
        count = min(count, self.num_live)
        if self.rng is None:
            self._drawn = np.arange(count)
        else:
            self._drawn = self.rng.choice(self.num_live, size=count, replace=False)
        return self.live[self._drawn]

    def release(self) -> np.ndarray:
        """Remove the last selection; returns its entries."""
        if self._drawn is None:
            return self.live[:0]
        drawn, self._drawn = self._drawn, None
        n, k = self.num_live, len(drawn)
        entries = self.live[drawn]
        if self.rng is None:
            self.live[: n - k] = self.live[k:n]
        else:  # swap-remove: the last k live entries fill the holes
            chosen = np.zeros(n, dtype=bool)
            chosen[drawn] = True
            holes = np.sort(drawn[drawn < n - k])
            movers = np.arange(n - k, n)[~chosen[n - k :]]
            self.live[holes] = self.live[movers]
        self.num_live = n - k
        return entries


@dataclass(frozen=True)
class BufferCut:
    """The shuffle buffer after a number of batches of an epoch (see :func:`replay_epoch`)."""

    live: np.ndarray
    """Row numbers of the epoch (positions in the rank's plan) still live, in buffer order."""
    rng: np.random.Generator | None
    """The generator, advanced past the draws of the batches already made."""
    next_item: int
    """Index of the first work item of the epoch not committed yet."""
    rows_delivered: int
    """Rows in the batches already made."""


def replay_epoch(
    item_rows: Sequence[int],
    *,
    size: int,
    batch: int,
    rng: np.random.Generator | None,
    drop_last: bool,
    batches: int,
) -> BufferCut:
    """The buffer after ``batches`` batches of an epoch whose work items have ``item_rows`` rows.

    Mirrors :meth:`pipeline.reader.reader.Reader.batches` draw for draw on row numbers instead of
    decoded rows: commit item after item, draw while ready, drain at the end of the epoch.

    Raises:
        ValueError: The epoch has fewer than ``batches`` batches.
    """
    total = int(sum(item_rows))
    order = LiveOrder(max(total, 1), size, rng)
    made = delivered = 0
    starts = np.concatenate([[0], np.cumsum(np.asarray(item_rows, dtype=np.int64))])

    def cut(next_item: int) -> BufferCut:
        return BufferCut(order.live[: order.num_live].copy(), order.rng, next_item, delivered)

    if batches == 0:
        return cut(0)
    for i, rows in enumerate(item_rows):
        order.commit(np.arange(starts[i], starts[i] + rows))
        while order.ready(batch):
            delivered += len(order.select(batch))
            order.release()
            made += 1
            if made == batches:
                return cut(i + 1)
    while order.num_live >= batch or (order.num_live and not drop_last):
        delivered += len(order.select(batch))
        order.release()
        made += 1
        if made == batches:
            return cut(len(item_rows))
    raise ValueError(f"the epoch has {made} batches, cannot cut after {batches}")


class RowBuffer:
    """Preallocated rows, reserved by the reader, filled by workers, drawn in seeded batches.

    Args:
        specs: The fields' specs (decide each column's dtype and row shape).
        capacity: Rows to allocate; must cover ``max(size, batch)`` plus every row in flight.
        size: Live rows to hold before drawing (the shuffle buffer size); ``0`` without ``rng``.
        rng: Generator that draws rows; ``None`` draws them in commit order.
        allocate: ``(name, shape, dtype) -> ndarray`` for the fixed-shape columns (shared memory
            for worker processes). Defaults to ``None`` (``np.empty``).
    """

    def __init__(
        self,
        specs: dict[str, FieldSpec],
        capacity: int,
        size: int,
        rng: np.random.Generator | None,
        allocate: Callable[[str, tuple[int, ...], np.dtype], np.ndarray] | None = None,
    ) -> None:
        self.columns: dict[str, np.ndarray] = {}
        """The buffer's columns; the positions of a selection index into them."""
        for name, spec in specs.items():
            if spec.kind == "fixed":
                shape = (capacity, *spec.shape)
                self.columns[name] = (
                    allocate(name, shape, spec.dtype) if allocate else np.empty(shape, dtype=spec.dtype)
                )
            else:
                self.columns[name] = np.empty(capacity, dtype=object)
        self.capacity = capacity
        self._order = LiveOrder(capacity, size, rng)
        self._free = np.arange(capacity - 1, -1, -1, dtype=np.int64)  # a stack
        self._num_free = capacity

    @property
    def size(self) -> int:
        return self._order.size

    def __len__(self) -> int:
        """Live rows."""
        return self._order.num_live

    def set_rng(self, rng: np.random.Generator | None) -> None:
        """Draw the next rows with ``rng`` (one generator per epoch); ignored in FIFO mode."""
        if self._order.rng is not None:
            self._order.rng = rng

    def reserve(self, count: int) -> np.ndarray:
        """Take ``count`` free rows for a work item about to be read."""
        if count > self._num_free:
            raise RuntimeError(f"row buffer overflow: {count} rows wanted, {self._num_free} free")
        self._num_free -= count
        return self._free[self._num_free : self._num_free + count].copy()

    def unreserve(self, rows: np.ndarray) -> None:
        """Give reserved rows back unused."""
        self._clear(rows)
        self._free[self._num_free : self._num_free + len(rows)] = rows
        self._num_free += len(rows)

    def commit(self, rows: np.ndarray) -> None:
        """Make reserved, now filled, rows live (call in plan order)."""
        self._order.commit(rows)

    def ready(self, batch: int) -> bool:
        """Whether a full batch can be drawn without draining."""
        return self._order.ready(batch)

    def select(self, count: int) -> np.ndarray:
        """Rows of the next batch (``min(count, len(self))`` of them), valid until :meth:`release`."""
        return self._order.select(count)

    def release(self) -> None:
        """Free the rows of the last selection."""
        self.unreserve(self._order.release())

    def _clear(self, rows: np.ndarray) -> None:
        for column in self.columns.values():
            if column.dtype == object:
                column[rows] = None  # drop references to strings and token arrays
