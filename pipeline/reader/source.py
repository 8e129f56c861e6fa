"""A dataset as a list of row groups, and the reading + decoding of one work item.

:class:`DatasetSource` opens a Petastorm dataset (Unischema with codecs, read like
``make_reader``) or plain Parquet (Arrow schema, read like ``make_batch_reader``), lists its row
groups from the Parquet footers, evaluates a predicate (:mod:`pipeline.predicates`, or
petastorm's) once per row group on the predicate's columns (so that the plan knows every row
group's row count), and reads a
:class:`~pipeline.reader.plan.WorkItem` into a :class:`Chunk` of numpy columns. ``read`` is
thread-safe: pyarrow reads and OpenCV decodes release the GIL.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.dataset import (
    DatasetFiles,
    dataset_from_listing,
    list_dataset_files,
    normalize_url,
    read_unischema,
)
from pipeline.errors import DatasetError
from pipeline.format import Unischema, match_unischema_fields
from pipeline.reader.config import ReadOptions
from pipeline.reader.decode import (
    ReadCancelled,
    decode_column,
    spec_from_unischema,
    unischema_field_from_arrow,
)
from pipeline.reader.plan import WorkItem
from pipeline.reader.transform import apply_transform_spec, transform_rows_into, transformed_specs
from pipeline.storage import RemoteReads, parallel_map
from pipeline.storage.readahead import store_of

__all__ = ["Chunk", "DatasetSource", "RowGroup"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RowGroup:
    """Row group ``index`` of the Parquet file ``path``."""

    path: str
    index: int
    rows: int


@dataclass(frozen=True)
class Chunk:
    """Decoded columns of a slice of one row group (see :mod:`pipeline.reader.decode`)."""

    columns: dict[str, np.ndarray]
    rows: int

    def copy_into(self, out: dict[str, np.ndarray], rows: np.ndarray) -> None:
        """Write row ``i`` of the chunk into ``out[name][rows[i]]`` for every column."""
        for name, column in self.columns.items():
            out[name][rows] = column


class DatasetSource:
    """The row groups of a dataset and how to read them.

    Args:
        url: Dataset folder or URL (``file://``, ``hdfs://``, ``s3://``...), or a path on
            ``options.filesystem``.
        options: Fields, transform, predicate and filesystem. Defaults to ``ReadOptions()``.
        speculate: On a disk cache (``options.filesystem`` from
            :func:`~pipeline.access.cachedfs.cached_filesystem`), open on the listing kept by
            the last open while the store is listed again; the caller then calls
            :meth:`confirm_listing` before it hands out anything read. Defaults to ``False``.

    Raises:
        DatasetError: The dataset is missing or a requested field does not exist.
    """

    def __init__(
        self, url: str | os.PathLike[str], options: ReadOptions | None = None, *, speculate: bool = False
    ) -> None:
        self.options = options or ReadOptions()
        early = _EarlyFooters()
        try:
            files, self._confirm = _list_files(
                url, self.options.filesystem, on_listed=early.start, speculate=speculate
            )
            self.url = files.url
            self._fs = files.filesystem
            # remote: pre-buffered ranged reads; listed files opened without a HEAD, footers read once
            self._reads = early.reads or RemoteReads(self._fs, sizes=files.sizes)
            self._footers = early.collect(self._reads, files.files)
        finally:
            early.close()
        stored = read_unischema(files)
        self.kind = "petastorm" if stored is not None else "parquet"
        if stored is None:
            arrow_schema = self._footers[files.files[0]].schema.to_arrow_schema()
            stored = Unischema("ParquetSchema", [unischema_field_from_arrow(f) for f in arrow_schema])
        self.schema = _select(stored, self.options.fields, self.url)
        self.row_groups = [
            RowGroup(path, i, meta.row_group(i).num_rows)
            for path, meta in self._footers.items()
            for i in range(meta.num_row_groups)
        ]
        spec = self.options.transform
        self._spec = spec if spec is not None and hasattr(spec, "edit_fields") else None
        self._in_specs = {name: spec_from_unischema(f) for name, f in self.schema.fields.items()}
        self.specs = transformed_specs(self.schema, self._spec) if self._spec else self._in_specs
        self._masks: list[np.ndarray] | None = None
        if self.options.predicate is not None:
            self._masks = [self._predicate_mask(rg, stored) for rg in self.row_groups]
        self._recent = RecentTables()
        self._decoders: threading.Semaphore | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_recent"] = state["_decoders"] = state["_confirm"] = None  # locks, futures: this process's
        return state

    def confirm_listing(self) -> bool:
        """Whether what this source was opened on is still the dataset on the store.

        ``True`` at once unless the source was opened with ``speculate=True`` on a disk cache's
        kept listing: then it waits for the store's listing (once) and says whether the files
        are the same. On ``False`` nothing read from this source may be handed out: open the
        dataset again (``pipeline.open_loader`` does).
        """
        confirm, self._confirm = self._confirm, None
        return True if confirm is None else bool(confirm())

    @property
    def speculative(self) -> bool:
        """Opened on a kept listing that :meth:`confirm_listing` has not confirmed yet."""
        return self._confirm is not None

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._recent = RecentTables()

    def limit_decoding(self, decoders: int) -> None:
        """Let at most ``decoders`` threads decode (and transform) at once; reading is not limited.

        A remote dataset is read by more threads than cores, to keep requests in flight. Were
        they all to decode at once, the GIL would be shared among them round-robin: each work
        item would take threads x longer, the first batch waits for the first item, and CPU goes
        to switching. With the gate, the items whose bytes are in decode at the cores' pace, in
        the order they arrived, while the other threads wait on the network.
        """
        self._decoders = threading.Semaphore(max(1, decoders))

    def _decoding(self) -> Any:
        return self._decoders if self._decoders is not None else contextlib.nullcontext()

    @property
    def sizes(self) -> list[int]:
        """Rows of each row group that the plan can use (after the predicate)."""
        if self._masks is None:
            return [rg.rows for rg in self.row_groups]
        return [int(np.count_nonzero(m)) for m in self._masks]

    def describe(self, item: WorkItem) -> str:
        rg = self.row_groups[item.piece]
        return f"{rg.path} row group {rg.index} (rows {item.start}:{item.stop}, epoch {item.epoch})"

    def read(self, item: WorkItem) -> Chunk:
        """Read, filter, slice, decode and transform the rows of one work item."""
        table = self._table(item)
        with self._decoding():
            return self._chunk(item, table)

    def _chunk(self, item: WorkItem, table: pa.Table) -> Chunk:
        columns = self._columns(table)
        if self._spec is not None:
            columns = apply_transform_spec(
                self._spec, columns, item.rows, self.specs, batch=self.kind == "parquet"
            )
        return Chunk(columns, item.rows)

    def read_into(
        self,
        item: WorkItem,
        out: dict[str, np.ndarray],
        rows: np.ndarray,
        cancel: threading.Event | None = None,
    ) -> None:
        """Like :meth:`read`, but write row ``i`` of the item into ``out[name][rows[i]]``.

        ``cancel``, when set, stops long decode loops early (``ReadCancelled``).
        """
        table = self._table(item)  # the I/O, outside the decoding gate
        with self._decoding():
            if cancel is not None and cancel.is_set():  # closed while this thread waited at the gate
                raise ReadCancelled
            if self._spec is not None and self._spec.func is not None and self.kind != "parquet":
                # row form: each transformed row goes straight into its row of ``out``
                transform_rows_into(
                    self._spec, self._columns(table), item.rows, self.specs, out, rows, cancel
                )
            elif self._spec is not None:  # a batch-form transform needs the whole chunk first
                self._chunk(item, table).copy_into(out, rows)
            else:
                for name, field in self.schema.fields.items():
                    decode_column(self._in_specs[name], field, table.column(name), out[name], rows, cancel)

    def _columns(self, table: pa.Table) -> dict[str, np.ndarray]:
        """The columns of ``table`` (an item's rows), decoded (before any transform)."""
        return {
            name: decode_column(self._in_specs[name], field, table.column(name))
            for name, field in self.schema.fields.items()
        }

    def _table(self, item: WorkItem) -> pa.Table:
        rg = self.row_groups[item.piece]
        columns = list(self.schema.fields)
        if item.rows < self.sizes[item.piece]:  # a part of a split row group: read it once for all parts
            table = self._recent.get(item.piece, lambda: self._read_table(rg, columns))
        else:
            table = self._read_table(rg, columns)
        if self._masks is not None:
            table = table.filter(pa.array(self._masks[item.piece]))
        return table.slice(item.start, item.rows)

    def read_row_group(self, piece: int) -> pa.Table:
        """Row group ``piece`` as stored (every selected field, codec bytes not decoded, no predicate)."""
        return self._read_table(self.row_groups[piece], list(self.schema.fields))

    def _read_table(self, rg: RowGroup, columns: list[str]) -> pa.Table:
        return self._reads.read_row_group(rg.path, rg.index, columns, self._footers[rg.path])

    def _predicate_mask(self, rg: RowGroup, stored: Any) -> np.ndarray:
        predicate = self.options.predicate
        names = list(predicate.get_fields())
        unknown = sorted(set(names) - set(stored.fields))
        if not names or unknown:
            raise DatasetError(
                f"predicate fields {unknown or names} are not fields of {self.url}",
                hint=f"available fields: {', '.join(stored.fields)}",
            )
        table = self._read_table(rg, names)
        cols = {n: _predicate_values(stored.fields[n], table.column(n)) for n in names}
        return np.fromiter(
            (bool(predicate.do_include({n: cols[n][i] for n in names})) for i in range(rg.rows)),
            dtype=bool,
            count=rg.rows,
        )


class RecentTables:
    """The last few row groups read, shared by the workers that decode parts of one row group.

    A large row group is split into several work items (``item_rows``); the first worker to ask
    reads it, the others wait for that read instead of reading the same bytes again. Bounded to
    ``capacity`` tables (least recently used out); a failed read is not kept.

    Args:
        capacity: Tables kept. Defaults to ``4``.
    """

    def __init__(self, capacity: int = 4) -> None:
        self._capacity = capacity
        self._lock = threading.Lock()
        self._entries: OrderedDict[Any, Future[pa.Table]] = OrderedDict()

    def get(self, key: Any, read: Any) -> pa.Table:
        """The table under ``key``, calling ``read()`` once if it is not held."""
        with self._lock:
            entry = self._entries.get(key)
            owner = entry is None
            if entry is None:
                entry = self._entries[key] = Future()
                while len(self._entries) > self._capacity:
                    self._entries.popitem(last=False)
            else:
                self._entries.move_to_end(key)
        if owner:
            try:
                entry.set_result(read())
            except BaseException as exc:
                entry.set_exception(exc)
                with self._lock:
                    if self._entries.get(key) is entry:
                        del self._entries[key]
        return entry.result()


def _predicate_values(field: Any, column: pa.ChunkedArray) -> np.ndarray:
    """A predicate's view of one column: decoded values, ``None`` where the stored value is null.

    Predicates see nullable fields as petastorm's do (``None`` for a null), so that they can drop
    the rows whose nulls the loader could not turn into tensors.
    """
    spec = spec_from_unischema(field)
    array = column.combine_chunks()
    if not array.null_count:
        return decode_column(spec, field, array)
    valid = array.is_valid().to_numpy(zero_copy_only=False)
    decoded = decode_column(spec, field, array.filter(pa.array(valid)))
    values = np.full(len(array), None, dtype=object)
    for j, i in enumerate(np.flatnonzero(valid)):
        values[i] = decoded[j]
    return values


def _list_files(
    url: str | os.PathLike[str], filesystem: Any, on_listed: Any = None, speculate: bool = False
) -> tuple[DatasetFiles, Any]:
    """The dataset's files, and ``confirm()`` when they came from a disk cache's kept listing
    (``speculate``; see :meth:`~pipeline.access.cachedfs.CachingHandler.listing`), else ``None``."""
    if filesystem is None:
        return list_dataset_files(url, on_listed=on_listed), None
    if not isinstance(filesystem, pafs.FileSystem):
        raise DatasetError(
            f"filesystem must be a pyarrow.fs.FileSystem, got {type(filesystem).__name__}",
            hint="wrap an fsspec filesystem with pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))",
        )
    root = os.fspath(url).rstrip("/")
    handler = filesystem.handler if isinstance(filesystem, pafs.PyFileSystem) else None
    try:  # the listing alone: a get_file_info(root) first costs 2 more round trips on S3
        if hasattr(handler, "listing"):  # a disk cache: its kept listing, confirmed later
            entries, confirm = handler.listing(root, speculate=speculate)
        else:
            entries, confirm = filesystem.get_file_info(pafs.FileSelector(root, recursive=True)), None
    except FileNotFoundError:
        raise DatasetError(f"{_url_on(filesystem, root)} does not exist", hint="check the path") from None
    listed = dataset_from_listing(filesystem, root, _url_on(filesystem, root), entries, on_listed=on_listed)
    return listed, confirm


_SCHEMES = {"s3": "s3", "gcs": "gs", "hdfs": "hdfs"}


def _url_on(filesystem: pafs.FileSystem, root: str) -> str:
    """``root`` on a given filesystem as a URL for messages and logs: ``s3://bucket/prefix`` on
    S3 (through a disk cache too), the fsspec protocol's, ``file://`` only for the local disk."""
    store = store_of(filesystem)
    if isinstance(store, pafs.SubTreeFileSystem):
        store = store.base_fs
    name = store.type_name
    if name == "local":
        return normalize_url(root)
    scheme = _SCHEMES.get(name)
    if scheme is None and isinstance(store, pafs.PyFileSystem):
        protocol = getattr(getattr(store.handler, "fs", None), "protocol", None)
        scheme = protocol[0] if isinstance(protocol, (tuple, list)) and protocol else protocol
    return f"{scheme}://{root.lstrip('/')}" if isinstance(scheme, str) else f"{name}:{root}"


class _EarlyFooters:
    """The footers of a remote dataset's files, read in the round trip of ``_common_metadata``.

    The listing says which files there are; ``_common_metadata`` which of them are committed.
    Instead of waiting for the second before reading the footers (one more sequential round
    trip per open), :meth:`start` reads every listed file's footer at once, and :meth:`collect`
    keeps those of the committed files: a footer that failed matters only for a committed file
    (an interrupted attempt's partial file is not read from). Local datasets read as before.
    """

    def __init__(self) -> None:
        self.reads: RemoteReads | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._pending: dict[str, Future[pq.FileMetaData]] = {}

    def start(self, fs: pafs.FileSystem, files: list[str], sizes: dict[str, int]) -> None:
        self.reads = RemoteReads(fs, sizes=sizes)
        if not self.reads.remote or not files:
            return
        self._pool = ThreadPoolExecutor(min(64, len(files)), thread_name_prefix="pipeline-footers")
        reads = self.reads
        self._pending = {path: self._pool.submit(_footer, reads, path) for path in files}

    def collect(self, reads: RemoteReads, files: tuple[str, ...]) -> dict[str, pq.FileMetaData]:
        """The footers of ``files`` (the committed ones): those read early, the others now."""
        rest = [path for path in files if path not in self._pending]
        later = dict(
            zip(rest, parallel_map(lambda path: _footer(reads, path), rest, fs=reads.fs), strict=True)
        )
        return {
            path: self._pending[path].result() if path in self._pending else later[path] for path in files
        }

    def close(self) -> None:
        if (
            self._pool is not None
        ):  # footers of files that were not committed may still be read: not waited for
            self._pool.shutdown(wait=False, cancel_futures=True)


def _footer(reads: RemoteReads, path: str) -> pq.FileMetaData:
    try:
        return reads.footer(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DatasetError(
            f"{path} is not a readable Parquet file: {exc}", hint="is the dataset complete?"
        ) from None


def _select(schema: Any, fields: tuple[str, ...] | None, url: str) -> Any:
    """A view of ``schema`` with ``fields`` (exact names or petastorm regexes) in the given order."""
    if fields is None:
        return schema
    chosen: list[Any] = []
    for name in fields:
        matches = [schema.fields[name]] if name in schema.fields else match_unischema_fields(schema, [name])
        if not matches:
            raise DatasetError(
                f"field {name!r} is not in {url}", hint=f"available fields: {', '.join(schema.fields)}"
            )
        chosen.extend(m for m in matches if m not in chosen)
    return Unischema(schema._name, chosen)
