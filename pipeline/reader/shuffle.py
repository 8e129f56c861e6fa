"""A seeded, columnar shuffle buffer that mixes rows across row groups.

Rows of incoming chunks are copied into preallocated columns. While the buffer holds at least
``max(size, batch)`` rows, :meth:`ShuffleBuffer.select` draws ``batch`` positions uniformly
without replacement from its generator; after the caller gathered them, :meth:`remove` fills
the holes with the last rows (vectorised swap-remove), so memory stays at ``size`` rows plus
one chunk. With ``rng=None`` it is a FIFO that keeps the stored order.

Determinism: the rows selected depend only on the sequence of chunks added and on the
generator, which the loader derives from ``(seed, epoch, rank, world_size)``.
"""

from __future__ import annotations

import numpy as np

from pipeline.reader.decode import FieldSpec
from pipeline.reader.source import Chunk

__all__ = ["ShuffleBuffer"]


class ShuffleBuffer:
    """Rows waiting to be batched.

    Args:
        specs: The fields' specs (fixed fields get a preallocated ``(capacity, *shape)`` array).
        size: Rows to hold before emitting; the larger, the better the mixing.
        rng: Generator that draws rows; ``None`` emits rows in arrival order.
    """

    def __init__(self, specs: dict[str, FieldSpec], size: int, rng: np.random.Generator | None) -> None:
        self._specs = specs
        self.size = size if rng is not None else 0
        self._rng = rng
        self._columns: dict[str, np.ndarray] = {}
        self._capacity = 0
        self._start = 0  # first live row (FIFO mode only)
        self._end = 0  # one past the last live row

    def __len__(self) -> int:
        return self._end - self._start

    @property
    def columns(self) -> dict[str, np.ndarray]:
        """The buffer's columns; positions from :meth:`select` index into them."""
        return self._columns

    def set_rng(self, rng: np.random.Generator | None) -> None:
        """Use a new generator (one per epoch) for the rows still to be drawn."""
        self._rng = rng if self._rng is not None else None

    def add(self, chunk: Chunk) -> None:
        """Copy a chunk's rows into the buffer."""
        if chunk.rows == 0:
            return
        if self._start and self._end + chunk.rows > self._capacity:
            self._compact()
        if self._end + chunk.rows > self._capacity:
            self._grow(max(self._end + chunk.rows, self.size + chunk.rows, 2 * self._capacity))
        lo, hi = self._end, self._end + chunk.rows
        for name, column in self._columns.items():
            values = chunk.columns[name]
            if values.shape[1:] != column.shape[1:]:
                raise ValueError(
                    f"field {name!r}: a row group has shape {values.shape[1:]}, earlier ones {column.shape[1:]}"
                )
            column[lo:hi] = values
        self._end = hi

    def ready(self, batch: int) -> bool:
        """Whether a full batch can be drawn without draining."""
        return len(self) >= max(self.size, batch)

    def select(self, count: int) -> np.ndarray:
        """Positions of the next ``count`` rows (``count <= len(self)``)."""
        count = min(count, len(self))
        if self._rng is None:
            return np.arange(self._start, self._start + count)
        return self._rng.choice(len(self), size=count, replace=False)

    def remove(self, positions: np.ndarray) -> None:
        """Drop the rows at ``positions`` (as returned by the last :meth:`select`)."""
        if self._rng is None:
            self._start += len(positions)
            if self._start == self._end:
                self._start = self._end = 0
            return
        n, k = len(self), len(positions)
        tail = np.arange(n - k, n)
        chosen = np.zeros(n, dtype=bool)
        chosen[positions] = True
        holes = np.sort(positions[positions < n - k])
        movers = tail[~chosen[n - k :]]
        for column in self._columns.values():
            column[holes] = column[movers]
            if column.dtype == object:
                column[n - k : n] = None  # release the references
        self._end = n - k

    def _compact(self) -> None:
        live = slice(self._start, self._end)
        for column in self._columns.values():
            column[: len(self)] = column[live]
        self._end, self._start = len(self), 0

    def _grow(self, capacity: int) -> None:
        for name, spec in self._specs.items():
            shape = spec.shape if spec.kind == "fixed" else ()
            dtype = spec.dtype if spec.kind == "fixed" else object
            new = np.empty((capacity, *shape), dtype=dtype)
            if name in self._columns:
                new[: self._end] = self._columns[name][: self._end]
            self._columns[name] = new
        self._capacity = capacity
