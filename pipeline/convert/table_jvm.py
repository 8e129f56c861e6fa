"""The JVM path of ``convert table``: Spark converts and writes the Parquet files itself.

Every rule of the type policy except images is a Spark SQL expression (a cast, ``unix_date``,
``unix_micros``, ``vector_to_array``, struct members as columns), so for a table without an
image column the conversion is one ``df.select(...).write.parquet(...)`` into the staging
folder: no row goes through Python. What the type policy needs to know about the data is
measured *in the same job* with ``DataFrame.observe`` (Spark's observed metrics, computed by the
writing tasks):

* per array column and nesting level, the smallest and largest length: one length in every row
  gives a fixed-shape field, else a ragged one (both store the same Parquet list column; only the
  Unischema differs, and it is written after the job);
* how many rows hold a null where their field cannot store one (anywhere inside an array too).

When some row cannot be stored the JVM output is discarded and the partitions are converted
again by the Python tasks of :mod:`pipeline.convert.table_batches`, which name the column and the
row under ``on_error="fail"`` and list skipped rows under ``"skip"`` -- the same result as if
the Python path had run alone, at the price of a second pass only for tables with bad rows.
"""

from __future__ import annotations

import functools
import logging
import operator
import os
import re
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from pipeline.convert.spark_types import ColumnRule
from pipeline.errors import InputError

__all__ = ["TableJob", "jvm_compression", "length_aggregates", "shapes_from_metrics"]

log = logging.getLogger(__name__)

_SPARK_TYPES = {
    "bool": "boolean",
    "int8": "tinyint",
    "int16": "smallint",
    "int32": "int",
    "int64": "bigint",
    "float32": "float",
    "float64": "double",
}
_CODECS = {"none": "uncompressed", "uncompressed": "uncompressed", "snappy": "snappy", "gzip": "gzip",
           "zstd": "zstd"}  # fmt: skip
_PART = re.compile(r"^part-(\d+)-.*\.parquet$")


def jvm_compression(codec: str) -> str | None:
    """Spark's name for a pyarrow codec, or ``None`` when Spark cannot write it (Python path)."""
    return _CODECS.get(codec)


def _col(i: int) -> Any:
    from pyspark.sql import functions as F

    return F.col(f"_c{i}")


def length_aggregates(rules: Sequence[ColumnRule]) -> list[Any]:
    """Aggregates ``lo_<i>_<level>`` / ``hi_<i>_<level>``: the array lengths of each level."""
    from pyspark.sql import functions as F

    aggs: list[Any] = []
    for i, rule in enumerate(rules):
        if rule.kind != "array":
            continue
        col = _col(i)
        for level in range(rule.depth):
            if level == 0:
                lo = hi = F.when(col.isNotNull(), F.size(col))
            else:
                arr = col
                for _ in range(level - 1):
                    arr = F.flatten(arr)
                inner = F.transform(arr, lambda x: F.when(x.isNotNull(), F.size(x)))
                lo, hi = F.array_min(inner), F.array_max(inner)
            aggs += [F.min(lo).alias(f"lo_{i}_{level}"), F.max(hi).alias(f"hi_{i}_{level}")]
    return aggs


def shapes_from_metrics(rules: Sequence[ColumnRule], stats: dict[str, Any]) -> list[ColumnRule]:
    """The rules with their array shapes set from :func:`length_aggregates`' values.

    Raises:
        InputError: Nested arrays that are not rectangular (inner lengths differ).
    """
    out = []
    for i, rule in enumerate(rules):
        if rule.kind == "array":
            shape: list[int | None] = []
            for level in range(rule.depth):
                lo, hi = stats.get(f"lo_{i}_{level}"), stats.get(f"hi_{i}_{level}")
                fixed = lo is not None and lo == hi and lo >= 0
                if level > 0 and not fixed and lo is not None:
                    raise InputError(
                        f"column {rule.source!r} ({rule.spark_type}) holds nested arrays that are not "
                        f"rectangular: lengths at depth {level + 1} range from {lo} to {hi}",
                        hint="pad or cut the inner arrays to one length in a SELECT, or store them as "
                        "separate columns",
                    )
                shape.append(int(lo) if fixed else None)
            rule = replace(rule, shape=tuple(shape))
        out.append(rule)
    return out


def _may_hold_null(dt: Any, nullable: bool) -> bool:
    from pyspark.sql import types as T

    while True:
        if nullable:
            return True
        if not isinstance(dt, T.ArrayType):
            return False
        dt, nullable = dt.elementType, dt.containsNull


def _holds_null(col: Any, depth: int) -> Any:
    """``col`` is null, or holds a null at any depth below it."""
    from pyspark.sql import functions as F

    if depth == 0:
        return col.isNull()
    return col.isNull() | F.exists(col, lambda x: _holds_null(x, depth - 1))


def _null_aggregates(rules: Sequence[ColumnRule], schema: Any, null_floats: str) -> list[Any]:
    """``[bad]``: how many rows hold a null their field cannot store (``[]`` if none can).

    One aggregate over one ``OR`` of the columns' checks (cheaper than one count per column; the
    Python tasks name the columns if it is not zero).
    """
    from pyspark.sql import functions as F

    checks = []
    for i, rule in enumerate(rules):
        field = schema[f"_c{i}"]
        if rule.kind in ("string", "binary", "strings") or rule.nullable:
            continue
        if not _may_hold_null(field.dataType, field.nullable):
            continue
        if rule.kind == "scalar" and null_floats == "nan" and rule.dtype.startswith("float"):
            continue
        checks.append(_holds_null(_col(i), rule.depth))
    if not checks:
        return []
    return [F.count_if(functools.reduce(operator.or_, checks)).alias("bad")]


def _stored(rule: ColumnRule, i: int, null_floats: str) -> Any:
    """The Spark column holding rule ``i``'s stored values (what the Python path computes)."""
    from pyspark.sql import functions as F

    col = _col(i)
    if rule.kind == "date":
        col = F.unix_date(col).cast("bigint")
    elif rule.kind == "timestamp":
        if rule.spark_type == "timestamp":
            col = F.unix_micros(col)
        else:  # timestamp_ntz: the wall-clock value read as UTC
            col = F.expr(f"timestampdiff(MICROSECOND, TIMESTAMP_NTZ'1970-01-01 00:00:00', _c{i})")
    elif rule.kind in ("scalar", "array"):
        spark_type = _SPARK_TYPES[rule.dtype]
        if rule.kind == "scalar" and null_floats == "nan" and rule.dtype.startswith("float"):
            col = F.coalesce(col, F.lit(float("nan")))
        for _ in range(rule.depth):
            spark_type = f"array<{spark_type}>"
        col = col.cast(spark_type)
    return col.alias(rule.name)


class _Row(dict):  # what write_petastorm reads from each returned row
    def asDict(self) -> dict[str, Any]:
        return dict(self)


class TableJob:
    """What :func:`~pipeline.convert.writer.write_petastorm` collects: the conversion job, measured.

    ``collect()`` runs one Spark job over ``projected`` (columns ``_c0``, ``_c1``, ... as
    :func:`~pipeline.convert.spark_types.projection` makes them) and returns one row per written
    file (:data:`~pipeline.convert.tasks.STATS_SCHEMA`); :attr:`rules` then carry the array
    shapes measured in that job. With ``jvm_codec`` Spark writes the files into
    ``<staging>/spark`` and they are renamed into the dataset folder as ``part-<partition>.parquet``;
    if some row holds a null its field cannot store, they are discarded and the Python tasks run
    instead (they name or skip those rows). Without it (image columns, a codec Spark lacks) the
    Python tasks run directly.

    Args:
        projected: The projected DataFrame.
        rules: One rule per column of ``projected``.
        data_dir: The staging folder's dataset folder (the task's ``data_dir``).
        python_frame: Builds the ``mapInArrow`` frame of the Python tasks over a DataFrame.
        jvm_codec: Spark's codec name (:func:`jvm_compression`), or ``None`` for the Python tasks.
        row_group_bytes: Target row-group size (Spark's ``parquet.block.size``).
        null_floats: ``"error"`` or ``"nan"``.
    """

    def __init__(
        self,
        projected: Any,
        rules: Sequence[ColumnRule],
        *,
        data_dir: str,
        python_frame: Callable[[Any], Any],
        jvm_codec: str | None,
        row_group_bytes: int,
        null_floats: str,
    ) -> None:
        self.projected = projected
        self.rules = list(rules)
        self.data_dir = data_dir
        self.python_frame = python_frame
        self.jvm_codec = jvm_codec
        self.row_group_bytes = row_group_bytes
        self.null_floats = null_floats
        self.path = "python"
        """Which tasks wrote the files: ``"jvm"``, ``"python"`` or ``"python-after-jvm"``."""

    def collect(self) -> list[Any]:
        from pyspark.sql import Observation

        observation = Observation("pipeline_convert_table")
        aggs = length_aggregates(self.rules)
        if self.jvm_codec is not None:
            aggs += _null_aggregates(self.rules, self.projected.schema, self.null_floats)
        frame = self.projected.observe(observation, *aggs) if aggs else self.projected
        if self.jvm_codec is None:
            returned = list(self.python_frame(frame).collect())
            stats = observation.get if aggs else {}
            self.rules = shapes_from_metrics(self.rules, stats)
            return returned
        out = os.path.join(os.path.dirname(self.data_dir), "spark")
        frame = frame.select(*[_stored(rule, i, self.null_floats) for i, rule in enumerate(self.rules)])
        (
            frame.write.option("compression", self.jvm_codec)
            .option("parquet.block.size", str(self.row_group_bytes))
            .option("maxRecordsPerFile", "0")
            .parquet("file://" + out)
        )
        stats = observation.get if aggs else {}
        self.rules = shapes_from_metrics(self.rules, stats)
        bad = int(stats.get("bad") or 0)
        if bad:
            shutil.rmtree(out, ignore_errors=True)
            log.info("%d rows hold nulls their fields cannot store: converting through Python", bad)
            self.path = "python-after-jvm"
            return list(self.python_frame(self.projected).collect())
        self.path = "jvm"
        rows = _move_files(out, self.data_dir)
        shutil.rmtree(out, ignore_errors=True)
        return rows


def _move_files(out: str, data_dir: str) -> list[_Row]:
    """Spark's ``part-<n>-<uuid>.parquet`` files -> ``data_dir/part-<n>.parquet``; their facts."""
    import pyarrow.parquet as pq

    found: dict[int, str] = {}
    for name in os.listdir(out):
        match = _PART.match(name)
        if match is None:
            continue
        pid = int(match.group(1))
        if pid in found:  # maxRecordsPerFile splits a task's output: not this writer's layout
            raise RuntimeError(f"Spark wrote several files for partition {pid} in {out}")
        found[pid] = name

    def move(item: tuple[int, str]) -> _Row:
        pid, name = item
        meta = pq.read_metadata(os.path.join(out, name))
        target = os.path.join(data_dir, f"part-{pid:05d}.parquet")
        if meta.num_rows == 0:
            return _Row(partition=pid, rows=0, row_groups=0, file_bytes=0)
        os.replace(os.path.join(out, name), target)
        return _Row(
            partition=pid,
            rows=meta.num_rows,
            row_groups=meta.num_row_groups,
            file_bytes=os.path.getsize(target),
        )

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(move, sorted(found.items())))
