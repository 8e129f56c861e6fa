"""Small datasets written by petastorm's own ``materialize_dataset`` and by plain pyarrow.

Shared by the tests of every stage that reads datasets (inspect, reader, loader).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def petastorm_schema():
    from petastorm.codecs import CompressedImageCodec, NdarrayCodec, ScalarCodec
    from petastorm.unischema import Unischema, UnischemaField
    from pyspark.sql.types import IntegerType, LongType, StringType

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


def write_petastorm_dataset(spark, path: Path, rows: int = 100, files: int = 4, row_group_mb: int = 1) -> str:
    """A Petastorm dataset of ``rows`` rows in ``files`` Parquet files, via materialize_dataset."""
    from petastorm.etl.dataset_metadata import materialize_dataset
    from petastorm.unischema import dict_to_spark_row

    schema = petastorm_schema()
    url = "file://" + str(path)
    with materialize_dataset(spark, url, schema, row_group_mb):
        rdd = spark.sparkContext.parallelize(range(rows), files).map(
            lambda i: dict_to_spark_row(schema, expected_row(i))
        )
        spark.createDataFrame(rdd, schema.as_spark_schema()).write.mode("overwrite").parquet(url)
    return url


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
