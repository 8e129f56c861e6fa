"""Small datasets in the Petastorm format (written by this project's Spark writer, no petastorm)
and in plain Parquet (pyarrow).

Shared by the tests of every stage that reads datasets (inspect, reader, loader). Datasets
written by petastorm's own ``materialize_dataset`` are in the compatibility suite.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def petastorm_schema():
    from pyspark.sql.types import IntegerType, LongType, StringType

    from pipeline.format import CompressedImageCodec, NdarrayCodec, ScalarCodec, Unischema, UnischemaField

    return Unischema(
        "TinySchema",
        [
            UnischemaField("id", np.int64, (), ScalarCodec(LongType()), False),
            UnischemaField("label", np.int32, (), ScalarCodec(IntegerType()), False),
            UnischemaField("name", np.str_, (), ScalarCodec(StringType()), False),
            UnischemaField("image", np.uint8, (8, 8, 3), CompressedImageCodec("png"), False),
            UnischemaField("vector", np.float32, (4,), NdarrayCodec(), False),
        ],
    )


def expected_row(i: int) -> dict:
    rng = np.random.default_rng(i)
    return {
        "id": i,
        "label": i % 3,
        "name": f"row-{i}",
        "image": rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8),
        "vector": np.full(4, i, dtype=np.float32),
    }


def encode_rows(
    ids: Sequence[int], errors: Any, *, schema: Any, batch: int = 16
) -> Iterator[dict[str, list]]:
    """Partition function for the writer: rows ``expected_row(i)``, encoded by the schema's codecs."""
    from pipeline.format import encode_row

    for start in range(0, len(ids), batch):
        encoded = [encode_row(schema, expected_row(i)) for i in ids[start : start + batch]]
        yield {name: [row[name] for row in encoded] for name in schema.fields}


def write_petastorm_dataset(spark, path: Path, rows: int = 100, files: int = 4, row_group_mb: int = 1) -> str:
    """A Petastorm dataset of ``rows`` rows in ``files`` Parquet files, by ``write_petastorm``."""
    from pipeline.convert.common import ConvertConfig
    from pipeline.convert.listing import split_by_bytes
    from pipeline.convert.writer import write_petastorm

    schema = petastorm_schema()
    plan = [list(range(a, b)) for a, b in split_by_bytes([1] * rows, files)]
    result = write_petastorm(
        spark,
        kind="test",
        source="tests.datasets",
        dest=str(path),
        schema=schema,
        plan=plan,
        process=functools.partial(encode_rows, schema=schema),
        settings=ConvertConfig(row_group_mb=row_group_mb, overwrite=True),
        input_bytes=rows,
    )
    return result.output


def write_parquet_dataset(path: Path, rows: int = 100, files: int = 3, row_group_rows: int = 10) -> str:
    """A plain Parquet dataset (no Unischema) with scalar, string and list columns."""
    path.mkdir(parents=True, exist_ok=True)
    per_file = -(-rows // files)
    for f in range(files):
        ids = np.arange(f * per_file, min(rows, (f + 1) * per_file), dtype=np.int64)
        table = pa.table(
            {
                "id": ids,
                "x": ids.astype(np.float32) / 2,
                "name": [f"row-{i}" for i in ids],
                "tokens": [list(range(int(i % 7) + 1)) for i in ids],
            }
        )
        pq.write_table(table, path / f"part-{f:03d}.parquet", row_group_size=row_group_rows)
    return str(path)


class _OwnReader:
    """Rows (or row-group batches) of a dataset as namedtuples, read by this project's reader."""

    def __init__(self, url: str, *, batches: bool, schema_fields: Sequence[str] | None = None) -> None:
        from pipeline.reader import DatasetSource, ReadOptions

        fields = tuple(schema_fields) if schema_fields is not None else None
        self._source = DatasetSource(url, ReadOptions(fields=fields))
        self._batches = batches

    def __enter__(self) -> _OwnReader:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def __iter__(self) -> Iterator[Any]:
        from collections import namedtuple

        from pipeline.reader.plan import WorkItem

        Row = namedtuple("Row", list(self._source.specs))
        for piece, size in enumerate(self._source.sizes):
            chunk = self._source.read(WorkItem(epoch=0, piece=piece, start=0, stop=size))
            if self._batches:
                yield Row(**chunk.columns)
            else:
                for i in range(chunk.rows):
                    yield Row(**{name: column[i] for name, column in chunk.columns.items()})


def make_reader(url: str, **kwargs: Any) -> Any:
    """petastorm's ``make_reader`` where petastorm is installed (it then reads what our writer
    wrote); elsewhere the same rows in stored order through this project's reader."""
    try:
        from petastorm import make_reader as petastorm_make_reader
    except ImportError:
        return _OwnReader(url, batches=False, schema_fields=kwargs.get("schema_fields"))
    return petastorm_make_reader(url, **kwargs)


def make_batch_reader(url: str, **kwargs: Any) -> Any:
    """petastorm's ``make_batch_reader`` where petastorm is installed; elsewhere one namedtuple of
    columns per row group through this project's reader."""
    try:
        from petastorm import make_batch_reader as petastorm_make_batch_reader
    except ImportError:
        return _OwnReader(url, batches=True, schema_fields=kwargs.get("schema_fields"))
    return petastorm_make_batch_reader(url, **kwargs)


def write_format_dataset(path: Path, rows: int = 50, files: int = 2, row_group_rows: int = 10) -> str:
    """A Petastorm-format dataset written with pyarrow and :mod:`pipeline.format` only (no Spark
    job), with several row groups per file: the rows of :func:`expected_row`."""
    from pyspark.sql.pandas.types import to_arrow_schema

    from pipeline.format import encode_row
    from pipeline.format.metadata import format_metadata, write_common_metadata

    schema = petastorm_schema()
    arrow_schema = to_arrow_schema(schema.as_spark_schema())
    path.mkdir(parents=True)
    counts = {}
    per_file = -(-rows // files)
    for f in range(files):
        encoded = [
            encode_row(schema, expected_row(i)) for i in range(f * per_file, min(rows, (f + 1) * per_file))
        ]
        columns = {name: [row[name] for row in encoded] for name in schema.fields}
        name = f"part-{f:05d}.parquet"
        pq.write_table(pa.table(columns, schema=arrow_schema), path / name, row_group_size=row_group_rows)
        counts[name] = pq.read_metadata(path / name).num_row_groups
    write_common_metadata(path, arrow_schema, format_metadata(schema, counts))
    return "file://" + str(path)
