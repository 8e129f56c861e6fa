"""Tiny Parquet datasets with uneven row groups over several files, for the random-access tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

# rows per row group, per file (files are read in name order, row groups in file order)
UNEVEN = [[3, 1, 7], [5], [2, 0, 9, 1, 4]]


def write_uneven(path: Path, groups: list[list[int]] = UNEVEN, image: int = 0) -> str:
    """Files ``part-000.parquet``... whose row groups have exactly the sizes in ``groups``.

    Row ``i`` (stored order) has ``id == i``; ``image > 0`` adds an ``image`` column of
    ``image`` x ``image`` uint8 pixels (a fixed-size list) to make row groups bigger.
    """
    path.mkdir(parents=True, exist_ok=True)
    first = 0
    for f, sizes in enumerate(groups):
        schema = None
        writer = None
        for size in sizes:
            table = _table(np.arange(first, first + size, dtype=np.int64), image)
            if writer is None:
                schema = table.schema
                writer = pq.ParquetWriter(path / f"part-{f:03d}.parquet", schema)
            writer.write_table(table, row_group_size=max(size, 1))
            first += size
        assert writer is not None
        writer.close()
    return str(path)


def _table(ids: np.ndarray, image: int) -> pa.Table:
    columns = {
        "id": pa.array(ids),
        "x": pa.FixedSizeListArray.from_arrays(pa.array(np.repeat(ids, 2).astype(np.float32) / 4), 2),
        "name": pa.array([f"row-{i}" for i in ids], type=pa.string()),
        "tokens": pa.array([list(range(int(i) % 5)) for i in ids], type=pa.list_(pa.int32())),
    }
    if image:
        pixels = np.stack(
            [np.random.default_rng(int(i)).integers(0, 256, image * image, np.uint8) for i in ids]
        )
        columns["image"] = pa.FixedSizeListArray.from_arrays(pa.array(pixels.reshape(-1)), image * image)
    return pa.table(columns)


def expected(i: int) -> dict:
    return {
        "id": i,
        "x": np.full(2, i / 4, dtype=np.float32),
        "name": f"row-{i}",
        "tokens": np.arange(i % 5, dtype=np.int32),
    }


def assert_row(row: dict, i: int) -> None:
    want = expected(i)
    assert int(row["id"]) == i
    np.testing.assert_array_equal(row["x"], want["x"])
    assert row["name"] == want["name"]
    np.testing.assert_array_equal(row["tokens"], want["tokens"])
