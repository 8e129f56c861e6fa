"""``open_dataset``: a map-style view of a dataset -- ``len(ds)``, ``ds[i]``, ``ds[a:b]``.

::

    ds = pipeline.open_dataset(url, fields=["image", "label"])   # cache="stream" by default
    row = ds[17]                      # {"image": uint8 (H, W, 3), "label": int64 scalar}
    batch = ds[[3, 1000, 17]]         # {"image": (3, H, W, 3), "label": (3,)}, each row group read once
    loader = torch.utils.data.DataLoader(ds, batch_size=64, shuffle=True, num_workers=4)

Row ``i`` is the ``i``-th row in stored order (files in name order, row groups in file order)
whatever the row-group sizes (:class:`~pipeline.access.index.RowGroupIndex`). The dataset
pickles without its open state -- source, filesystem, caches -- and each process (a DataLoader
worker, a Spark task) reopens it lazily on first use; under ``fork`` a worker keeps what the
parent had already loaded (``memory`` mode's arrays are shared copy-on-write).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow.fs as pafs

from pipeline.access.batch import assemble, is_integer, split_rows, stack_rows
from pipeline.access.cachedfs import cached_filesystem
from pipeline.access.index import RowGroupIndex
from pipeline.access.rows import RowGroupReader
from pipeline.access.source import cache_mode
from pipeline.access.stores import (
    DEFAULT_STREAM_LIMIT,
    MemoryStore,
    TableLRU,
    check_memory,
    estimate_decoded_bytes,
)
from pipeline.errors import ConfigError, DatasetError
from pipeline.reader.config import ReadOptions
from pipeline.reader.source import DatasetSource

__all__ = ["CacheMode", "RandomAccessDataset", "open_dataset"]

log = logging.getLogger(__name__)

CacheMode = Literal["stream", "memory", "disk"]


@dataclass
class _Opened:
    """What one process holds open: never pickled."""

    pid: int
    source: DatasetSource
    rows: RowGroupReader
    tables: TableLRU


class RandomAccessDataset:
    """A map-style, picklable dataset over Parquet row groups. Build it with :func:`open_dataset`."""

    def __init__(
        self,
        url: str | os.PathLike[str],
        *,
        fields: tuple[str, ...] | None,
        transform: Any,
        cache: CacheMode,
        cache_limit: int | None,
        cache_dir: str | os.PathLike[str] | None,
        filesystem: pafs.FileSystem | None,
    ) -> None:
        self.url = os.fspath(url)
        self.cache = cache
        self.cache_limit = cache_limit
        self._fields = fields
        self._transform = transform
        self._row_fn = transform if transform is not None and not hasattr(transform, "edit_fields") else None
        self._cache_dir = cache_dir
        self._filesystem = filesystem
        self._opened: _Opened | None = None
        self._store: MemoryStore | None = None
        opened = self._opened = self._open()
        self.index = RowGroupIndex.from_sizes([rg.rows for rg in opened.source.row_groups])
        self.specs = dict(opened.source.specs)
        """How each output field is held (:class:`~pipeline.reader.decode.FieldSpec`)."""
        if cache == "memory":
            self._store = MemoryStore(len(opened.source.row_groups))
            sample = None
            if any(s.kind != "fixed" for s in self.specs.values()) and len(self.index):
                sample = self._group(int(np.flatnonzero(self.index.sizes)[0]))  # first non-empty
            self.memory_limit = check_memory(
                opened.source.url, estimate_decoded_bytes(self.specs, self.index.sizes, sample), cache_limit
            )

    # -- per-process state ---------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_opened"] = None  # no source, filesystem or cached tables travel
        return state

    def _open(self) -> _Opened:
        options = ReadOptions(fields=self._fields, transform=self._transform, filesystem=self._filesystem)
        url: str = self.url
        if self.cache == "disk":
            fs, url = cached_filesystem(
                self.url, filesystem=self._filesystem, cache_dir=self._cache_dir, cache_limit=self.cache_limit
            )
            options = dataclasses.replace(options, filesystem=fs)
        source = DatasetSource(url, options)
        limit = (
            self.cache_limit
            if self.cache == "stream" and self.cache_limit is not None
            else DEFAULT_STREAM_LIMIT
        )
        return _Opened(os.getpid(), source, RowGroupReader(source), TableLRU(limit))

    def _state(self) -> _Opened:
        opened = self._opened
        if opened is not None and opened.pid == os.getpid():
            return opened
        opened = self._open()  # first use in this process (unpickled, or forked: fresh locks and handles)
        sizes = [rg.rows for rg in opened.source.row_groups]
        if not np.array_equal(sizes, self.index.sizes):
            raise DatasetError(
                f"{self.url} changed since it was opened: its row groups are not the same",
                hint="open the dataset again after rewriting it",
            )
        if self._store is not None:
            self._store.after_fork()
        self._opened = opened
        return opened

    # -- reading -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.index)

    @property
    def fields(self) -> list[str]:
        """Names of the fields of each row."""
        return list(self.specs)

    def _group(self, piece: int) -> dict[str, np.ndarray]:
        rows = self._state().rows
        assert self._store is not None
        return self._store.get(piece, lambda: rows.decode(rows.read_table(piece)))

    def _columns(self, piece: int, local: np.ndarray) -> dict[str, np.ndarray]:
        """Decoded rows ``local`` of row group ``piece``."""
        if self._store is not None:
            return {name: col[local] for name, col in self._group(piece).items()}
        opened = self._state()
        table = opened.tables.get(piece, lambda: opened.rows.read_table(piece))
        return opened.rows.decode(table, local)

    def __getitem__(self, key: Any) -> dict[str, Any]:
        """``ds[i]``: one row (dict of numpy values); ``ds[a:b]``, ``ds[[i, j]]``: a batch dict.

        Raises:
            IndexError: An index is out of range.
            TypeError: ``key`` is not an integer, a slice or a sequence of integers.
        """
        if isinstance(key, slice) or not is_integer(key):
            return self.batch(self.index.rows(key))
        row = self.index.normalize(key)
        pieces, local = self.index.locate(np.array([row]))
        columns = self._columns(int(pieces[0]), local)
        values = {name: col[0] for name, col in columns.items()}  # ndarray row, numpy scalar or object
        return self._row_fn(values) if self._row_fn is not None else values

    def batch(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Rows ``rows`` (normalized row numbers) as columns, reading each row group once."""
        parts = self._parts(rows)
        if self._row_fn is not None:
            return stack_rows([self._row_fn(r) for r in split_rows(len(rows), parts)])
        return assemble(self.specs, len(rows), parts)

    def _parts(self, rows: np.ndarray) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """``[(positions in rows, decoded columns)]``, one per row group touched, each read once."""
        return [(pos, self._columns(piece, local)) for piece, local, pos in self.index.groups(rows)]

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        """Rows for torch's ``DataLoader`` batch fetch: each row group read once per batch."""
        rows = self.index.rows(indices)
        out = split_rows(len(rows), self._parts(rows))
        return [self._row_fn(r) for r in out] if self._row_fn is not None else out

    def load(self) -> RandomAccessDataset:
        """``memory`` mode: read and decode every row group now (before forking DataLoader workers,
        so that they share the arrays); returns ``self``."""
        if self._store is None:
            raise ConfigError(f'load() needs cache="memory", this dataset has cache="{self.cache}"')
        for piece in range(len(self.index.sizes)):
            self._group(piece)
        return self

    def cache_info(self) -> dict[str, Any]:
        """This process's cache figures: ``mode``, ``bytes`` held, ``limit``, ``hits``, ``misses``..."""
        opened = self._state()
        if self._store is not None:
            return {
                "mode": "memory",
                "bytes": self._store.nbytes,
                "limit": self.memory_limit,
                "complete": self._store.complete,
            }
        lru = opened.tables
        info = {
            "mode": self.cache,
            "bytes": lru.nbytes,
            "peak_bytes": lru.peak_nbytes,
            "limit": lru.limit,
            "row_groups": len(lru),
            "hits": lru.hits,
            "misses": lru.misses,
        }
        fs = opened.source.options.filesystem  # in disk mode, the cached filesystem
        if self.cache == "disk" and isinstance(fs, pafs.PyFileSystem):
            cache = fs.handler.cache
            info["disk"] = {"dir": str(cache.directory), "limit": cache.limit, **vars(cache.stats)}
        return info

    def __repr__(self) -> str:
        return (
            f"RandomAccessDataset({self.url!r}, rows={len(self)}, fields={self.fields}, cache={self.cache!r})"
        )


def open_dataset(
    url: str | os.PathLike[str],
    *,
    fields: str | list[str] | tuple[str, ...] | None = None,
    transform: Any = None,
    cache: CacheMode = "stream",
    cache_limit: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    filesystem: pafs.FileSystem | None = None,
    preload: bool = False,
) -> RandomAccessDataset:
    """Open a dataset for random access: ``len(ds)``, ``ds[i]``, ``ds[a:b]``, ``ds[[i, j]]``.

    Args:
        url: Dataset folder or URL (``file://``, ``s3://``...): a Petastorm dataset (codecs
            decoded) or plain Parquet.
        fields: Fields to read (names, or petastorm regex patterns). Defaults to ``None`` (all).
        transform: A petastorm ``TransformSpec`` (per row on Petastorm datasets, per row-group
            ``DataFrame`` on plain Parquet, as ``open_loader`` applies it), or a callable applied
            to each row dict. Defaults to ``None``.
        cache: ``"stream"``: constant memory, an LRU of encoded row groups (``cache_limit``
            bytes per process, default 256 MiB); ``"memory"``: decoded row groups kept in RAM
            once read, refused up front when the estimated size exceeds ``cache_limit`` (default
            half the available memory); ``"disk"``: raw Parquet byte ranges cached under
            ``cache_dir`` (``cache_limit`` bytes, default 10 GiB), plus the stream LRU; giving
            ``cache_dir`` with the default ``"stream"`` means ``"disk"``. Defaults to ``"stream"``.
        cache_limit: The bound of the chosen mode, in bytes. Defaults to ``None`` (see ``cache``).
        cache_dir: Folder of the disk cache. Defaults to ``None`` (``$PIPELINE_CACHE_DIR/ranges``
            or ``~/.cache/pipeline/ranges``).
        filesystem: A ``pyarrow.fs.FileSystem`` on which ``url`` is a path. Defaults to ``None``.
        preload: ``memory`` mode: load everything now (see :meth:`RandomAccessDataset.load`).
            Defaults to ``False``.

    Returns:
        A :class:`RandomAccessDataset`.

    Raises:
        ConfigError: An option is invalid, or the dataset does not fit the memory limit.
        DatasetError: The dataset is missing or a field does not exist.
    """
    cache = cache_mode(cache, cache_dir)  # type: ignore[assignment]
    if cache_limit is not None and (not isinstance(cache_limit, int) or cache_limit < 0):
        raise ConfigError(f"cache_limit must be a number of bytes >= 0 or None, got {cache_limit!r}")
    if preload and cache != "memory":
        raise ConfigError(f'preload=True needs cache="memory", got cache={cache!r}')
    names = (fields,) if isinstance(fields, str) else tuple(fields) if fields is not None else None
    ds = RandomAccessDataset(
        url,
        fields=names,
        transform=transform,
        cache=cache,
        cache_limit=cache_limit,
        cache_dir=cache_dir,
        filesystem=filesystem,
    )
    return ds.load() if preload else ds
