"""In-process row-group caches: a bounded LRU of Arrow tables ("stream") and decoded row groups
held in RAM ("memory").

* :class:`TableLRU` keeps the most recently used row groups as Arrow tables -- encoded, as read
  from Parquet (JPEG/PNG bytes stay compressed), so that the same bytes hold 5-50x more rows than
  decoded pixels would, and a random index decodes one row instead of a whole row group.
  Its bound is the sum of ``Table.nbytes``; one row group larger than the bound is served
  without being kept.
* :class:`MemoryStore` keeps decoded row groups for good, filled on first use or eagerly; it
  checks up front that the estimated decoded size fits the limit (:func:`check_memory`).

Both are thread-safe (the loader's reader threads share them) and hold nothing when pickled.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.access.rows import column_nbytes
from pipeline.errors import ConfigError
from pipeline.units import human_bytes

__all__ = [
    "DEFAULT_MEMORY_FRACTION",
    "DEFAULT_STREAM_LIMIT",
    "MemoryStore",
    "TableLRU",
    "check_memory",
    "estimate_decoded_bytes",
]

log = logging.getLogger(__name__)

DEFAULT_STREAM_LIMIT = 256 * 2**20
"""Default bound of the stream mode's LRU, per process: 256 MiB of Arrow tables."""

DEFAULT_MEMORY_FRACTION = 0.5
"""Memory mode refuses a dataset whose decoded size exceeds this share of the available RAM."""


class TableLRU:
    """The most recently used row groups' Arrow tables, at most ``limit`` bytes in all.

    Args:
        limit: Bound on the sum of the tables' ``nbytes``. Defaults to ``DEFAULT_STREAM_LIMIT``.
    """

    def __init__(self, limit: int = DEFAULT_STREAM_LIMIT) -> None:
        if limit < 0:
            raise ConfigError(f"cache_limit must be >= 0 bytes, got {limit}")
        self.limit = limit
        self.nbytes = 0
        self.peak_nbytes = 0
        self.hits = 0
        self.misses = 0
        self._tables: OrderedDict[int, pa.Table] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._tables)

    def get(self, piece: int, load: Callable[[], pa.Table]) -> pa.Table:
        """Row group ``piece``'s table, from the cache or from ``load()`` (then kept if it fits)."""
        with self._lock:
            table = self._tables.get(piece)
            if table is not None:
                self._tables.move_to_end(piece)
                self.hits += 1
                return table
            self.misses += 1
        table = load()  # outside the lock: threads read different row groups in parallel
        size = table.nbytes
        if size > self.limit:
            return table
        with self._lock:
            if piece in self._tables:
                return self._tables[piece]
            while self._tables and self.nbytes + size > self.limit:
                _, old = self._tables.popitem(last=False)
                self.nbytes -= old.nbytes
            self._tables[piece] = table
            self.nbytes += size
            self.peak_nbytes = max(self.peak_nbytes, self.nbytes)
        return table


class MemoryStore:
    """Decoded row groups held in RAM once read (``memory`` mode).

    Args:
        pieces: Number of row groups of the dataset.
    """

    def __init__(self, pieces: int) -> None:
        self._groups: list[dict[str, np.ndarray] | None] = [None] * pieces
        self._lock = threading.Lock()
        self.nbytes = 0

    def __getstate__(self) -> dict[str, Any]:
        return {"pieces": len(self._groups)}  # a pickled store travels empty

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["pieces"])  # type: ignore[misc]

    def after_fork(self) -> None:
        """Keep the groups loaded before a fork (shared copy-on-write), with a fresh lock."""
        self._lock = threading.Lock()

    @property
    def complete(self) -> bool:
        """Whether every row group is held."""
        return all(g is not None for g in self._groups)

    def get(self, piece: int, load: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Decoded columns of row group ``piece``, loaded by ``load()`` the first time."""
        group = self._groups[piece]
        if group is not None:
            return group
        group = load()
        with self._lock:
            if self._groups[piece] is None:
                self._groups[piece] = group
                self.nbytes += sum(column_nbytes(c) for c in group.values())
            return self._groups[piece]  # type: ignore[return-value]


def estimate_decoded_bytes(specs: dict[str, Any], sizes: Sequence[int], sample: dict[str, Any] | None) -> int:
    """Decoded size of a dataset: exact for fixed-shape fields, per-row average of ``sample``
    (a decoded row group) for the others."""
    rows = int(sum(sizes))
    sample_rows = len(next(iter(sample.values()))) if sample else 0
    total = 0
    for name, spec in specs.items():
        if spec.kind == "fixed":
            total += rows * int(np.prod(spec.shape, dtype=np.int64)) * spec.dtype.itemsize
        elif sample_rows:
            total += column_nbytes(sample[name]) * rows // sample_rows
    return total


def available_memory() -> int:
    """Bytes of RAM available to new allocations (psutil's ``available``)."""
    import psutil

    return int(psutil.virtual_memory().available)


def check_memory(url: str, estimate: int, limit: int | None) -> int:
    """Raise unless ``estimate`` fits ``limit`` (default: a share of the available memory).

    Returns:
        The limit applied.

    Raises:
        ConfigError: The decoded dataset would not fit.
    """
    if limit is None:
        limit = int(available_memory() * DEFAULT_MEMORY_FRACTION)
    if estimate > limit:
        raise ConfigError(
            f'cache="memory" needs about {human_bytes(estimate)} to hold {url} decoded, more than the '
            f"limit of {human_bytes(limit)}",
            hint='use cache="stream" (constant memory) or cache="disk", read fewer fields with fields=, '
            "or raise cache_limit if the machine has the RAM",
        )
    log.info("memory mode: %s decoded (limit %s)", human_bytes(estimate), human_bytes(limit))
    return limit
