"""Global row numbers -> (row group, row inside it), whatever the row-group sizes.

Row ``i`` of a dataset is the ``i``-th row in stored order: files in name order, row groups in
file order. Spark writes row groups of uneven sizes, so the lookup is a binary search in the
prefix sums of the sizes, not a division.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["RowGroupIndex"]


@dataclass(frozen=True)
class RowGroupIndex:
    """Prefix sums of row-group sizes: ``starts[p]`` is the global number of row group ``p``'s first row."""

    starts: np.ndarray

    @classmethod
    def from_sizes(cls, sizes: Sequence[int]) -> RowGroupIndex:
        """Build the index from the rows of each row group, in stored order."""
        starts = np.zeros(len(sizes) + 1, dtype=np.int64)
        np.cumsum(np.asarray(sizes, dtype=np.int64), out=starts[1:])
        return cls(starts)

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def sizes(self) -> np.ndarray:
        """Rows of each row group."""
        return np.diff(self.starts)

    def normalize(self, index: object) -> int:
        """``index`` as a row number in ``[0, len)``; negative counts from the end.

        Raises:
            TypeError: ``index`` is not an integer.
            IndexError: ``index`` is out of range.
        """
        i = operator.index(index)  # numpy integers too; bools are ints as in lists
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"row index {i} is out of range for a dataset of {n} rows")
        return i + n if i < 0 else i

    def rows(self, key: object) -> np.ndarray:
        """The row numbers a slice, a sequence of integers or an integer array selects.

        Raises:
            TypeError: ``key`` is not a slice or a sequence of integers.
            IndexError: An index is out of range.
        """
        n = len(self)
        if isinstance(key, slice):
            return np.arange(*key.indices(n), dtype=np.int64)
        arr = np.asarray(key)
        if arr.dtype == bool and arr.ndim == 1:
            if len(arr) != n:
                raise IndexError(f"boolean index of length {len(arr)} for a dataset of {n} rows")
            return np.flatnonzero(arr).astype(np.int64)
        if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
            raise TypeError(f"dataset indices must be integers, slices or 1-D integer sequences, got {key!r}")
        arr = arr.astype(np.int64, copy=False)
        bad = (arr < -n) | (arr >= n)
        if bad.any():
            raise IndexError(f"row index {int(arr[bad][0])} is out of range for a dataset of {n} rows")
        return np.where(arr < 0, arr + n, arr)

    def locate(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(pieces, local)``: the row group of each (normalized) row and its row inside it."""
        pieces = np.searchsorted(self.starts, rows, side="right") - 1
        return pieces, rows - self.starts[pieces]

    def groups(self, rows: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """``[(piece, local rows, positions in rows)]`` for each row group that ``rows`` touch, in
        the order of their first appearance: each row group is read once per batch."""
        pieces, local = self.locate(rows)
        order = np.argsort(pieces, kind="stable")
        sorted_pieces = pieces[order]
        cuts = np.flatnonzero(np.diff(sorted_pieces)) + 1
        out = []
        for positions in np.split(order, cuts):
            if positions.size:
                out.append((int(pieces[positions[0]]), local[positions], positions))
        return out
