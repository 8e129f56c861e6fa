"""Read one row group's Arrow table and decode the rows asked for, with the reader's own decoding.

The row group is read whole (a Parquet row group is the smallest unit of I/O and decompression),
but only the rows asked for are decoded: ``ds[i]`` decodes one image, not the row group's
thousand. Decoding and the petastorm ``TransformSpec`` are those of
:class:`~pipeline.reader.source.DatasetSource` (:func:`~pipeline.reader.decode.decode_column`,
:func:`~pipeline.reader.transform.apply_transform_spec`), so a row read here equals the same row
read by ``open_loader``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.reader.decode import decode_column, spec_from_unischema
from pipeline.reader.source import DatasetSource
from pipeline.reader.transform import apply_transform_spec

__all__ = ["RowGroupReader", "column_nbytes"]


class RowGroupReader:
    """Arrow tables of a source's row groups, and their decoded rows.

    Args:
        source: The opened dataset (fields, transform, row groups).
    """

    def __init__(self, source: DatasetSource) -> None:
        self.source = source
        self._stored = dict(source.schema.fields)
        self._in_specs = {name: spec_from_unischema(f) for name, f in self._stored.items()}
        transform = source.options.transform
        self._spec = transform if transform is not None and hasattr(transform, "edit_fields") else None

    def read_table(self, piece: int) -> pa.Table:
        """The encoded columns of row group ``piece`` (codec bytes not decoded yet).

        Read as the loader reads it: with the footers the source read at open and, on a store,
        its handles and pre-buffered ranged reads (one ``GET``, no ``HEAD``, per row group)."""
        return self.source.read_row_group(piece)

    def decode(self, table: pa.Table, local: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Decode rows ``local`` of ``table`` (all rows when ``None``), transform applied.

        Returns:
            One column per output field: ``(rows, *shape)`` arrays for fixed-shape fields, 1-D
            object arrays otherwise (see :mod:`pipeline.reader.decode`).
        """
        if local is not None:
            table = _rows(table, local)
        columns = {
            name: decode_column(self._in_specs[name], field, table.column(name))
            for name, field in self._stored.items()
        }
        if self._spec is not None:
            columns = apply_transform_spec(
                self._spec, columns, table.num_rows, self.source.specs, batch=self.source.kind == "parquet"
            )
        return {name: _writable(col) for name, col in columns.items()}


def _rows(table: pa.Table, local: np.ndarray) -> pa.Table:
    """Rows ``local`` of ``table``: a zero-copy slice when they are consecutive, else a take."""
    if len(local) and int(local[-1]) - int(local[0]) == len(local) - 1 and (np.diff(local) == 1).all():
        return table.slice(int(local[0]), len(local))
    return table.take(pa.array(local, type=pa.int64()))


def _writable(column: np.ndarray) -> np.ndarray:
    """``column`` with values users may write to (zero-copy Arrow views are read-only)."""
    if column.dtype != object:
        return column if column.flags.writeable else column.copy()
    for k, value in enumerate(column):
        if isinstance(value, np.ndarray) and not value.flags.writeable:
            column[k] = value.copy()
    return column


def column_nbytes(column: Any) -> int:
    """Bytes held by a decoded column, counting the values of object arrays one by one."""
    if isinstance(column, np.ndarray) and column.dtype != object:
        return int(column.nbytes)
    total = 8 * len(column)
    for value in column:
        if isinstance(value, np.ndarray):
            total += int(value.nbytes) + 112
        elif isinstance(value, (str, bytes)):
            total += len(value) + 49
        else:
            total += 32
    return total
