"""Spark tables, SQL queries and DataFrames -> a Petastorm dataset, under an explicit type policy.

``SRC`` is a table name (``db.table``, a Delta or Hive table, a temporary view), a query with
``--sql``, or a Parquet path with ``--parquet``. The type policy (which Spark type becomes which
field, nulls, arrays, vectors, images) is in :mod:`pipeline.convert.spark_types` and
``docs/tables.md``.

Without an image column Spark converts the columns with SQL expressions and writes the Parquet
files itself (:mod:`pipeline.convert.table_jvm`); with one, each task of the DataFrame's own
partitions converts its rows with Arrow in Python and writes one Parquet file (``mapInArrow``,
:mod:`pipeline.convert.table_batches`). Either way the output has one file per non-empty
partition, in partition order, and array lengths are measured in the same job. A column with no
rule is refused before any Spark job runs.

Library use::

    summary = pipeline.convert_dataframe(df, "data/features", float32=True)
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pipeline.config import load_config
from pipeline.convert.common import ConversionResult, ConvertConfig
from pipeline.convert.imaging import FITS
from pipeline.errors import ConfigError, InputError, PipelineError

__all__ = [
    "TableOptions",
    "convert_dataframe",
    "convert_table",
    "require_classic",
    "split_options",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TableOptions:
    """How a table's columns are stored (``conf/convert_table.yaml``, section ``table`` of ``--config``)."""

    float32: bool = False
    """Store double (and decimal, vector) values as float32. Defaults to ``False``."""
    decimal: Literal["float64", "error"] = "float64"
    """Decimals: stored as double (``float64``) or refused (``error``). Defaults to ``"float64"``."""
    null_floats: Literal["error", "nan"] = "error"
    """A null float/double scalar: bad input (``error``) or stored as NaN (``nan``). Defaults to ``"error"``."""
    image_column: str | None = None
    """Binary column of JPEG/PNG bytes (or the ``image`` source's struct) stored as an image
    field. Defaults to ``None``."""
    image_size: tuple[int, int] | None = None
    """``(height, width)`` of stored images; ``None`` keeps each image's size. Defaults to ``None``."""
    image_fit: Literal["center-crop", "resize", "pad"] = "center-crop"
    """How an image is fitted to ``image_size``. Defaults to ``"center-crop"``."""
    image_encoding: Literal["auto", "png", "jpeg"] = "auto"
    """Stored encoding; ``auto`` = ``jpeg`` when every image is a JPEG, else ``png``. Defaults to ``"auto"``."""
    jpeg_quality: int = 95
    """JPEG quality (1-100) when images are re-encoded as JPEG. Defaults to ``95``."""
    read_as: Literal["table", "sql", "parquet"] = "table"
    """How ``convert table`` reads SRC: a table name, a query (``--sql``) or a Parquet path
    (``--parquet``); not used by :func:`convert_dataframe`. Defaults to ``"table"``."""

    def __post_init__(self) -> None:
        if self.image_size is not None and (len(self.image_size) != 2 or min(self.image_size) < 1):
            raise ConfigError(
                f"image_size must be [height, width] with positive integers, got {self.image_size!r}"
            )
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")
        if self.image_fit not in FITS:
            raise ConfigError(f"image_fit must be one of {', '.join(FITS)}, got {self.image_fit!r}")


def split_options(options: dict[str, Any]) -> tuple[TableOptions, ConvertConfig]:
    """Keyword options of :func:`convert_dataframe` -> ``(TableOptions, ConvertConfig)``.

    Raises:
        ConfigError: A key belongs to neither, naming it and the known keys.
    """
    table_keys = {f.name for f in dataclasses.fields(TableOptions)}
    settings_keys = {f.name for f in dataclasses.fields(ConvertConfig)}
    unknown = sorted(set(options) - table_keys - settings_keys)
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)}",
            hint=f"known: {', '.join(sorted(table_keys | settings_keys))}",
        )
    defaults = load_config(TableOptions, "convert_table.yaml")
    settings = load_config(ConvertConfig, "convert.yaml")
    table = dataclasses.replace(defaults, **{k: v for k, v in options.items() if k in table_keys})
    settings = dataclasses.replace(settings, **{k: v for k, v in options.items() if k in settings_keys})
    return table, settings


class PartitionNames(Mapping[int, list[str]]):
    """The "items" of partition ``pid`` of a DataFrame, for the Python tasks' messages (picklable)."""

    def __init__(self, source: str) -> None:
        self.source = source

    def __getitem__(self, pid: int) -> list[str]:
        return [f"{self.source} (partition {pid})"]

    def __iter__(self) -> Iterator[int]:
        return iter(())

    def __len__(self) -> int:
        return 0


def require_classic(df: Any) -> None:
    """Refuse a Spark Connect DataFrame with a clear error, before any work.

    The conversion drives its job through the ``SparkContext`` (job group, progress, cancel) and
    reads the written footers on the driver's filesystem, which a Connect client has neither of.

    Raises:
        PipelineError: ``df`` belongs to a Spark Connect session (``sc://...`` or ``spark.api.mode=connect``).
    """
    if type(df).__module__.startswith("pyspark.sql.connect"):
        raise PipelineError(
            "converting a DataFrame needs a classic SparkSession; this one comes from a Spark Connect "
            "session, which is not supported",
            hint="use a classic session (SparkSession.builder.master(...), not .remote(...) or "
            "spark.api.mode=connect), or write the DataFrame with df.write.parquet(PATH) and run "
            "`pipeline convert table --parquet PATH DEST`",
        )


def _load_source(spark: Any, src: str, kind: str) -> Any:
    try:
        if kind == "sql":
            return spark.sql(src)
        if kind == "parquet":
            return spark.read.parquet(src)
        return spark.table(src)
    except Exception as exc:  # AnalysisException and friends: the user named something wrong
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        what = {"sql": "query", "parquet": "Parquet path", "table": "table"}[kind]
        raise InputError(
            f"cannot read {what} {src!r}: {first[:400]}",
            hint="check the name, path or query (pass --sql for a query, --parquet for a path)",
        ) from None


def convert_table(
    spark: Any,
    src: str,
    dest: str,
    options: TableOptions | None = None,
    *,
    settings: ConvertConfig | None = None,
) -> ConversionResult:
    """Convert a table, query or Parquet path (``options.read_as``) into a dataset at ``dest``.

    The library call of ``pipeline convert table``; see :func:`convert_dataframe_result`.
    """
    started = time.perf_counter()
    options = options or load_config(TableOptions, "convert_table.yaml")
    df = _load_source(spark, src, options.read_as)
    return convert_dataframe_result(
        df, dest, options, settings=settings, source=src, source_kind=options.read_as, started=started
    )


def convert_dataframe_result(
    df: Any,
    dest: str,
    options: TableOptions | None = None,
    *,
    settings: ConvertConfig | None = None,
    source: str = "DataFrame",
    source_kind: str = "dataframe",
    started: float | None = None,
    fingerprint: str | None = None,
) -> ConversionResult:
    """Convert ``df`` into a Petastorm dataset at ``dest``; returns the full :class:`ConversionResult`.

    Args:
        df: A classic PySpark DataFrame (not Spark Connect's).
        dest: Output folder or ``file://`` URL; must not exist unless ``settings.overwrite``.
        options: The type policy's options. Defaults to ``conf/convert_table.yaml``.
        settings: Row groups, compression, bad-input policy, ``partitions`` (coalesce or
            repartition the DataFrame to that many tasks/files). Defaults to ``conf/convert.yaml``.
        source: Table name, query or path, for the provenance. Defaults to ``"DataFrame"``.
        source_kind: ``"table"``, ``"sql"``, ``"parquet"`` or ``"dataframe"``. Defaults to ``"dataframe"``.
        started: ``time.perf_counter()`` at the start, for ``seconds``. Defaults to ``None`` (now).
        fingerprint: The plan fingerprint if already computed. Defaults to ``None``.

    Raises:
        InputError: A column has no rule (before any Spark job), or bad rows under ``on_error="fail"``.
        DatasetError: DEST exists and ``overwrite`` is off.
        PipelineError: ``df`` is a Spark Connect DataFrame (:func:`require_classic`).
    """
    from pipeline.convert.spark_types import images_all_jpeg, plan_columns, projection, unischema_for
    from pipeline.convert.staging import check_destination
    from pipeline.convert.table_batches import DataFrameTask, ImageRule, convert_batches
    from pipeline.convert.table_fingerprint import plan_fingerprint
    from pipeline.convert.table_jvm import TableJob, jvm_compression
    from pipeline.convert.tasks import STATS_SCHEMA
    from pipeline.convert.writer import write_petastorm

    require_classic(df)
    started = time.perf_counter() if started is None else started
    options = options or load_config(TableOptions, "convert_table.yaml")
    settings = settings or load_config(ConvertConfig, "convert.yaml")
    check_destination(dest, overwrite=settings.overwrite, source=source if source_kind == "parquet" else None)
    fingerprint = fingerprint or plan_fingerprint(df)
    rules = plan_columns(
        df.schema, float32=options.float32, decimal=options.decimal, image_column=options.image_column
    )
    projected = df.select(*projection(rules))
    if settings.partitions is not None:
        current = projected.rdd.getNumPartitions()
        if settings.partitions < current:
            projected = projected.coalesce(settings.partitions)
        elif settings.partitions > current:
            projected = projected.repartition(settings.partitions)
    encoding = options.image_encoding
    if encoding == "auto":
        encoding = "jpeg" if images_all_jpeg(projected, rules) else "png"
    auto_compression = "none" if options.image_column else "snappy"
    codec = auto_compression if settings.compression == "auto" else settings.compression
    schema_of = functools.partial(
        unischema_for,
        image_size=options.image_size,
        image_encoding=encoding,
        jpeg_quality=options.jpeg_quality,
    )
    image = ImageRule(options.image_size, options.image_fit, encoding, options.jpeg_quality)
    process = functools.partial(
        convert_batches,
        rules=rules,
        source=source,
        null_floats=options.null_floats,
        image=image,
    )
    jobs: list[TableJob] = []

    def frame_for(task: Any) -> TableJob:
        # the Python tasks name partition ``pid`` of the DataFrame for an unexpected error; the
        # number of partitions is not asked for (with adaptive execution that runs the shuffles)
        task.plan = PartitionNames(source)
        job = TableJob(
            projected,
            rules,
            data_dir=task.data_dir,
            python_frame=lambda frame: frame.mapInArrow(DataFrameTask(task), STATS_SCHEMA),
            jvm_codec=None if options.image_column else jvm_compression(codec),
            row_group_bytes=task.row_group_bytes,
            null_floats=options.null_floats,
        )
        jobs.append(job)
        return job

    def facts() -> dict[str, Any]:
        policy = {
            r.name: {
                "from": r.source,
                "spark_type": r.spark_type,
                "kind": r.kind,
                **({"unit": r.unit} if r.unit else {}),
            }
            for r in jobs[-1].rules
        }
        return {
            "source_kind": source_kind,
            "plan_fingerprint": fingerprint,
            "columns": policy,
            "written_by": jobs[-1].path,
        }

    log.info("converting %s (%d columns) -> %s", source, len(rules), dest)
    return write_petastorm(
        df.sparkSession,
        kind="table",
        source=source,
        dest=dest,
        schema=schema_of(rules),
        plan=[[source]],  # replaced by PartitionNames in frame_for
        process=process,  # type: ignore[arg-type]
        settings=settings,
        input_bytes=0,
        options=dataclasses.replace(options, image_encoding=encoding),
        extra=facts,
        auto_compression=auto_compression,
        started=started,
        frame_for=frame_for,
        final_schema=lambda: schema_of(jobs[-1].rules),
    )


def convert_dataframe(
    df: Any,
    dest: str,
    *,
    overwrite: bool = False,
    float32: bool = False,
    image_column: str | None = None,
    on_error: Literal["fail", "skip"] = "fail",
    **options: Any,
) -> dict[str, Any]:
    """Convert a Spark DataFrame into a Petastorm dataset at ``dest``; returns the summary dict.

    Args:
        df: The DataFrame (a table, a query, features joined in SQL, ...).
        dest: Output folder or ``file://`` URL. Must not exist unless ``overwrite``.
        overwrite: Replace an existing dataset at ``dest``. Defaults to ``False``.
        float32: Store double values as float32. Defaults to ``False``.
        image_column: Binary column of JPEG/PNG bytes to store as an image field. Defaults to ``None``.
        on_error: ``"fail"`` stops at the first row that cannot be stored, naming the column;
            ``"skip"`` leaves it out and lists it in ``DEST/_skipped.jsonl``. Defaults to ``"fail"``.
        **options: More :class:`TableOptions` (``decimal``, ``null_floats``, ``image_size``,
            ``image_fit``, ``image_encoding``, ``jpeg_quality``) and
            :class:`~pipeline.convert.common.ConvertConfig` fields (``row_group_mb``,
            ``compression``, ``partitions``).

    Returns:
        The same dict as ``pipeline convert table --json``: ``rows``, ``skipped``, ``output``,
        ``seconds``, ... and ``extra`` with the plan fingerprint and the per-column rules.
    """
    table, settings = split_options(
        {
            **options,
            "float32": float32,
            "image_column": image_column,
            "on_error": on_error,
            "overwrite": overwrite,
        }
    )
    return convert_dataframe_result(df, dest, table, settings=settings).to_dict()
