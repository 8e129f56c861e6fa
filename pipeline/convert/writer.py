"""Write a Petastorm dataset from work done in Spark tasks, atomically, with metadata and a report.

A kind plans its work as a list of partitions (each a list of picklable items, e.g. files) and
gives a *partition function* that turns one partition into column batches::

    def process(items, errors):            # runs in a Spark executor
        for item in items:
            try:
                value = decode(item)
            except Exception as exc:
                errors.bad(item.path, str(exc))     # raises under on_error=fail
                continue
            ...
        yield {"image": [...], "label": [...]}     # columns already encoded for the Unischema

    result = write_petastorm(spark, kind="images", source=src, dest=dest, schema=schema,
                             plan=plan_partitions(spark, files, [f.size for f in files], settings),
                             process=process, settings=settings, input_bytes=total)

``sc.parallelize(list(enumerate(plan)), n).mapPartitions(...)`` runs exactly one task per partition; each
task writes its own Parquet file with pyarrow (:mod:`pipeline.convert.tasks`), so the output has
one file per non-empty partition (``part-00000.parquet``, ...; on an object store
``part-00000-<attempt>.parquet``), in plan order. Values must already be
in their stored form: bytes for image and ndarray codecs (``field.codec.encode(field, value)``),
plain Python/numpy scalars for ``ScalarCodec`` fields. Yield batches of a few MB at most.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.convert.common import ConversionResult, ConvertConfig, SkippedRecord
from pipeline.convert.listing import choose_partitions, split_by_bytes
from pipeline.convert.progress import ConversionProgress
from pipeline.convert.provenance import build_provenance, provenance_metadata
from pipeline.convert.staging import StagedOutput
from pipeline.convert.task_failures import BadInputWatch, quiet_task_failures, task_failure
from pipeline.convert.tasks import PartitionFn, PartitionTask
from pipeline.errors import InputError, PipelineError
from pipeline.format import as_unischema
from pipeline.format.metadata import format_metadata, write_common_metadata
from pipeline.spark import cancel_job_group
from pipeline.storage.publish import SKIPPED_REPORT, ObjectStoreDest

__all__ = ["PartitionFn", "plan_partitions", "write_petastorm"]

log = logging.getLogger(__name__)


def plan_partitions(
    spark: Any, items: Sequence[Any], sizes: Sequence[int], settings: ConvertConfig
) -> list[list[Any]]:
    """Split ``items`` (sorted) into contiguous partitions balanced by ``sizes`` (bytes).

    The number of partitions follows :func:`pipeline.convert.listing.choose_partitions`:
    ``settings.partitions`` if set, else input bytes / ``settings.file_mb`` but at least Spark's
    default parallelism, and never more than one per item.
    """
    n = choose_partitions(
        sum(sizes),
        len(items),
        file_mb=settings.file_mb,
        parallelism=spark.sparkContext.defaultParallelism,
        fixed=settings.partitions,
    )
    return [list(items[a:b]) for a, b in split_by_bytes(sizes, n)]


@dataclass(frozen=True)
class _Written:
    """One Parquet file a task wrote: its name, rows, row groups, bytes, and whether it is local."""

    name: str
    rows: int
    row_groups: int
    size: int
    local: bool = True


def _written_files(
    data_dir: Path, returned: Sequence[Mapping[str, Any]], remote: ObjectStoreDest | None = None
) -> list[_Written]:
    """The data files, in name order, from the rows the tasks returned (``tasks.STATS_SCHEMA``).

    No file is opened: names, rows and row groups come from the tasks. A row's ``file`` is in
    ``data_dir`` (the staging folder), or already in the store of ``remote`` (an object-store
    DEST). A row without one (Spark's own writer in ``convert table``) stands for
    ``part-<partition>.parquet`` in ``data_dir``, uploaded to ``remote`` under an attempt name. A
    row without ``row_groups`` (an older ``frame_for``) gets its file's footer read instead.
    """
    files = []
    for row in returned:
        if not row["rows"]:
            continue
        name = row.get("file")
        local = name is None or remote is None
        name = name or f"part-{int(row['partition']):05d}.parquet"
        if row.get("row_groups") is None:  # no facts from the task: read the footer
            if local:
                footer, size = pq.read_metadata(data_dir / name), (data_dir / name).stat().st_size
            else:
                footer, size = remote.footer(name)  # type: ignore[union-attr]
            files.append(_Written(name, footer.num_rows, footer.num_row_groups, size, local))
        else:
            files.append(
                _Written(name, int(row["rows"]), int(row["row_groups"]), int(row["file_bytes"]), local)
            )
    if remote is not None and any(f.local for f in files):
        store = remote
        with ThreadPoolExecutor(8, "pipeline-upload") as pool:
            uploaded = pool.map(lambda f: store.upload(data_dir / f.name) if f.local else f.name, files)
            files = [
                dataclasses.replace(f, name=n, local=False) for f, n in zip(files, uploaded, strict=True)
            ]
    return sorted(files, key=lambda f: f.name)


def _metadata_bytes(arrow_schema: Any, metadata: Mapping[bytes, bytes]) -> bytes:
    """``_common_metadata`` as bytes (as :func:`~pipeline.format.metadata.write_common_metadata` writes it)."""
    merged = {**(arrow_schema.metadata or {}), **metadata}
    sink = pa.BufferOutputStream()
    pq.write_metadata(arrow_schema.with_metadata(merged), sink)
    return bytes(sink.getvalue().to_pybytes())


def _skipped_records(returned: Sequence[Mapping[str, Any]]) -> list[SkippedRecord]:
    """The records the tasks skipped, from their result rows (``tasks.STATS_SCHEMA``), sorted."""
    records = [SkippedRecord(**json.loads(line)) for row in returned for line in row.get("skipped") or ()]
    return sorted(records, key=lambda r: (r.source, str(r.record)))


def _skipped_report(stage: StagedOutput) -> str:
    """Where ``_skipped.jsonl`` ended up: a local path, or the object-store URL."""
    if getattr(stage, "remote", None) is None:
        return str(Path(stage.dest) / SKIPPED_REPORT)
    return f"{stage.url}/{SKIPPED_REPORT}"


def write_petastorm(
    spark: Any,
    *,
    kind: str,
    source: str,
    dest: str,
    schema: Any,
    plan: Sequence[Sequence[Any]],
    process: PartitionFn,
    settings: ConvertConfig,
    input_bytes: int,
    options: Any = None,
    extra: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
    auto_compression: str = "snappy",
    started: float | None = None,
    frame_for: Callable[[PartitionTask], Any] | None = None,
    final_schema: Callable[[], Any] | None = None,
) -> ConversionResult:
    """Run ``process`` over ``plan`` in Spark tasks and write the result as a Petastorm dataset.

    Steps: stage next to DEST; run the tasks (each writes ``part-<id>.parquet`` and returns its
    facts and the records it skipped); write the skipped records into ``_skipped.jsonl``; write
    ``_common_metadata`` in one write with the Petastorm format's keys (the Unischema pickle
    petastorm reads, the per-file row-group index; :mod:`pipeline.format`) and the provenance,
    from the rows, row groups and bytes each task returned (no data file is opened again); move
    into DEST. Nothing appears at DEST unless every step succeeded. For an object-store DEST the
    tasks write their files straight to DEST under names unique to the task attempt, and
    ``_common_metadata`` (listing the files of the collected results) is the commit point
    (``docs/storage.md``). No petastorm is needed; petastorm's ``make_reader`` reads the result.

    Args:
        spark: The SparkSession.
        kind: ``"images"``, ``"text"``, ``"hdf5"``, ... (provenance and summary).
        source: SRC as the user gave it.
        dest: DEST path or ``file://`` URL.
        schema: The ``Unischema`` of the rows ``process`` yields (:class:`pipeline.format.Unischema`,
            or petastorm's).
        plan: Partitions of picklable work items, e.g. from :func:`plan_partitions`.
        process: Picklable partition function (a module-level function or ``functools.partial``).
        settings: Row-group size, compression, bad-input policy, overwrite.
        input_bytes: Size of the input, for the summary.
        options: The kind's options dataclass, recorded in the provenance. Defaults to ``None``.
        extra: Kind-specific facts for the provenance and ``ConversionResult.extra`` (class
            names, tokenizer, ...), or a callable returning them that is called once the Spark
            job has finished (for counts summed in the tasks, e.g. Spark accumulators).
            Defaults to ``None``.
        auto_compression: Codec used when ``settings.compression`` is ``"auto"``. Defaults to
            ``"snappy"``.
        started: ``time.perf_counter()`` when the conversion began (before listing), for
            ``seconds``. Defaults to ``None`` (now).
        frame_for: Builds the Spark DataFrame whose ``collect()`` runs the tasks (e.g.
            ``df.mapInArrow`` over a DataFrame's own partitions, :mod:`pipeline.convert.table`);
            its rows should follow :data:`~pipeline.convert.tasks.STATS_SCHEMA`
            (:meth:`PartitionTask.stats_batch`); with only ``partition`` and ``rows`` the
            files' footers are read. Defaults to ``None``: one task per partition of ``plan``
            of an RDD of ``(partition id, items)``.
        final_schema: Called once the job has finished, returns the ``Unischema`` to record when
            the tasks measured part of it (``convert table``'s array shapes); its Arrow schema must
            be ``schema``'s. Defaults to ``None`` (``schema``).

    Returns:
        The :class:`ConversionResult` (also logged).

    Raises:
        InputError: Bad input under ``on_error="fail"``, naming the file and reason; or no
            rows were written.
        DatasetError: DEST exists and ``settings.overwrite`` is off.
    """
    from pyspark.sql.pandas.types import to_arrow_schema

    started = time.perf_counter() if started is None else started
    if not plan:
        raise InputError(f"nothing to convert in {source}", hint="check SRC")
    schema = as_unischema(schema)
    spark_schema = schema.as_spark_schema()
    arrow_schema = to_arrow_schema(spark_schema)
    codec = auto_compression if settings.compression == "auto" else settings.compression
    with StagedOutput(dest, overwrite=settings.overwrite, source=source) as stage:
        if stage.remote is None or frame_for is not None:  # the tasks (or Spark's writer) write here
            stage.data_dir.mkdir(parents=True)
        task = PartitionTask(
            [list(p) for p in plan] if frame_for is not None else [],  # else: items travel with the RDD
            process,
            arrow_schema,
            on_error=settings.on_error,
            data_dir=str(stage.data_dir),
            compression=codec,
            row_group_bytes=settings.row_group_mb * 1024 * 1024,
            store_url=None if stage.remote is None else stage.remote.url,  # tasks write to DEST itself
        )
        if frame_for is not None:
            frame = frame_for(task)
        else:  # an RDD of (id, items): no SQL planning before the first task; each task gets its items
            parts = [(pid, list(items)) for pid, items in enumerate(plan)]
            frame = spark.sparkContext.parallelize(parts, len(parts)).mapPartitions(task.run_parts)
        group = f"pipeline-convert-{stage.root.name}"
        spark.sparkContext.setJobGroup(group, f"pipeline convert {kind}: {source}", interruptOnCancel=True)
        progress = ConversionProgress(
            spark,
            group,
            what=kind,
            total_tasks=0 if frame_for is not None else len(plan),
            total_bytes=input_bytes,
        )
        watch = BadInputWatch(spark, group)  # a cluster retries failed tasks: not those of bad input
        try:
            with progress, quiet_task_failures(spark), watch:
                try:
                    rows_out = frame.collect()
                except Exception:  # a task failed: Spark stops the others; wait for them, quietly
                    cancel_job_group(spark, group)
                    raise
            returned = [row if isinstance(row, dict) else row.asDict() for row in rows_out]
            written = sum(row["rows"] for row in returned)
            skipped = _skipped_records(returned)
            log.debug("Spark write done after %.2f s", time.perf_counter() - started)
            if not written:
                raise InputError(
                    f"no rows were converted from {source}"
                    + (
                        f": all {len(skipped)} inputs were bad, e.g. {skipped[0].describe()}"
                        if skipped
                        else ""
                    ),
                    hint="check SRC and the options",
                )
        except PipelineError:
            raise
        except Exception as exc:  # bad input under on_error="fail" (the task's record), or Spark
            raise task_failure(exc, watch.seen) from None
        except BaseException:  # Ctrl-C / SIGTERM: stop our tasks before the staging folder goes
            cancel_job_group(spark, group)  # and wait for its tasks: they write into the staging folder
            raise  # (or DEST's store, whose attempt files the stage deletes on exit)
        finally:
            spark.sparkContext._jsc.clearJobGroup()  # also clears the description

        report = "".join(r.to_json() + "\n" for r in skipped).encode("utf-8")
        for record in skipped[:20]:
            log.warning("skipped %s", record.describe())
        if len(skipped) > 20:
            log.warning("... and %d more skipped, see %s", len(skipped) - 20, SKIPPED_REPORT)
        files = _written_files(stage.data_dir, returned, stage.remote)
        rows = sum(f.rows for f in files)
        row_groups = sum(f.row_groups for f in files)
        counts = {"rows": rows, "skipped": len(skipped), "input_bytes": input_bytes, "files": len(files)}
        facts = dict((extra() if callable(extra) else extra) or {})
        record = build_provenance(
            kind=kind,
            source=source,
            options=options,
            settings=settings,
            master=spark.sparkContext.master,
            counts=counts,
            extra=facts,
        )
        # one write: the format's keys -- the Unischema pickle and petastorm's row-group index
        # (what materialize_dataset computes in an extra Spark job), from what the tasks
        # returned -- and the provenance
        metadata = {
            **format_metadata(
                final_schema() if final_schema else schema, {f.name: f.row_groups for f in files}
            ),
            **provenance_metadata(record),
        }
        if stage.remote is None:
            if skipped:
                (stage.data_dir / SKIPPED_REPORT).write_bytes(report)
            write_common_metadata(stage.data_dir, arrow_schema, metadata)
            output_bytes = sum(f.size for f in files) + sum(
                p.stat().st_size for p in stage.data_dir.iterdir() if p.is_file() and p.suffix != ".parquet"
            )
            stage.commit()
        else:  # the data files are in the store already: _skipped.jsonl, then the commit point
            common = _metadata_bytes(arrow_schema, metadata)
            keep = [f.name for f in files]
            if skipped:
                stage.remote.put(SKIPPED_REPORT, report)
                keep.append(SKIPPED_REPORT)
            stage.publish(common, keep)
            output_bytes = sum(f.size for f in files) + len(common) + (len(report) if skipped else 0)
        log.debug("metadata and commit done after %.2f s", time.perf_counter() - started)
    result = ConversionResult(
        kind=kind,
        source=source,
        output=stage.url,  # file:///... or the object-store URL
        rows=rows,
        skipped=len(skipped),
        input_bytes=input_bytes,
        output_bytes=output_bytes,
        files=len(files),
        row_groups=row_groups,
        seconds=time.perf_counter() - started,
        skipped_report=_skipped_report(stage) if skipped else None,
        extra=facts,
    )
    log.info("%s", result.summary())
    return result
