"""HDF5 files -> a Petastorm dataset, one row per index of the first axis, read in parallel by Spark.

The driver opens each file for its metadata only (dataset names, shapes, dtypes, chunking) and
plans *slices*: runs of the first axis aligned to the HDF5 chunks, of about ``slice_mb`` each.
Spark tasks open the files themselves and read their slices (HDF5 decompresses gzip, lzf,
shuffle and any filter h5py can read), so the data never passes through the driver.

Which datasets (see :func:`pipeline.convert.hdf5_schema.select_datasets`): ``--datasets a,b``, or
by default the largest group of datasets that share the first-axis length (a tie goes to the
longer axis); what is left out is logged and recorded in the provenance. With several files the
first file (in sorted path order) decides; every other file must hold the same datasets with
the same dtypes and row shapes (its own first-axis length may differ), otherwise it is bad input.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.convert.common import ConversionResult, ConvertConfig, RecordErrors
from pipeline.convert.hdf5_filters import register_plugins
from pipeline.convert.hdf5_meta import FileMeta, read_metadata
from pipeline.convert.hdf5_read import ValueCheckError, read_slice, unischema_for
from pipeline.convert.hdf5_schema import Hdf5Dataset, Hdf5Field, Slice, plan_slices
from pipeline.convert.listing import SourceFile, list_source_files, local_path
from pipeline.errors import ConfigError, InputError
from pipeline.storage import is_remote, open_input

__all__ = ["Hdf5Options", "convert_hdf5"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hdf5Options:
    """Options of HDF5 conversion (``conf/convert_hdf5.yaml``, section ``hdf5`` of ``--config``)."""

    datasets: tuple[str, ...] | None = None
    """Datasets to convert (HDF5 paths or field names); ``None`` = the largest group of equal
    first-axis length. Defaults to ``None``."""
    slice_mb: float = 16
    """Bytes read by one HDF5 read in a task (rounded to whole chunks), in MB. Defaults to ``16``."""
    suffixes: tuple[str, ...] = (".h5", ".hdf5", ".he5", ".hdf")
    """File endings read from a folder or glob (a single file is read whatever its name).
    Defaults to ``(".h5", ".hdf5", ".he5", ".hdf")``."""

    def __post_init__(self) -> None:
        if not self.slice_mb > 0:
            raise ConfigError(f"slice_mb must be > 0, got {self.slice_mb}")
        if self.datasets is not None and not all(self.datasets):
            raise ConfigError(f"datasets must be non-empty names, got {list(self.datasets)!r}")


@dataclass(frozen=True)
class _BadFile:
    """A plan item for a file found bad on the driver (``on_error="skip"``): the task reports it."""

    file: str
    reason: str


def _row_bytes(chosen: list[Hdf5Dataset]) -> int:
    total = 0
    for d in chosen:
        per_row = 1
        for n in d.shape[1:]:
            per_row *= n
        total += per_row * max(d.dtype.itemsize, 32 if d.dtype.kind == "O" else 1)
    return max(1, total)


def _signature(specs: list[Hdf5Field]) -> list[tuple[str, str, str, tuple[int | None, ...]]]:
    return [(s.name, s.rule, s.dtype.str, s.shape) for s in specs]


@dataclass
class _Plan:
    files: list[SourceFile]
    specs: list[Hdf5Field]
    items: list[Slice | _BadFile]
    sizes: list[int]
    rows: int
    facts: dict[str, Any]


def _plan(src: str, options: Hdf5Options, on_error: str) -> _Plan:
    root = None if is_remote(src) else local_path(src)
    files = list_source_files(
        src, extensions=None if root is not None and root.is_file() else options.suffixes, what="HDF5 files"
    )
    first: FileMeta | None = None
    items: list[Slice | _BadFile] = []
    sizes: list[int] = []
    rows = 0
    for source in files:
        try:
            if first is None:
                meta = read_metadata(source.path, options.datasets, first=True)
            else:
                meta = read_metadata(source.path, _paths(first))
            if first is not None and _signature(meta.specs) != _signature(first.specs):
                raise InputError(
                    f"{source.path}: its datasets do not match {files[0].path}: fields "
                    f"{_signature(meta.specs)} != {_signature(first.specs)}",
                    hint="convert files with different layouts separately, or pick common ones with --datasets",
                )
        except InputError as exc:
            if on_error == "fail":
                raise
            log.warning("will skip %s", exc.message)
            items.append(_BadFile(source.path, exc.message))
            sizes.append(1)
            continue
        if first is None:
            first = meta
            for path, why in meta.left_out:
                log.info("%s: leaving out %s (%s)", source.path, path, why)
        row_bytes = _row_bytes(meta.chosen)
        chunked = sorted((d for d in meta.chosen if d.chunks), key=lambda d: -_row_bytes([d]))
        target = max(1, int(options.slice_mb * (1 << 20)))
        slices = plan_slices(
            source.path, meta.rows, row_bytes, [d.chunks[0] for d in chunked], target_bytes=target
        )
        items.extend(slices)
        sizes.extend((s.stop - s.start) * row_bytes for s in slices)
        rows += meta.rows
    if first is None:
        raise InputError(
            f"no readable HDF5 file in {src}", hint="check SRC; every file was bad (see the log)"
        )
    if rows == 0 and not any(isinstance(i, _BadFile) for i in items):
        raise InputError(
            f"{src}: nothing to convert: the selected datasets ({', '.join(_paths(first))}) have 0 rows",
            hint="an empty dataset has nothing to store; pick others with --datasets",
        )
    facts = {
        "fields": {s.name: s.dataset + ("." + ".".join(s.member) if s.member else "") for s in first.specs},
        "datasets": [d.path for d in first.chosen],
        "left_out": [{"dataset": p, "reason": why} for p, why in first.left_out],
        "conversions": {s.name: s.note for s in first.specs if s.note},
        "enums": {s.name: dict(s.labels) for s in first.specs if s.labels},
        **first.attrs,
        "hdf5_rows": rows,
        "slices": sum(isinstance(i, Slice) for i in items),
    }
    return _Plan(files, first.specs, items, sizes, rows, facts)


def _paths(meta: FileMeta) -> tuple[str, ...]:
    return tuple(d.path for d in meta.chosen)


def _process(
    items: Sequence[Slice | _BadFile], errors: RecordErrors, *, specs: Sequence[Hdf5Field], schema: Any
) -> Iterator[dict[str, list[Any]]]:
    """Partition function (runs in a Spark executor): each task opens its files and reads its slices."""
    import h5py

    register_plugins()
    handle: Any = None
    opened: str | None = None
    try:
        for item in items:
            if isinstance(item, _BadFile):
                errors.bad(item.file, item.reason)
                continue
            where = f"rows {item.start}-{item.stop}"
            try:
                if opened != item.file:
                    if handle is not None:
                        handle.close()
                    handle, opened = None, item.file
                    handle = h5py.File(open_input(item.file) if is_remote(item.file) else item.file, "r")
                columns = read_slice(handle, specs, schema, item.start, item.stop)
            except ValueCheckError as exc:
                errors.bad(item.file, str(exc), record=where)
                continue
            except (OSError, KeyError, ValueError, RuntimeError, TypeError) as exc:
                errors.bad(item.file, f"cannot read HDF5 data: {exc}", record=where)
                continue
            yield columns
    finally:
        if handle is not None:
            handle.close()


def convert_hdf5(
    spark: Any,
    src: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    options: Hdf5Options | None = None,
    *,
    settings: ConvertConfig | None = None,
) -> ConversionResult:
    """Convert the HDF5 file(s) of ``src`` into a Petastorm dataset at ``dest``.

    Args:
        spark: The SparkSession.
        src: An HDF5 file, a folder (recursive) or a glob.
        dest: Output folder or ``file://`` URL; appears only if the whole job succeeds.
        options: HDF5 options. Defaults to ``None`` (``Hdf5Options()``).
        settings: Common conversion settings. Defaults to ``None`` (``ConvertConfig()``).

    Returns:
        The result; ``extra`` maps each field to its dataset and lists datasets left out.

    Raises:
        InputError: A file is damaged, not HDF5, lacks a dataset or holds a dtype no field can
            represent (naming the file, dataset and dtype), under ``on_error="fail"``.
    """
    from pipeline.convert.writer import plan_partitions, write_petastorm

    options = options or Hdf5Options()
    settings = settings or ConvertConfig()
    plan = _plan(os.fspath(src), options, settings.on_error)
    schema = unischema_for(plan.specs)
    partitions = plan_partitions(spark, plan.items, plan.sizes, settings)
    log.info(
        "reading %d row(s) of %d field(s) from %d file(s) in %d slice(s), %d task(s)",
        plan.rows,
        len(plan.specs),
        len(plan.files),
        plan.facts["slices"],
        len(partitions),
    )
    return write_petastorm(
        spark,
        kind="hdf5",
        source=os.fspath(src),
        dest=os.fspath(dest),
        schema=schema,
        plan=partitions,
        process=functools.partial(_process, specs=plan.specs, schema=schema),
        settings=settings,
        input_bytes=sum(f.size for f in plan.files),
        options=options,
        extra=plan.facts,
    )
