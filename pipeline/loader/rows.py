"""Rows waiting to become a batch: the petastorm engine's buffer (seeded shuffle) and stacking."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["RowBuffer", "stackable"]


def stackable(items: list[Any]) -> Any:
    """Rows of one field -> a stacked array when they are numeric and alike, else the list."""
    if items and all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in items):
        return np.asarray(items)
    numeric = items and all(isinstance(v, np.ndarray) and v.dtype.kind in "biuf" for v in items)
    if numeric and len({v.shape for v in items}) == 1:
        return np.stack(items)
    return items


class RowBuffer:
    """Rows (field -> list of values) waiting to be batched.

    Args:
        capacity: Rows held before a batch is taken when shuffling (``shuffle_buffer``).
        rng: Picks each row of a batch at random from the buffer; ``None`` keeps arrival order.
    """

    def __init__(self, capacity: int, rng: np.random.Generator | None) -> None:
        self.capacity = capacity
        self.rng = rng
        self.columns: dict[str, list[Any]] = {}
        self.size = 0

    def add(self, columns: dict[str, Any], count: int) -> None:
        """Add ``count`` rows: ``columns`` maps names to lists of values (or to one value if 1 row)."""
        if not self.columns:
            self.columns = {name: [] for name in columns}
        for name, values in columns.items():
            self.columns[name].extend(values if count != 1 else [values])
        self.size += count

    def full(self, batch_size: int) -> bool:
        """Whether a batch should be taken now (enough rows, and a full buffer when shuffling)."""
        return self.size >= max(batch_size, self.capacity if self.rng is not None else 0)

    def take(self, n: int) -> dict[str, list[Any]]:
        """Remove and return up to ``n`` rows (the first ones, or random ones when shuffling)."""
        n = min(n, self.size)
        if self.rng is None:
            out = {name: col[:n] for name, col in self.columns.items()}
            for col in self.columns.values():
                del col[:n]
            self.size -= n
            return out
        out = {name: [] for name in self.columns}
        for _ in range(n):
            i = int(self.rng.integers(self.size))
            for name, col in self.columns.items():
                col[i], col[-1] = col[-1], col[i]
                out[name].append(col.pop())
            self.size -= 1
        return out
