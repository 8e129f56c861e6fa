"""What runs inside each Spark task of a conversion: process one partition, write its Parquet file.

:class:`PartitionTask` is the function of the conversion's Spark job (``mapPartitions`` over an
RDD of partition ids, :meth:`PartitionTask.run_parts`, or ``mapInArrow``). For every partition id
it receives, it runs the kind's partition function, writes the batches with pyarrow (row groups
of about ``row_group_mb``) and returns one small row (:data:`STATS_SCHEMA`: its file's name,
rows, row groups and bytes, and the records it skipped) to the driver, which writes the dataset's
metadata and ``_skipped.jsonl`` from these rows without opening the files again. Writing in the
task keeps the image bytes out of the JVM (no Arrow -> row -> parquet-mr round trip). Where:

* local DEST: ``<staging>/data/part-<id>.parquet``, written under a temporary name and renamed
  when complete, so a retried or speculative attempt never leaves half a file;
* object-store DEST (``store_url``): straight to ``<DEST>/part-<id>-<attempt>.parquet``, a name
  unique to this task attempt (:mod:`pipeline.storage.commit`), through a filesystem the task
  opens itself from the driver's settings. The driver commits the files named in the results it
  collected and deletes the others; a failed attempt deletes its own file.

Bad input under ``on_error="fail"`` (and any error the kind did not expect) ends the task with
:class:`TaskFailure`: its message carries the record as one marked JSON line, Spark fails the job
(and stops its other tasks), and the driver finds the record in Spark's error
(:func:`failure_in`) to name the input. Nothing travels outside the task's result or its error,
so this works on a cluster without a shared disk.
"""

from __future__ import annotations

import json
import logging
import os
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.convert.common import BadInput, RecordErrors, SkippedRecord
from pipeline.storage import effective_config, resolve, task_defaults
from pipeline.storage.commit import attempt_name, new_attempt

log = logging.getLogger(__name__)

__all__ = ["FAILURE_MARK", "STATS_SCHEMA", "PartitionFn", "PartitionTask", "TaskFailure", "failure_in"]

PartitionFn = Callable[[Sequence[Any], RecordErrors], Iterable[Mapping[str, Sequence[Any]]]]
"""``process(items, errors)`` -> iterable of ``{field: column values}`` batches (runs in executors)."""

STATS_SCHEMA = (
    "partition long, file string, rows long, row_groups long, file_bytes long, skipped array<string>"
)
"""What each task returns to the driver (Spark DDL): its file's name (``null`` when it wrote no
row), rows, row groups and bytes, and the records it skipped (:meth:`SkippedRecord.to_json` lines)."""

_STATS_ARROW = pa.schema(
    [
        ("partition", pa.int64()),
        ("file", pa.string()),
        ("rows", pa.int64()),
        ("row_groups", pa.int64()),
        ("file_bytes", pa.int64()),
        ("skipped", pa.list_(pa.field("element", pa.string()))),
    ]
)

FAILURE_MARK = "pipeline-task-failure:"
"""Starts the line of a :class:`TaskFailure` message that holds the record as JSON."""

_FAILURE_LINE = re.compile(re.escape(FAILURE_MARK) + r" (\{.*\})")


class TaskFailure(Exception):
    """Ends a task on bad input (``on_error="fail"``) or an error the kind did not expect.

    The message is :data:`FAILURE_MARK` and the record as one JSON line; Spark carries it to the
    driver inside the job's error, where :func:`failure_in` finds it again.
    """

    def __init__(self, record: SkippedRecord) -> None:
        super().__init__(f"{FAILURE_MARK} {record.to_json()}")
        self.record = record


def failure_in(text: str) -> SkippedRecord | None:
    """The record of the first :class:`TaskFailure` found in an error's text, else ``None``."""
    for match in _FAILURE_LINE.finditer(text):
        try:
            fields = json.loads(match.group(1))
            return SkippedRecord(str(fields["source"]), str(fields["reason"]), fields.get("record"))
        except (ValueError, KeyError, TypeError):
            continue  # the mark inside something else (e.g. a source line of a traceback)
    return None


def _describe_items(items: Sequence[Any]) -> str:
    """The inputs of a partition, for an error message: its first file and how many more."""
    if not items:
        return "an empty partition"
    first = items[0]
    name = getattr(first, "path", None) or (first[0] if isinstance(first, tuple) and first else first)
    more = f" (or one of the {len(items) - 1} inputs after it in the same task)" if len(items) > 1 else ""
    return f"{name}{more}"


class PartitionTask:
    """The task function of a conversion (picklable; one instance per job).

    Args:
        plan: Partitions of work items; the task for id ``i`` processes ``plan[i]`` (a list,
            or a mapping of the ids this task runs, see :meth:`run_parts`).
        process: The kind's partition function.
        schema: Arrow schema of the rows (``to_arrow_schema(unischema.as_spark_schema())``).
        on_error: ``"fail"`` or ``"skip"``.
        data_dir: Local folder for the Parquet files (the driver's staging folder).
        compression: pyarrow codec name (``"none"``, ``"snappy"``, ``"gzip"``, ``"zstd"``).
        row_group_bytes: Target uncompressed size of a row group.
        store_url: Object-store DEST (``s3://bucket/prefix``): write there instead of
            ``data_dir``, under names unique to the task attempt. Defaults to ``None``.

    The driver's storage settings (:func:`pipeline.storage.effective_config`: endpoint, region,
    static credentials from its environment or ``conf/storage.yaml``) travel with the task as a
    plain dict, never a filesystem object, so that executors open ``s3://`` inputs and DEST
    exactly as the driver does.
    """

    def __init__(
        self,
        plan: Sequence[Sequence[Any]] | Mapping[int, Sequence[Any]],
        process: PartitionFn,
        schema: pa.Schema,
        *,
        on_error: str,
        data_dir: str,
        compression: str,
        row_group_bytes: int,
        store_url: str | None = None,
    ) -> None:
        self.plan = plan
        self.process = process
        self.schema = schema
        self.on_error = on_error
        self.data_dir = data_dir
        self.compression = compression
        self.row_group_bytes = row_group_bytes
        self.store_url = store_url
        self.storage = effective_config().to_dict()

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for pid in batch.column(0).to_pylist():
                if self._run_in_task(int(pid)) is None:
                    return
                yield self.stats_batch(int(pid))

    def _run_in_task(self, pid: int) -> int | None:
        """:meth:`run` with the driver's storage settings; ``None`` when the job was cancelled."""
        with task_defaults(self.storage):
            try:
                return self.run(pid)
            except OSError:
                if self.store_url is not None or os.path.isdir(self.data_dir):
                    raise
                return None  # cancelled: the driver removed the staging folder, nothing to report

    def run_parts(self, parts: Iterable[tuple[int, Sequence[Any]]]) -> Iterator[dict[str, Any]]:
        """RDD form of :meth:`__call__`: ``mapPartitions`` over ``(partition id, items)`` pairs.

        Each Spark task receives only its own items (``sc.parallelize(list(enumerate(plan)))``),
        so the plan is never shipped whole to every task. Yields one :data:`STATS_SCHEMA` dict
        per pair.
        """
        for pid, items in parts:
            self.plan = {int(pid): items}  # this task's items only
            if self._run_in_task(int(pid)) is None:
                return
            yield self.stats_batch(int(pid)).to_pylist()[0]

    def stats_batch(self, pid: int) -> pa.RecordBatch:
        """The row (:data:`STATS_SCHEMA`) returned to the driver after :meth:`run` of ``pid``."""
        rows, groups, size = self.written
        skipped = [r.to_json() for r in self.skipped]
        return pa.RecordBatch.from_pydict(
            {
                "partition": [pid],
                "file": [self.file if rows else None],
                "rows": [rows],
                "row_groups": [groups],
                "file_bytes": [size],
                "skipped": [skipped],
            },
            schema=_STATS_ARROW,
        )

    def _batches(self, pid: int, errors: RecordErrors) -> Iterator[pa.RecordBatch]:
        names = self.schema.names
        for columns in self.process(self.plan[pid], errors):
            arrays = [pa.array(columns[n], type=self.schema.field(n).type) for n in names]
            yield pa.RecordBatch.from_arrays(arrays, schema=self.schema)

    def _target(self, pid: int) -> tuple[pafs.FileSystem, str, str]:
        """``(filesystem, path to write, final name)`` of partition ``pid``'s file in this attempt."""
        if self.store_url is None:
            tmp = os.path.join(self.data_dir, f".part-{pid:05d}.{uuid.uuid4().hex}.tmp")
            return pafs.LocalFileSystem(), tmp, f"part-{pid:05d}.parquet"
        fs, root = resolve(self.store_url, config=self.storage)  # the driver's settings
        name = attempt_name(f"part-{pid:05d}.parquet", new_attempt())
        return fs, f"{root}/{name}", name

    def run(self, pid: int) -> int:
        """Process partition ``pid`` and write its file; returns the number of rows written.

        ``self.file`` is then the file's name, ``self.written`` its ``(rows, row_groups,
        file_bytes)`` and ``self.skipped`` the records skipped under ``on_error="skip"``.

        Raises:
            TaskFailure: Bad input under ``on_error="fail"``, or an error the kind did not expect
                (its record names the partition's inputs). No file is left behind.
            OSError: The file cannot be written (after the storage's own retries); Spark may
                retry the task.
        """
        errors = RecordErrors(self.on_error)
        self.written = (0, 0, 0)
        self.skipped: list[SkippedRecord] = []
        fs, path, self.file = self._target(pid)
        sink: pa.NativeFile | None = None
        writer: pq.ParquetWriter | None = None
        pending: list[pa.RecordBatch] = []
        held = rows = groups = 0

        def flush() -> None:
            nonlocal sink, writer, pending, held, rows, groups
            if not pending:
                return
            table = pa.Table.from_batches(pending, schema=self.schema)
            if writer is None:
                sink = fs.open_output_stream(path)
                writer = pq.ParquetWriter(sink, self.schema, compression=self.compression)
            writer.write_table(table, row_group_size=table.num_rows)
            rows += table.num_rows
            groups += 1
            pending, held = [], 0

        def remove() -> None:  # a failed attempt leaves no file (the driver never lists it anyway)
            if sink is None:
                return  # nothing was opened
            for step in (
                writer.close if writer is not None else None,
                sink.close,
                lambda: fs.delete_file(path),
            ):
                try:
                    if step is not None:
                        step()
                except Exception:  # e.g. the staging folder is gone: the job was cancelled
                    log.debug("cannot remove %s", path, exc_info=True)

        batches = self._batches(pid, errors)
        try:
            while True:
                try:
                    batch = next(batches)
                except StopIteration:
                    break
                except BadInput as exc:
                    raise TaskFailure(exc.record) from None
                except Exception as exc:  # not a known kind of bad input: fail naming the inputs
                    if self.store_url is None and not os.path.isdir(self.data_dir):
                        raise  # the job was cancelled and its staging folder removed (see _run_in_task)
                    where = _describe_items(self.plan[pid])
                    log.error("unexpected error converting %s", where, exc_info=True)
                    reason = f"unexpected {type(exc).__name__}: {exc}"[:500]
                    raise TaskFailure(SkippedRecord(where, reason)) from None
                pending.append(batch)
                held += batch.nbytes
                if held >= self.row_group_bytes:
                    flush()
            flush()
            if writer is not None:
                writer.close()
                size = sink.tell()  # type: ignore[union-attr]
                sink.close()  # type: ignore[union-attr]
                if self.store_url is None:
                    os.replace(path, os.path.join(self.data_dir, self.file))
                self.written = (rows, groups, size)
        except BaseException:
            remove()
            raise
        self.skipped = errors.skipped
        return rows
