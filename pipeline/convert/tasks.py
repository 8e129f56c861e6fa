"""What runs inside each Spark task of a conversion: process one partition, write its Parquet file.

:class:`PartitionTask` is the function of the conversion's Spark job (``mapPartitions`` over an
RDD of partition ids, :meth:`PartitionTask.run_ids`, or ``mapInArrow``). For every partition id
it receives, it runs the kind's partition function, writes the batches with pyarrow into
``<staging>/data/part-<id>.parquet`` (row groups of about ``row_group_mb``), and returns one
small row ``(partition, rows, row_groups, file_bytes)`` to the driver, which writes the
dataset's metadata from these rows without opening the files again. Writing in the task keeps
the image bytes out of the JVM (no Arrow -> row -> parquet-mr round trip); a retried or speculative attempt writes a temporary
file and renames it, so the last attempt wins and no half-written file is ever visible.

Bad input never raises into Spark (that would log a JVM stack trace and retry the task): the
record goes to ``<staging>/errors/failed-<id>.jsonl`` and the task ends; skipped records go to
``skipped-<id>.jsonl``. The driver reads them back (:mod:`pipeline.convert.writer`).
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.convert.common import BadInput, RecordErrors, SkippedRecord
from pipeline.storage import effective_config, task_defaults

log = logging.getLogger(__name__)

__all__ = ["STATS_SCHEMA", "PartitionFn", "PartitionTask", "has_failures", "write_records"]

PartitionFn = Callable[[Sequence[Any], RecordErrors], Iterable[Mapping[str, Sequence[Any]]]]
"""``process(items, errors)`` -> iterable of ``{field: column values}`` batches (runs in executors)."""

STATS_SCHEMA = "partition long, rows long, row_groups long, file_bytes long"
"""What each task returns to the driver (Spark DDL): rows, row groups and bytes of its file."""


def write_records(errors_dir: str, name: str, records: Sequence[SkippedRecord]) -> None:
    """Write bad-input records as JSON lines to ``errors_dir/name.jsonl`` (atomically)."""
    tmp = os.path.join(errors_dir, f".{name}.{uuid.uuid4().hex}")
    with open(tmp, "w", encoding="utf-8") as out:
        out.write("".join(r.to_json() + "\n" for r in records))
    os.replace(tmp, os.path.join(errors_dir, f"{name}.jsonl"))


def _describe_items(items: Sequence[Any]) -> str:
    """The inputs of a partition, for an error message: its first file and how many more."""
    if not items:
        return "an empty partition"
    first = items[0]
    name = getattr(first, "path", None) or (first[0] if isinstance(first, tuple) and first else first)
    more = f" (or one of the {len(items) - 1} inputs after it in the same task)" if len(items) > 1 else ""
    return f"{name}{more}"


def has_failures(errors_dir: str) -> bool:
    """Whether some task already recorded bad input (under ``on_error="fail"``), or the job is over."""
    if not os.path.isdir(errors_dir):
        return True  # the driver removed the staging folder: the job was cancelled (Ctrl-C, SIGTERM)
    return any(name.startswith("failed-") for name in os.listdir(errors_dir))


class PartitionTask:
    """The task function of a conversion (picklable; one instance per job).

    Args:
        plan: Partitions of work items; the task for id ``i`` processes ``plan[i]`` (a list,
            or a mapping of the ids this task runs, see :meth:`run_parts`).
        process: The kind's partition function.
        schema: Arrow schema of the rows (``to_arrow_schema(unischema.as_spark_schema())``).
        on_error: ``"fail"`` or ``"skip"``.
        data_dir: Local folder for the Parquet files.
        errors_dir: Local folder for bad-input records.
        compression: pyarrow codec name (``"none"``, ``"snappy"``, ``"gzip"``, ``"zstd"``).
        row_group_bytes: Target uncompressed size of a row group.

    The driver's storage settings (:func:`pipeline.storage.effective_config`: endpoint, region,
    static credentials from its environment or ``conf/storage.yaml``) travel with the task, so
    that executors open ``s3://`` inputs exactly as the driver listed them.
    """

    def __init__(
        self,
        plan: Sequence[Sequence[Any]] | Mapping[int, Sequence[Any]],
        process: PartitionFn,
        schema: pa.Schema,
        *,
        on_error: str,
        data_dir: str,
        errors_dir: str,
        compression: str,
        row_group_bytes: int,
    ) -> None:
        self.plan = plan
        self.process = process
        self.schema = schema
        self.on_error = on_error
        self.data_dir = data_dir
        self.errors_dir = errors_dir
        self.compression = compression
        self.row_group_bytes = row_group_bytes
        self.storage = effective_config().to_dict()

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for pid in batch.column(0).to_pylist():
                rows = self._run_in_task(int(pid))
                if rows is None:
                    return
                yield self.stats_batch(int(pid), rows)

    def _run_in_task(self, pid: int) -> int | None:
        """:meth:`run` with the driver's storage settings; ``None`` when the job was cancelled."""
        with task_defaults(self.storage):
            try:
                return self.run(pid)
            except OSError:
                if os.path.isdir(self.errors_dir):
                    raise
                return None  # cancelled: the driver removed the staging folder, nothing to report

    def run_parts(self, parts: Iterable[tuple[int, Sequence[Any]]]) -> Iterator[dict[str, int]]:
        """RDD form of :meth:`__call__`: ``mapPartitions`` over ``(partition id, items)`` pairs.

        Each Spark task receives only its own items (``sc.parallelize(list(enumerate(plan)))``),
        so the plan is never shipped whole to every task. Yields one :data:`STATS_SCHEMA` dict
        per pair.
        """
        for pid, items in parts:
            self.plan = {int(pid): items}  # this task's items only
            rows = self._run_in_task(int(pid))
            if rows is None:
                return
            yield self.stats_batch(int(pid), rows).to_pylist()[0]

    def stats_batch(self, pid: int, rows: int) -> pa.RecordBatch:
        """The row (:data:`STATS_SCHEMA`) returned to the driver after :meth:`run` of ``pid``."""
        groups, size = self.written if rows else (0, 0)
        return pa.RecordBatch.from_pydict(
            {"partition": [pid], "rows": [rows], "row_groups": [groups], "file_bytes": [size]}
        )

    def _batches(self, pid: int, errors: RecordErrors) -> Iterator[pa.RecordBatch]:
        names = self.schema.names
        for columns in self.process(self.plan[pid], errors):
            arrays = [pa.array(columns[n], type=self.schema.field(n).type) for n in names]
            yield pa.RecordBatch.from_arrays(arrays, schema=self.schema)
            if self.on_error == "fail" and has_failures(self.errors_dir):
                return  # another task hit bad input: the job fails anyway

    def run(self, pid: int) -> int:
        """Process partition ``pid`` and write its file; returns the number of rows written.

        ``self.written`` is then ``(row_groups, file_bytes)`` of that file.
        """
        errors = RecordErrors(self.on_error)
        self.written = (0, 0)
        groups = 0
        tmp = os.path.join(self.data_dir, f".part-{pid:05d}.{uuid.uuid4().hex}.tmp")
        writer: pq.ParquetWriter | None = None
        pending: list[pa.RecordBatch] = []
        held = rows = 0

        def flush() -> None:
            nonlocal writer, pending, held, rows, groups
            if not pending:
                return
            table = pa.Table.from_batches(pending, schema=self.schema)
            if writer is None:
                writer = pq.ParquetWriter(tmp, self.schema, compression=self.compression)
            writer.write_table(table, row_group_size=table.num_rows)
            rows += table.num_rows
            groups += 1
            pending, held = [], 0

        try:
            for batch in self._batches(pid, errors):
                pending.append(batch)
                held += batch.nbytes
                if held >= self.row_group_bytes:
                    flush()
            flush()
        except BadInput as exc:
            write_records(self.errors_dir, f"failed-{pid:05d}", [exc.record])
            rows = 0
        except Exception as exc:  # not a known kind of bad input: fail the job naming the inputs
            if not os.path.isdir(self.errors_dir):
                raise  # the job was cancelled and its staging folder removed (see __call__)
            where = _describe_items(self.plan[pid])
            log.error("unexpected error converting %s", where, exc_info=True)
            reason = f"unexpected {type(exc).__name__}: {exc}"[:500]
            write_records(self.errors_dir, f"failed-{pid:05d}", [SkippedRecord(where, reason)])
            rows = 0
        finally:
            if writer is not None:
                writer.close()
        if rows:
            self.written = (groups, os.path.getsize(tmp))
            os.replace(tmp, os.path.join(self.data_dir, f"part-{pid:05d}.parquet"))
        elif os.path.exists(tmp):
            os.remove(tmp)
        if errors.skipped:
            write_records(self.errors_dir, f"skipped-{pid:05d}", errors.skipped)
        return rows
