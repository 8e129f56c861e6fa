"""Token columns of text conversion: per-row token arrays gathered into one Arrow list array."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["TokenColumn"]


class TokenColumn(Sequence[np.ndarray]):
    """A batch of token rows that pyarrow turns into a ``list<int32>`` column in one copy.

    ``pa.array(column, type=...)`` calls :meth:`__arrow_array__` (pyarrow's conversion
    protocol) instead of converting row by row, which is the slow part of writing tokens.
    """

    def __init__(self, rows: list[np.ndarray]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: Any) -> Any:
        return self.rows[index]

    def __arrow_array__(self, type: Any = None) -> Any:
        import pyarrow as pa

        lengths = np.fromiter((len(r) for r in self.rows), dtype=np.int64, count=len(self.rows))
        offsets = np.zeros(len(self.rows) + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        values = (
            np.concatenate(self.rows).astype(np.int32, copy=False) if self.rows else np.zeros(0, np.int32)
        )
        array = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))
        return array if type is None else array.cast(type)
