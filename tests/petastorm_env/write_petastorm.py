"""Petastorm env: write the compatibility dataset with petastorm's materialize_dataset.

Usage: python write_petastorm.py DEST READBACK.pkl

Every codec (scalar, ndarray, compressed ndarray, png and jpeg images), nullable scalar and
ndarray fields, and uneven files and row groups (see compat_rows). Then reads it back with
petastorm's make_reader and dumps the rows by id (portable.dump) for the default env to compare.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
from petastorm import make_reader
from petastorm.codecs import CompressedImageCodec, CompressedNdarrayCodec, NdarrayCodec, ScalarCodec
from petastorm.etl.dataset_metadata import materialize_dataset
from petastorm.unischema import Unischema, UnischemaField, dict_to_spark_row
from pyspark.sql import SparkSession
from pyspark.sql.types import BooleanType, DoubleType, IntegerType, LongType, ShortType, StringType

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compat_rows
import portable

SCHEMA = Unischema(
    "CompatSchema",
    [
        UnischemaField("id", np.int64, (), ScalarCodec(LongType()), False),
        UnischemaField("small", np.int16, (), ScalarCodec(ShortType()), False),
        UnischemaField("ratio", np.float64, (), ScalarCodec(DoubleType()), False),
        UnischemaField("flag", np.bool_, (), ScalarCodec(BooleanType()), False),
        UnischemaField("name", np.str_, (), ScalarCodec(StringType()), False),
        UnischemaField("maybe", np.int32, (), ScalarCodec(IntegerType()), True),
        UnischemaField("matrix", np.float32, (4, 3), NdarrayCodec(), False),
        UnischemaField("varlen", np.int32, (None,), NdarrayCodec(), False),
        UnischemaField("maybe_vec", np.float64, (2,), NdarrayCodec(), True),
        UnischemaField("packed", np.uint16, (5, 5), CompressedNdarrayCodec(), False),
        UnischemaField("png", np.uint8, (8, 10, 3), CompressedImageCodec("png"), False),
        UnischemaField("png_gray", np.uint8, (6, 7), CompressedImageCodec("png"), False),
        UnischemaField("jpeg", np.uint8, (16, 16, 3), CompressedImageCodec("jpeg", quality=90), False),
    ],
)


def main(dest: str, readback: str) -> None:
    url = "file://" + os.path.abspath(dest)
    os.environ["PYSPARK_PYTHON"] = sys.executable  # Spark's Python workers: this env's Python
    spark = (
        SparkSession.builder.master("local[1]")
        .appName("petastorm-compat-writer")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.host", "127.0.0.1")
        .getOrCreate()
    )
    try:
        sc = spark.sparkContext
        rdds, start = [], 0
        for n in compat_rows.PARTITIONS:
            rows = [dict_to_spark_row(SCHEMA, compat_rows.expected_row(i)) for i in range(start, start + n)]
            rdds.append(sc.parallelize(rows, 1))
            start += n
        with materialize_dataset(spark, url, SCHEMA, row_group_size_mb=1):
            hadoop = sc._jsc.hadoopConfiguration()
            # Row groups of a few rows: a tiny block size, checked after every row.
            hadoop.setInt("parquet.block.size", compat_rows.ROW_GROUP_BYTES)
            hadoop.setInt("parquet.page.size.row.check.min", 1)
            hadoop.setInt("parquet.page.size.row.check.max", 1)
            df = spark.createDataFrame(sc.union(rdds), SCHEMA.as_spark_schema())
            df.write.mode("overwrite").parquet(url)
    finally:
        spark.stop()
    with make_reader(url, workers_count=1, shuffle_row_groups=False, num_epochs=1) as reader:
        read = {int(row.id): row._asdict() for row in reader}
    portable.dump(read, readback)


if __name__ == "__main__":
    main(*sys.argv[1:])
