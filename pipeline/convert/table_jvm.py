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
* per array column, how many of its arrays are empty.

Whether some row holds a null its field cannot store is read from the Parquet footers Spark just
wrote, not computed per row: every column chunk's statistics carry ``null_count``, and for a
list column (Spark's three-level lists) that count is one per null array, per empty array and
per null element, so ``null_count - empty arrays`` is the number of nulls the field cannot store.
Only arrays of arrays (whose inner empty arrays the footers cannot tell from nulls) are checked
in the job itself (``exists``, slower: Spark interprets higher-order functions row by row). A
footer without a null count (statistics turned off) is answered by one aggregation over the
written files.

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

__all__ = [
    "TableJob",
    "bad_values",
    "footer_nulls",
    "jvm_compression",
    "length_aggregates",
    "null_checks",
    "plain_float_options",
    "shapes_from_metrics",
]

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


def _named(rules: Sequence[ColumnRule]) -> Callable[[int], Any]:
    """Column ``i`` of the stored frame (named after its rule)."""
    from pyspark.sql import functions as F

    return lambda i: F.col("`" + rules[i].name.replace("`", "``") + "`")


def length_aggregates(rules: Sequence[ColumnRule], col_of: Callable[[int], Any] = _col) -> list[Any]:
    """Aggregates ``lo_<i>_<level>`` / ``hi_<i>_<level>``: the array lengths of each level.

    ``col_of(i)`` is rule ``i``'s column (default ``_c<i>`` of the projected frame).
    """
    from pyspark.sql import functions as F

    aggs: list[Any] = []
    for i, rule in enumerate(rules):
        if rule.kind != "array":
            continue
        col = col_of(i)
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


def null_checks(rules: Sequence[ColumnRule], schema: Any, null_floats: str) -> dict[int, str]:
    """The columns whose nulls must be counted, and how: ``"footer"`` or ``"job"``.

    A column needs no check when its field stores nulls (strings, bytes), when the schema says it
    holds none, or when nulls become NaN (``null_floats="nan"``). Scalars and one-level arrays
    are counted from the written footers (:func:`footer_nulls`); deeper arrays in the job.
    """
    checks: dict[int, str] = {}
    for i, rule in enumerate(rules):
        field = schema[f"_c{i}"]
        if rule.kind in ("string", "binary", "strings") or rule.nullable:
            continue
        if not _may_hold_null(field.dataType, field.nullable):
            continue
        if rule.kind == "scalar" and null_floats == "nan" and rule.dtype.startswith("float"):
            continue
        checks[i] = "footer" if rule.depth <= 1 else "job"
    return checks


def _check_aggregates(
    rules: Sequence[ColumnRule], checks: dict[int, str], col_of: Callable[[int], Any]
) -> list[Any]:
    """``empty_<i>`` (empty arrays of a footer-checked array column) and ``bad`` (rows of the
    job-checked columns holding a null: one aggregate over one ``OR``)."""
    from pyspark.sql import functions as F

    aggs = [
        F.count_if(F.size(col_of(i)) == 0).alias(f"empty_{i}")
        for i, how in checks.items()
        if how == "footer" and rules[i].depth == 1
    ]
    in_job = [_holds_null(col_of(i), rules[i].depth) for i, how in checks.items() if how == "job"]
    if in_job:
        aggs.append(F.count_if(functools.reduce(operator.or_, in_job)).alias("bad"))
    return aggs


def footer_nulls(footers: Sequence[Any], columns: Sequence[int], width: int) -> dict[int, int] | None:
    """Per column index, the sum of ``null_count`` over every row group of ``footers``.

    ``None`` when some footer does not have ``width`` leaf columns or some chunk has no null
    count (statistics turned off): the caller counts in a job instead.
    """
    out = dict.fromkeys(columns, 0)
    for meta in footers:
        if meta.num_columns != width:
            return None
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            for i in columns:
                stats = group.column(i).statistics
                if stats is None or not stats.has_null_count:
                    return None
                out[i] += stats.null_count
    return out


def bad_values(
    rules: Sequence[ColumnRule], checks: dict[int, str], stats: dict[str, Any], footers: Sequence[Any]
) -> int | None:
    """How many nulls the fields cannot store (``0``: none), from the job's metrics and the
    written footers; ``None`` when the footers cannot tell."""
    footer_checked = [i for i, how in checks.items() if how == "footer"]
    nulls = footer_nulls(footers, footer_checked, len(rules)) if footer_checked else {}
    if nulls is None:
        return None
    bad = int(stats.get("bad") or 0)
    for i, count in nulls.items():
        empty = int(stats.get(f"empty_{i}") or 0) if rules[i].depth == 1 else 0
        if count < empty:  # not the three-level lists this count assumes
            return None
        bad += count - empty
    return bad


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


def plain_float_options(rules: Sequence[ColumnRule]) -> list[str]:
    """Writer options that turn off dictionary encoding for float and double columns.

    parquet-java tries a dictionary for every column chunk and, for continuous values (most
    features), finds it no smaller than plain values only at the end of the chunk, then encodes
    every value again: about a sixth of the write's CPU time on a table of float features. Plain
    floats are what pyarrow reads fastest too. Integer, string and binary columns keep it.
    """
    keys = []
    for rule in rules:
        if rule.kind in ("scalar", "array") and rule.dtype.startswith("float"):
            keys.append(f"parquet.enable.dictionary#{rule.name}" + ".list.element" * rule.depth)
    return keys


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
        if self.jvm_codec is None:
            frame = self.projected.observe(observation, *aggs) if aggs else self.projected
            returned = list(self.python_frame(frame).collect())
            self.rules = shapes_from_metrics(self.rules, observation.get if aggs else {})
            return returned
        checks = null_checks(self.rules, self.projected.schema, self.null_floats)
        # measured on the stored columns (same lengths and nulls): Spark reads and casts in one
        # generated stage, the metrics node sees the narrower rows
        stored = self.projected.select(
            *[_stored(rule, i, self.null_floats) for i, rule in enumerate(self.rules)]
        )
        col_of = _named(self.rules)
        aggs = length_aggregates(self.rules, col_of) + _check_aggregates(self.rules, checks, col_of)
        frame = stored.observe(observation, *aggs) if aggs else stored
        out = os.path.join(os.path.dirname(self.data_dir), "spark")
        writer = (
            frame.write.option("compression", self.jvm_codec)
            .option("parquet.block.size", str(self.row_group_bytes))
            .option("maxRecordsPerFile", "0")
        )
        for key in plain_float_options(self.rules):
            writer = writer.option(key, "false")
        writer.parquet("file://" + out)
        stats = observation.get if aggs else {}
        self.rules = shapes_from_metrics(self.rules, stats)
        footers = _read_footers(out)
        bad = bad_values(self.rules, checks, stats, [meta for _, meta in footers.values()]) if checks else 0
        if bad is None:  # footers without null counts: count in the written files
            bad = self._count_bad(out, checks, stored.schema)
        if bad:
            shutil.rmtree(out, ignore_errors=True)
            log.info("%d nulls in fields that cannot store them: converting through Python", bad)
            self.path = "python-after-jvm"
            return list(self.python_frame(self.projected).collect())
        self.path = "jvm"
        rows = _move_files(out, self.data_dir, footers)
        shutil.rmtree(out, ignore_errors=True)
        return rows

    def _count_bad(self, out: str, checks: dict[int, str], schema: Any) -> int:
        """Rows of the written files holding a null in a checked column (one aggregation)."""
        from pyspark.sql import functions as F

        log.debug("the written footers hold no null counts: counting nulls in a Spark job")
        written = self.projected.sparkSession.read.schema(schema).parquet("file://" + out)
        names = written.columns
        conds = [
            _holds_null(F.col("`" + names[i].replace("`", "``") + "`"), self.rules[i].depth) for i in checks
        ]
        return int(written.select(F.count_if(functools.reduce(operator.or_, conds))).first()[0])


def _read_footers(out: str) -> dict[int, tuple[str, Any]]:
    """Partition id -> (file name, Parquet footer) of Spark's ``part-<n>-<uuid>.parquet`` files."""
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
    with ThreadPoolExecutor(max_workers=8) as pool:
        metas = pool.map(lambda name: pq.read_metadata(os.path.join(out, name)), found.values())
        return dict(zip(found, zip(found.values(), metas, strict=True), strict=True))


def _move_files(out: str, data_dir: str, footers: dict[int, tuple[str, Any]]) -> list[_Row]:
    """Spark's files -> ``data_dir/part-<n>.parquet``; their facts, from the footers read."""
    rows = []
    for pid, (name, meta) in sorted(footers.items()):
        if meta.num_rows == 0:
            rows.append(_Row(partition=pid, rows=0, row_groups=0, file_bytes=0))
            continue
        target = os.path.join(data_dir, f"part-{pid:05d}.parquet")
        os.replace(os.path.join(out, name), target)
        rows.append(
            _Row(
                partition=pid,
                rows=meta.num_rows,
                row_groups=meta.num_row_groups,
                file_bytes=os.path.getsize(target),
            )
        )
    return rows
