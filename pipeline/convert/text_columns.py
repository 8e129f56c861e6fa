"""Columns and counters of text conversion: token batches for pyarrow, accumulator-backed facts."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["CounterFacts", "TokenColumn"]


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


class CounterFacts(Mapping[str, Any]):
    """Provenance facts whose Spark accumulators are read when the writer records them.

    :func:`pipeline.convert.writer.write_petastorm` copies ``extra`` into the provenance after
    the Spark job, so counters summed in the tasks (documents, dropped tail tokens) are exact
    there and in ``ConversionResult.extra``.

    Args:
        fixed: Facts known before the job.
        counters: Name -> ``pyspark.Accumulator`` of ints.
    """

    def __init__(self, fixed: dict[str, Any], counters: Mapping[str, Any]) -> None:
        self._fixed = fixed
        self._counters = counters

    def _resolved(self) -> dict[str, Any]:
        return {**self._fixed, **{k: int(acc.value) for k, acc in self._counters.items()}}

    def __getitem__(self, key: str) -> Any:
        return self._resolved()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._resolved())

    def __len__(self) -> int:
        return len(self._fixed) + len(self._counters)
