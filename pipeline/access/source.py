"""The loading modes for the stream reader: ``open_source`` is ``DatasetSource`` with ``cache=``.

The hook for ``open_loader`` (one line in :func:`pipeline.loader.loader.open_loader`)::

    source = open_source(url, options, cache=cache, cache_limit=cache_limit, cache_dir=cache_dir)
    # instead of: source = DatasetSource(url, options)

* ``"stream"``: the plain :class:`~pipeline.reader.source.DatasetSource` (the reader already
  streams each row group once per epoch; an LRU would only hold what is not read again).
* ``"disk"``: the same source, opened on :func:`~pipeline.access.cachedfs.cached_filesystem`:
  raw Parquet byte ranges come from the local cache after the first epoch.
* ``"memory"``: a :class:`CachedSource` whose ``read``/``read_into`` serve decoded row groups
  from a :class:`~pipeline.access.stores.MemoryStore`: the first epoch decodes, later epochs copy.

:class:`CachedSource` is a drop-in for the reader: it has the attributes and methods the reader
and loader use (``url``, ``sizes``, ``specs``, ``schema``, ``row_groups``, ``kind``,
``options``, ``describe``, ``read``, ``read_into``) and delegates anything else.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from typing import Any

import numpy as np

from pipeline.access.cachedfs import cached_filesystem
from pipeline.access.stores import MemoryStore, check_memory, estimate_decoded_bytes
from pipeline.errors import ConfigError
from pipeline.reader.config import ReadOptions
from pipeline.reader.plan import WorkItem
from pipeline.reader.source import Chunk, DatasetSource

__all__ = ["MODES", "CachedSource", "cache_mode", "open_source"]

MODES = ("stream", "memory", "disk")
"""The loading modes (``cache=``) of ``open_loader`` and ``open_dataset``."""


def cache_mode(cache: str, cache_dir: str | os.PathLike[str] | None) -> str:
    """The loading mode asked for: ``cache``, but ``"stream"`` with a ``cache_dir`` means ``"disk"``.

    Raises:
        ConfigError: ``cache`` is not one of :data:`MODES`.
    """
    if cache == "stream" and cache_dir is not None:
        cache = "disk"  # open_loader(url, cache_dir=..., cache_limit=...): the object-storage contract
    if cache not in MODES:
        raise ConfigError(f"cache must be one of {', '.join(MODES)}, got {cache!r}")
    return cache


def open_source(
    url: str | os.PathLike[str],
    options: ReadOptions | None = None,
    *,
    cache: str = "stream",
    cache_limit: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    speculate: bool = False,
) -> DatasetSource | CachedSource:
    """A dataset source read in loading mode ``cache``.

    Args:
        url: Dataset folder or URL, or a path on ``options.filesystem``.
        options: Fields, transform, predicate, filesystem. Defaults to ``ReadOptions()``.
        cache: ``"stream"``, ``"memory"`` or ``"disk"``; ``"stream"`` with a ``cache_dir``
            means ``"disk"``. Defaults to ``"stream"``.
        cache_limit: ``memory``: refuse above this many decoded bytes (default half the
            available RAM); ``disk``: bytes of entries kept (default 10 GiB). Defaults to ``None``.
        cache_dir: ``disk``: the cache folder. Defaults to ``None`` (``~/.cache/pipeline/ranges``).
        speculate: On a disk cache (``"disk"``, or one given as ``options.filesystem``): open
            on the listing it kept, confirmed later (``DatasetSource.confirm_listing``, which
            the caller must call before handing out anything read). Defaults to ``False``.

    Raises:
        ConfigError: Unknown mode, or the dataset does not fit the memory limit.
    """
    options = options or ReadOptions()
    cache = cache_mode(cache, cache_dir)
    if cache == "stream":  # options.filesystem may be a disk cache itself
        return DatasetSource(url, options, speculate=speculate)
    if cache == "disk":
        fs, path = cached_filesystem(
            url, filesystem=options.filesystem, cache_dir=cache_dir, cache_limit=cache_limit
        )
        return DatasetSource(path, dataclasses.replace(options, filesystem=fs), speculate=speculate)
    return CachedSource(DatasetSource(url, options), limit=cache_limit)


class CachedSource:
    """``source`` with its decoded row groups kept in RAM after they are first read.

    Args:
        source: The dataset source.
        limit: Refuse (``ConfigError``) when the estimated decoded size exceeds this many bytes.
            Defaults to ``None`` (half the available memory).
    """

    def __init__(self, source: DatasetSource, *, limit: int | None = None) -> None:
        self.source = source
        self.store = MemoryStore(len(source.row_groups))
        sizes = source.sizes
        sample = None
        if any(s.kind != "fixed" for s in source.specs.values()):
            first = next((p for p, n in enumerate(sizes) if n), None)
            sample = self._group(first) if first is not None else None
        self.limit = check_memory(source.url, estimate_decoded_bytes(source.specs, sizes, sample), limit)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["source"], name)

    def _group(self, piece: int) -> dict[str, np.ndarray]:
        rows = self.source.sizes[piece]
        return self.store.get(piece, lambda: self.source.read(WorkItem(0, piece, 0, rows)).columns)

    def read(self, item: WorkItem) -> Chunk:
        """The item's decoded rows, from RAM after the row group's first read."""
        group = self._group(item.piece)
        return Chunk({name: col[item.start : item.stop] for name, col in group.items()}, item.rows)

    def read_into(
        self,
        item: WorkItem,
        out: dict[str, np.ndarray],
        rows: np.ndarray,
        cancel: threading.Event | None = None,
    ) -> None:
        """Like :meth:`read`, writing row ``i`` into ``out[name][rows[i]]``."""
        self.read(item).copy_into(out, rows)
