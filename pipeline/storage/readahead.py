"""Reading Parquet from far away: requests in flight enough to hide the latency.

Three things make a row group cost one round trip instead of several, and keep enough of them
in flight:

* :class:`RemoteReads` reads footers and row groups with ``pre_buffer`` on: the column chunks
  of a row group are fetched as coalesced ranged reads, concurrently. A file whose size the
  listing gave is opened without a ``HEAD`` (a pyarrow dataset fragment takes the size), its
  footer read once (one ``GET``) and kept with it; any other remote file is opened once (one
  ``HEAD``, however many threads ask at the same moment) and the handle shared between the footer
  read and the reader threads (positional reads are thread-safe);
* :func:`parallel_map` reads the footers of all files at once when a dataset is opened;
* :func:`read_threads`: the reader's thread count for a remote dataset, from
  ``StorageConfig.read_threads`` or the round-trip time (``cpu + latency / 2 ms``, at most 64):
  each thread waits on the network most of the time, so more threads than cores keep the cores
  busy decoding. The round trip is the one the open already made (:func:`note_round_trip`: a
  file's ``HEAD``, a listing), so that no request is spent on measuring it; only a filesystem
  that made none yet is probed with one ``HEAD``.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.storage.config import StorageConfig, load_storage_config

__all__ = [
    "RemoteReads",
    "is_remote_filesystem",
    "measure_latency",
    "note_round_trip",
    "observed_latency",
    "parallel_map",
    "read_threads",
    "store_of",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

MAX_READ_THREADS = 64
ROUND_TRIP_MAX_AGE_S = 60.0
"""A round trip observed longer ago than this is measured again."""

_ROUND_TRIPS: dict[int, tuple[Any, list[float], float]] = {}  # id(fs) -> (fs, last samples, monotonic)
_ROUND_TRIPS_LOCK = threading.Lock()
_KEPT_FILESYSTEMS = 16


def _fresh_lock() -> None:  # a forked child: the lock may have been held by a parent thread at the fork
    global _ROUND_TRIPS_LOCK
    _ROUND_TRIPS_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fresh_lock)


@atexit.register
def _forget_round_trips() -> None:
    """Drop the filesystems held here before pyarrow finalizes S3 at exit (see ``resolve``)."""
    with _ROUND_TRIPS_LOCK:
        _ROUND_TRIPS.clear()


def is_remote_filesystem(fs: pafs.FileSystem) -> bool:
    """Whether reads on ``fs`` cross a network (anything but the local disk and memory)."""
    if isinstance(fs, (pafs.LocalFileSystem, pafs.SubTreeFileSystem)):
        return isinstance(fs, pafs.SubTreeFileSystem) and is_remote_filesystem(fs.base_fs)
    if isinstance(fs, pafs.PyFileSystem):
        inner = getattr(fs.handler, "inner", None)  # a cache in front of a store
        fsspec = getattr(fs.handler, "fs", None)
        if inner is not None:
            return is_remote_filesystem(inner)
        return fsspec is None or "local" not in str(getattr(fsspec, "protocol", "")).lower()
    return fs.type_name not in ("local", "mock")


def parallel_map(
    fn: Callable[[T], R], items: Sequence[T], *, fs: pafs.FileSystem, threads: int = 64
) -> list[R]:
    """``[fn(x) for x in items]``, on ``threads`` threads when ``fs`` is remote."""
    if len(items) < 2 or not is_remote_filesystem(fs):
        return [fn(x) for x in items]
    with ThreadPoolExecutor(min(threads, len(items)), thread_name_prefix="pipeline-footers") as pool:
        return list(pool.map(fn, items))


def store_of(fs: Any) -> Any:
    """The filesystem whose requests cross the network: a cache's store, else ``fs`` itself."""
    handler = getattr(fs, "handler", None) if isinstance(fs, pafs.PyFileSystem) else None
    inner = getattr(handler, "inner", None)
    return store_of(inner) if inner is not None else fs


def note_round_trip(fs: pafs.FileSystem, seconds: float) -> None:
    """Record the seconds of one request (a ``HEAD``, a listing page) made on ``fs``.

    :func:`read_threads` sizes the reader from these instead of measuring again.
    """
    store = store_of(fs)
    now = time.monotonic()
    with _ROUND_TRIPS_LOCK:
        entry = _ROUND_TRIPS.get(id(store))
        samples = entry[1][-255:] if entry is not None and entry[0] is store else []
        _ROUND_TRIPS[id(store)] = (store, [*samples, seconds], now)  # keeps store alive: ids stay unique
        if len(_ROUND_TRIPS) > _KEPT_FILESYSTEMS:
            oldest = min(_ROUND_TRIPS, key=lambda k: _ROUND_TRIPS[k][2])
            del _ROUND_TRIPS[oldest]


def observed_latency(fs: pafs.FileSystem, max_age_s: float = ROUND_TRIP_MAX_AGE_S) -> float | None:
    """The shortest of the round trips recently noted for ``fs`` (or its cache's store), else ``None``.

    The shortest, not the median: an open sends its requests together (a ``HEAD`` and a footer
    per file), and those that waited in the store's queue behind the others measure the queue,
    not the latency. Sized from a queued median, the reader started 50-60 threads on a 20 ms
    store and fetched a third of a 256-row-group dataset before its first items could decode.

    A cache in front of a store (a ``PyFileSystem`` whose handler has ``observed_latency()``)
    answers itself: its latest reads, fast when they were hits.
    """
    handler = getattr(fs, "handler", None) if isinstance(fs, pafs.PyFileSystem) else None
    own = getattr(handler, "observed_latency", None)
    if own is not None and (seconds := own()) is not None:
        return float(seconds)
    store = store_of(fs)
    with _ROUND_TRIPS_LOCK:
        entry = _ROUND_TRIPS.get(id(store))
    if entry is None or entry[0] is not store or time.monotonic() - entry[2] > max_age_s:
        return None
    return min(entry[1])


def measure_latency(fs: pafs.FileSystem, path: str, samples: int = 1) -> float:
    """Median seconds of a metadata request (``get_file_info``, one ``HEAD`` for a file) on ``path``."""
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        fs.get_file_info(path)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def read_threads(
    fs: pafs.FileSystem,
    path: str,
    *,
    cpu_threads: int,
    config: StorageConfig | None = None,
) -> int:
    """Reader threads for a dataset at ``path`` on ``fs``.

    Local: ``cpu_threads``. Remote: ``config.read_threads`` when set, else
    ``cpu_threads + round(latency_ms / 2)`` at most 64 (20 ms -> cpu + 10; under 1 ms, a warm
    disk cache: ``cpu_threads``, as one more thread only adds GIL contention), the latency being
    the round trips that opening the dataset made (:func:`observed_latency`), or one ``HEAD``
    when there were none.
    """
    if not is_remote_filesystem(fs):
        return cpu_threads
    cfg = config or load_storage_config()
    if cfg.read_threads is not None:
        return cfg.read_threads
    latency = observed_latency(fs)
    how = "observed"
    if latency is None:
        latency = measure_latency(fs, f"{path.rstrip('/')}/_common_metadata")  # a file: a single HEAD
        note_round_trip(fs, latency)
        how = "measured"
    threads = min(MAX_READ_THREADS, cpu_threads + int(latency * 1000 / 2 + 0.5))
    log.info(
        "remote dataset %s: %.1f ms per request (%s) -> %d reader threads", path, latency * 1000, how, threads
    )
    return max(cpu_threads, threads)


class RemoteReads:
    """How the reader reads data files: pre-buffered, with as few round trips as the store allows.

    Args:
        fs: The dataset's filesystem.
        config: ``pre_buffer``. Defaults to ``None`` (``conf/storage.yaml``).
        sizes: Bytes of each file as listed. On a native remote filesystem (S3, GCS, HDFS), a
            listed file is opened without a ``HEAD``: its footer is one ``GET``. Defaults to
            ``None`` (every file's size is asked from the store when it is opened).
    """

    def __init__(
        self, fs: pafs.FileSystem, config: StorageConfig | None = None, sizes: Mapping[str, int] | None = None
    ) -> None:
        self.fs = fs
        self.remote = is_remote_filesystem(fs)
        self.pre_buffer = self.remote and (config or load_storage_config()).pre_buffer
        # one handle per file, shared: only for native remote files, whose read_at is thread-safe
        self._share = self.remote and not isinstance(fs, pafs.PyFileSystem)
        self._sizes = {path: int(size) for path, size in (sizes or {}).items()} if self._share else {}
        self._handles: dict[str, Future[Any]] = {}
        self._fragments: dict[str, Future[Any]] = {}
        self._lock = threading.Lock()
        self._format: Any = None  # pyarrow.dataset's Parquet format, made with the first fragment

    def __getstate__(self) -> dict[str, Any]:
        return {"fs": self.fs, "pre_buffer": self.pre_buffer, "sizes": self._sizes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["fs"], StorageConfig(pre_buffer=state["pre_buffer"]), state["sizes"])  # type: ignore[misc]

    def footer(self, path: str) -> pq.FileMetaData:
        """The Parquet footer of ``path`` (a listed file on a store: one ``GET``, no ``HEAD``)."""
        if path in self._sizes:
            return self._fragment(path).metadata
        with self.open(path) as fh:
            return pq.ParquetFile(fh).metadata

    def read_row_group(
        self, path: str, index: int, columns: list[str], metadata: pq.FileMetaData | None = None
    ) -> pa.Table:
        """Row group ``index`` of ``path``, ``columns`` only; ``metadata``: its footer, if read."""
        if path in self._sizes:  # the fragment holds the footer: one GET per row group
            return self._fragment(path).subset(row_group_ids=[index]).to_table(columns=columns)
        with self.open(path) as fh:
            parquet = pq.ParquetFile(fh, metadata=metadata, pre_buffer=self.pre_buffer)
            return parquet.read_row_group(index, columns=columns)

    def _fragment(self, path: str) -> Any:
        """The dataset fragment of listed file ``path``, its footer read (once, however many ask)."""
        return self._shared(self._fragments, path, lambda: self._read_fragment(path))

    def _read_fragment(self, path: str) -> Any:
        if self._format is None:
            # imported here, not with this module: pyarrow.dataset imports pandas (0.3 s), which
            # converters and the CLI do not need
            import pyarrow.dataset as pads

            scan = pads.ParquetFragmentScanOptions(pre_buffer=self.pre_buffer)
            self._format = pads.ParquetFileFormat(default_fragment_scan_options=scan)
        fragment = self._format.make_fragment(path, filesystem=self.fs, file_size=self._sizes[path])
        fragment.ensure_complete_metadata()  # the footer: a GET of the file's last 64 KiB
        return fragment

    def _shared(self, table: dict[str, Future[Any]], path: str, make: Callable[[], Any]) -> Any:
        """``make()`` once per ``path`` in ``table``; threads asking meanwhile wait for that call.
        A failure is not kept (the next call tries again). Its seconds are a noted round trip."""
        with self._lock:
            entry = table.get(path)
            owner = entry is None
            if entry is None:
                entry = table[path] = Future()
        if owner:  # outside the lock; the other threads wait for it
            started = time.perf_counter()
            try:
                entry.set_result(make())
            except BaseException as exc:
                entry.set_exception(exc)
                with self._lock:
                    if table.get(path) is entry:
                        del table[path]
                raise
            note_round_trip(self.fs, time.perf_counter() - started)
        return entry.result()

    @contextlib.contextmanager
    def open(self, path: str) -> Iterator[pa.NativeFile]:
        """An input file for ``path``: shared (not closed here) on remote stores, else a new one."""
        if not self._share:
            with self.fs.open_input_file(path) as fh:
                yield fh
            return
        yield self._shared(self._handles, path, lambda: self.fs.open_input_file(path))

    def close(self) -> None:
        """Close the shared handles and drop the footers kept."""
        with self._lock:
            entries, self._handles, self._fragments = list(self._handles.values()), {}, {}
        for entry in entries:
            if entry.done() and entry.exception() is None:
                entry.result().close()
