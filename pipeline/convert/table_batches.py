"""The Python tasks of ``convert table``: Arrow batches of the DataFrame -> stored batches.

They run for tables with an image column, and for tables where some row holds a null its field
cannot store (they name or skip those rows); otherwise Spark writes the files itself
(:mod:`pipeline.convert.table_jvm`).

:class:`DataFrameTask` is the ``mapInArrow`` function over the (projected) DataFrame itself: one
task per partition of the DataFrame, each writing its own ``part-<partition>.parquet`` through
:class:`~pipeline.convert.tasks.PartitionTask` (atomic rename, or straight to an object-store DEST
under a name unique to the task attempt; row groups, skipped records in its
result row, bad input under ``on_error="fail"`` as a :class:`~pipeline.convert.tasks.TaskFailure`).
:func:`convert_batches` applies the type policy of :mod:`pipeline.convert.spark_types` to each
batch with Arrow compute; only image columns are touched row by row.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.convert.common import RecordErrors
from pipeline.convert.spark_types import ColumnRule
from pipeline.convert.tasks import PartitionTask

__all__ = ["DataFrameTask", "ImageRule", "convert_batches"]


@dataclass(frozen=True)
class ImageRule:
    """How an image column is stored (the options of ``convert images``)."""

    size: tuple[int, int] | None = None
    fit: str = "center-crop"
    encoding: str = "png"
    jpeg_quality: int = 95
    png_compression: int = 1
    pass_through: bool = True


class DataFrameTask(PartitionTask):
    """``mapInArrow`` function writing the partition it is given (picklable).

    Args:
        base: The task :func:`~pipeline.convert.writer.write_petastorm` built (paths, schema,
            bad-input policy); its ``process`` is called as ``process(batches, errors, pid, schema)``
            with the Arrow schema the task writes.
    """

    def __init__(self, base: PartitionTask) -> None:
        self.__dict__.update(base.__dict__)
        self._input: Iterator[pa.RecordBatch] = iter(())

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        context = TaskContext.get()
        pid = context.partitionId() if context is not None else 0
        self._input = batches
        if self._run_in_task(pid) is not None:  # with the driver's storage settings (s3:// DEST)
            yield self.stats_batch(pid)

    def _batches(self, pid: int, errors: RecordErrors) -> Iterator[pa.RecordBatch]:
        yield from self.process(self._input, errors, pid, self.schema)  # type: ignore[call-arg]


def _has_null_values(array: pa.Array) -> bool:
    values = array
    while pa.types.is_list(values.type) or pa.types.is_large_list(values.type):
        if values.null_count:
            return True
        values = values.flatten()
    return values.null_count > 0


def _null_rows(array: pa.Array) -> np.ndarray:
    """Rows of an array column that are null or hold a null anywhere inside."""
    if not _has_null_values(array):
        return np.zeros(len(array), dtype=bool)

    def bad(value: Any) -> bool:
        return value is None or (isinstance(value, list) and any(bad(v) for v in value))

    return np.array([bad(v) for v in array.to_pylist()], dtype=bool)


def _image_from_struct(value: dict[str, Any]) -> Any:
    """An RGB ``PIL.Image`` from one row of Spark's ``image`` source (BGR / BGRA / gray bytes)."""
    from PIL import Image

    from pipeline.convert.imaging import ImageError

    h, w, c, data = value["height"], value["width"], value["nChannels"], value["data"]
    if data is None or h is None or w is None or c not in (1, 3, 4) or len(data) != h * w * c:
        raise ImageError(f"image struct of {h}x{w}x{c} holds {len(data or b'')} bytes")
    pixels = np.frombuffer(data, dtype=np.uint8).reshape(h, w, c)
    rgb = np.repeat(pixels, 3, axis=2) if c == 1 else pixels[:, :, 2::-1]
    return Image.fromarray(np.ascontiguousarray(rgb), "RGB")


def _images(array: pa.Array, struct: bool, rule: ImageRule) -> tuple[list[bytes | None], list[str | None]]:
    """Stored image bytes (or ``None``) and the reason a row was refused (or ``None``)."""
    from pipeline.convert.imaging import ImageError, encode_rgb, fit_image, prepare_image

    stored: list[bytes | None] = []
    reasons: list[str | None] = []
    for value in array.to_pylist():
        try:
            if value is None:
                raise ImageError("null image")
            if struct:
                image = _image_from_struct(value)
                if rule.size is not None:
                    image = fit_image(image, rule.size, rule.fit)
                data = encode_rgb(image, rule.encoding, jpeg_quality=rule.jpeg_quality)
            else:
                data, _ = prepare_image(
                    value,
                    size=rule.size,
                    fit=rule.fit,
                    encoding=rule.encoding,
                    jpeg_quality=rule.jpeg_quality,
                    png_compression=rule.png_compression,
                    pass_through=rule.pass_through,
                )
            stored.append(data)
            reasons.append(None)
        except ImageError as exc:
            stored.append(None)
            reasons.append(str(exc))
        except Exception as exc:  # any decoder failure on damaged bytes is bad input, not a crash
            stored.append(None)
            reasons.append(f"cannot decode image: {type(exc).__name__}: {exc}")
    return stored, reasons


def _column(
    rule: ColumnRule, array: pa.Array, target: pa.DataType, null_floats: str, image: ImageRule
) -> tuple[pa.Array, list[str | None] | None]:
    """One stored column and, if some rows cannot be stored, the reason per row."""
    if rule.kind == "image":
        stored, reasons = _images(array, rule.image_struct, image)
        return pa.array(stored, type=target), reasons if any(reasons) else None
    if rule.kind == "date":
        array = array.cast(pa.int32())
    elif rule.kind == "timestamp":
        if array.type.unit != "us":
            array = array.cast(pa.timestamp("us", array.type.tz))
        array = array.cast(pa.int64())
    elif (
        rule.kind == "scalar" and null_floats == "nan" and array.null_count and rule.dtype.startswith("float")
    ):
        array = pc.fill_null(array, math.nan)
    out = array.cast(target)
    if rule.nullable or not (out.null_count or rule.kind == "array"):
        return out, None
    null = _null_rows(out) if rule.kind == "array" else np.asarray(out.is_null())
    if not null.any():
        return out, None
    where = f"column {rule.source!r} ({rule.spark_type})"
    row_null = np.asarray(out.is_null())
    return out, [
        None if not n else f"{where} is null" if whole else f"{where} holds a null inside the array"
        for n, whole in zip(null.tolist(), row_null.tolist(), strict=True)
    ]


def convert_batches(
    batches: Iterator[pa.RecordBatch],
    errors: RecordErrors,
    pid: int,
    schema: pa.Schema,
    *,
    rules: Sequence[ColumnRule],
    source: str,
    null_floats: str = "error",
    image: ImageRule | None = None,
) -> Iterator[pa.RecordBatch]:
    """Partition function of ``convert table``: stored batches of ``schema`` from input batches.

    A row that cannot be stored (a null the rule cannot hold, an undecodable image) is reported
    through ``errors`` as ``<source> (record partition P row N)`` with the column and the reason,
    and left out.
    """
    image = image or ImageRule()
    offset = 0
    for batch in batches:
        n = batch.num_rows
        if n == 0:
            continue
        columns: dict[str, pa.Array] = {}
        keep = np.ones(n, dtype=bool)
        for i, rule in enumerate(rules):
            target = schema.field(rule.name).type
            column, reasons = _column(rule, batch.column(i), target, null_floats, image)
            columns[rule.name] = column
            if reasons is not None:
                for row, reason in enumerate(reasons):
                    if reason is not None and keep[row]:
                        errors.bad(source, reason, record=f"partition {pid} row {offset + row}")
                        keep[row] = False
        offset += n
        out = pa.RecordBatch.from_arrays([columns[name] for name in schema.names], schema=schema)
        if not keep.all():
            out = out.filter(pa.array(keep))
        if out.num_rows:
            yield out
