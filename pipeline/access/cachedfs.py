"""A read-through ``pyarrow.fs`` filesystem whose file reads are served by a :class:`DiskCache`.

``cached_filesystem(url)`` returns ``(filesystem, path)``; pass them on as
``DatasetSource(path, ReadOptions(filesystem=filesystem))`` or
``open_loader(path, filesystem=filesystem)``. Listings and file info go to the store; every
``read``/``read_at`` on an opened file becomes one cache entry keyed by the file's path, size,
mtime and the byte range. The filesystem pickles (store filesystem + cache folder and limit),
so DataLoader workers and Spark executors reopen it by themselves.

Round trips: opening a file takes its size and mtime from the latest listing of its folder (the
listing an open of the dataset makes anyway), so a warm open reads ``_common_metadata`` and the
footers from the cache without a ``HEAD`` per file; a file not seen in a listing costs one
``HEAD``, made once however many threads open it. Each listing replaces what the previous one
said, so a rewritten file gets a new key, never the old entries. The store is opened once per
file (and size and mtime) and its handle shared by the reads that miss; a file whose size on the
store is no longer the listed one is an error, not an entry.

Warm opens without waiting for the listing (:meth:`CachingHandler.listing`): the latest listing of
a dataset's folder is kept in the cache folder (``listings/``). A reader that opens the dataset
again may start from it at once -- its footers and row groups are cache hits keyed by the sizes
and mtimes it names -- while the folder is listed again in the background; the reader waits for
that listing before it hands out anything, and opens the dataset anew if the store's listing is
not the kept one (``pipeline.open_loader`` does: the first batch waits for the listing's round
trip, no longer for the listing *and* the reads after it).
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from pipeline.access.disk import DEFAULT_DISK_LIMIT, DiskCache, default_cache_dir
from pipeline.storage import is_remote_filesystem, resolve
from pipeline.storage.readahead import note_round_trip

__all__ = ["CachingHandler", "cached_filesystem"]

log = logging.getLogger(__name__)

_LISTING_VERSION = 1
_LISTING_MAX_FILES = 200_000  # a larger folder's listing is not kept (nor opened from)
_LISTINGS_KEPT = 256  # listings of this many folders at most (the least recently written go)


def cached_filesystem(
    url: str | os.PathLike[str],
    *,
    filesystem: pafs.FileSystem | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    cache_limit: int | None = None,
) -> tuple[pafs.FileSystem, str]:
    """The filesystem of ``url`` wrapped in a disk cache, and ``url``'s path on it.

    Args:
        url: Dataset URL or path (or a path on ``filesystem``).
        filesystem: The store's filesystem; ``None`` resolves it from ``url`` with
            :func:`pipeline.storage.resolve` (``s3://``, fsspec, ``conf/storage.yaml``). Defaults to ``None``.
        cache_dir: Cache folder. Defaults to ``None`` (:func:`~pipeline.access.disk.default_cache_dir`).
        cache_limit: Bytes of entries kept. Defaults to ``None`` (``DEFAULT_DISK_LIMIT``, 10 GiB).
    """
    filesystem, path = resolve(url, filesystem=filesystem)
    if isinstance(filesystem, pafs.PyFileSystem) and isinstance(filesystem.handler, CachingHandler):
        return filesystem, path  # already cached: one cache, not two
    cache = DiskCache(
        cache_dir if cache_dir is not None else default_cache_dir(),
        DEFAULT_DISK_LIMIT if cache_limit is None else cache_limit,
    )
    return pafs.PyFileSystem(CachingHandler(filesystem, cache)), path


class CachingHandler(pafs.FileSystemHandler):
    """``pyarrow.fs.FileSystemHandler`` reading through ``cache`` from ``inner``; writes pass through."""

    def __init__(self, inner: pafs.FileSystem, cache: DiskCache) -> None:
        self.inner = inner
        self.cache = cache
        # native remote files: positional reads are thread-safe, one store handle per file serves all
        self._share = is_remote_filesystem(inner) and not isinstance(inner, pafs.PyFileSystem)
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._infos: dict[str, pafs.FileInfo] = {}  # path -> latest listing or HEAD of it
        self._heads: dict[str, Future[pafs.FileInfo]] = {}  # HEADs in flight
        self._read_times: deque[float] = deque(maxlen=8)  # seconds of the latest reads, hits or not
        self._stores: dict[tuple[Any, ...], Future[pa.NativeFile]] = {}  # shared store handles

    def _check_pid(self) -> None:
        if self._pid != os.getpid():  # forked: the parent's connections and locks are not ours
            self._reset()

    def __getstate__(self) -> dict[str, Any]:
        return {"inner": self.inner, "cache": self.cache}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["inner"], state["cache"])  # type: ignore[misc]

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, CachingHandler)
            and self.inner.equals(other.inner)
            and self.cache.directory == other.cache.directory
        )

    def __hash__(self) -> int:
        return hash(str(self.cache.directory))

    def get_type_name(self) -> str:
        return f"cached+{self.inner.type_name}"

    def normalize_path(self, path: str) -> str:
        return self.inner.normalize_path(path)

    def _remember(self, infos: list[pafs.FileInfo]) -> None:
        self._check_pid()
        with self._lock:
            for info in infos:
                if info.type == pafs.FileType.File:
                    self._infos[info.path] = info
                else:
                    self._infos.pop(info.path, None)

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        infos = self.inner.get_file_info(paths)
        self._remember(infos)
        return infos

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        started = time.perf_counter()
        infos = self.inner.get_file_info(selector)
        note_round_trip(self.inner, time.perf_counter() - started)  # sizes the reader's threads
        self._remember(infos)
        return infos

    def listing(
        self, root: str, *, speculate: bool = False
    ) -> tuple[list[pafs.FileInfo], Callable[[], bool] | None]:
        """Every entry under ``root`` (a recursive listing), and how to confirm it.

        Without ``speculate``, or when no listing of ``root`` is kept: the store's listing (kept
        for the next open), and ``None``. With ``speculate`` and a kept listing: the kept one at
        once, the store listed again in a background thread, and ``confirm()``: it waits for that
        listing and returns whether the store still holds exactly the kept files (path, size,
        mtime). The caller must not hand anything read on the kept listing to its user before
        ``confirm()`` returned ``True``; on ``False`` (or a failed listing) it opens the dataset
        again without ``speculate``.
        """
        selector = pafs.FileSelector(root, recursive=True)
        kept = self._kept_listing(root) if speculate else None
        if kept is None:
            infos = self.get_file_info_selector(selector)
            self._keep_listing(root, infos)
            return infos, None
        self._remember(kept)
        fresh: Future[list[pafs.FileInfo]] = Future()

        def relist() -> None:
            try:
                fresh.set_result(self.get_file_info_selector(selector))
            except BaseException as exc:  # the confirmation reports it as a change: reopened
                fresh.set_exception(exc)

        # not a daemon: an exit waits for it rather than finalizing the S3 client under it
        threading.Thread(target=relist, name="pipeline-relist").start()

        def confirm() -> bool:
            try:
                infos = fresh.result()
            except Exception as exc:
                log.debug("listing %s again failed (%s): opening it anew", root, exc)
                return False
            same = _files_of(infos) == _files_of(kept)
            if not same:
                log.info("%s changed on the store since it was last listed: opening it anew", root)
                self._keep_listing(root, infos)
            return same

        return kept, confirm

    def _listing_path(self, root: str) -> Path:
        key = self.cache.key("listing", self.inner.type_name, root)
        return self.cache.directory / "listings" / key

    def _kept_listing(self, root: str) -> list[pafs.FileInfo] | None:
        """The listing of ``root`` kept by an earlier open, or ``None`` (none, unreadable, other)."""
        try:
            kept = json.loads(self._listing_path(root).read_bytes())
            if kept.get("version") != _LISTING_VERSION or kept.get("root") != root:
                return None
            return [
                pafs.FileInfo(path, pafs.FileType.File, size=size, mtime_ns=mtime)
                for path, size, mtime in kept["files"]
            ]
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return None

    def _keep_listing(self, root: str, infos: list[pafs.FileInfo]) -> None:
        """Keep the files of a listing of ``root`` (atomically; best effort: a read-only disk keeps none)."""
        files = _files_of(infos)
        if len(files) > _LISTING_MAX_FILES or any(mtime is None for _, _, mtime in files):
            return  # too large to be worth it, or no mtimes (a rewrite of the same size would not show)
        path = self._listing_path(root)
        tmp = path.with_name(f".tmp-{os.getpid()}-{threading.get_ident()}-{path.name}")
        try:
            path.parent.mkdir(exist_ok=True)
            tmp.write_text(json.dumps({"version": _LISTING_VERSION, "root": root, "files": files}))
            os.replace(tmp, path)
            kept = sorted((e for e in os.scandir(path.parent) if not e.name.startswith(".")), key=_mtime)
            for old in kept[: max(0, len(kept) - _LISTINGS_KEPT)]:
                Path(old.path).unlink(missing_ok=True)
        except OSError as exc:
            log.debug("cannot keep the listing of %s: %s", root, exc)
            tmp.unlink(missing_ok=True)

    def _info(self, path: str) -> pafs.FileInfo:
        """The listed size and mtime of ``path``, else one ``HEAD`` (shared by concurrent callers)."""
        self._check_pid()
        with self._lock:
            info = self._infos.get(path)
            if info is not None:
                return info
            head = self._heads.get(path)
            owner = head is None
            if head is None:
                head = self._heads[path] = Future()
        if owner:
            try:
                started = time.perf_counter()
                info = self.inner.get_file_info(path)
                note_round_trip(self.inner, time.perf_counter() - started)
                head.set_result(info)
                self._remember([info])
            except BaseException as exc:
                head.set_exception(exc)
            finally:
                with self._lock:
                    self._heads.pop(path, None)
        return head.result()

    def observed_latency(self) -> float | None:
        """Seconds of the latest reads through the cache (a miss: its round trip; a hit: 0), or ``None``.

        What a read costs the reader now: after opening a dataset these are its footer reads,
        so that :func:`~pipeline.storage.read_threads` sizes the reader for the store when the
        cache is cold and for the local disk when it is warm. Mostly misses (a median of 1 ms or
        more): the shortest of the misses, as the footers are read together and queue at the store.
        """
        times = list(self._read_times)
        if not times:
            return None
        median = statistics.median(times)
        return median if median < 0.001 else min(t for t in times if t >= 0.001)  # the misses

    def note_read(self, seconds: float) -> None:
        self._read_times.append(seconds)

    def open_input_file(self, path: str) -> pa.NativeFile:
        info = self._info(path)
        if info.type != pafs.FileType.File:
            raise FileNotFoundError(f"{path} is not a file on {self.inner.type_name}")
        return pa.PythonFile(_CachedFile(self, path, info), mode="r")

    def read_store(
        self, path: str, identity: tuple[Any, ...], size: int, start: int, length: int, took: list[float]
    ) -> bytes:
        """``length`` bytes at ``start`` of ``path`` on the store, whose size must still be ``size``;
        appends the seconds of the read itself (not of opening the file) to ``took``."""
        if not self._share:
            with self.inner.open_input_file(path) as fh:
                return _timed(_checked(fh, path, size), start, length, took)
        self._check_pid()
        with self._lock:
            entry = self._stores.get(identity)
            owner = entry is None
            if entry is None:
                entry = self._stores[identity] = Future()
        if owner:  # one open (HEAD) per file, outside the lock
            try:
                entry.set_result(_checked(self.inner.open_input_file(path), path, size))
            except BaseException as exc:
                entry.set_exception(exc)
                with self._lock:
                    if self._stores.get(identity) is entry:
                        del self._stores[identity]
                raise
        return _timed(entry.result(), start, length, took)

    def open_input_stream(self, path: str) -> pa.NativeFile:
        return self.open_input_file(path)

    # Writes and changes go to the store (the cache keys on size and mtime, so they never go stale).
    def create_dir(self, path: str, recursive: bool) -> None:
        self.inner.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self.inner.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self.inner.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        self.inner.delete_dir_contents("/", accept_root_dir=True)

    def delete_file(self, path: str) -> None:
        self.inner.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self.inner.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        self.inner.copy_file(src, dest)

    def open_output_stream(self, path: str, metadata: Any) -> pa.NativeFile:
        return self.inner.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path: str, metadata: Any) -> pa.NativeFile:
        return self.inner.open_append_stream(path, metadata=metadata)


class _CachedFile:
    """The Python file object behind ``pa.PythonFile``: seek/tell/read through the cache."""

    def __init__(self, handler: CachingHandler, path: str, info: pafs.FileInfo) -> None:
        self._handler = handler
        self._path = path
        self._size = int(info.size)
        mtime = info.mtime_ns if info.mtime_ns is not None else ""
        self._identity = (handler.inner.type_name, path, self._size, mtime)
        self._pos = 0
        self.closed = False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def read(self, nbytes: int = -1) -> bytes:
        start = min(self._pos, self._size)
        length = self._size - start if nbytes is None or nbytes < 0 else min(nbytes, self._size - start)
        if length == 0:
            return b""
        key = DiskCache.key(*self._identity, start, length)
        took: list[float] = []
        data = self._handler.cache.get(key, length, lambda: self._fetch(start, length, took))
        # a miss: its round trip; a hit: 0 -- it costs CPU, not latency (its wall time, stretched by
        # GIL waits when 32 footers are read at once, had sized a warm reader at cores + 1 threads)
        self._handler.note_read(took[0] if took else 0.0)
        self._pos = start + length
        return data

    def _fetch(self, start: int, length: int, took: list[float]) -> bytes:
        return self._handler.read_store(self._path, self._identity, self._size, start, length, took)

    def close(self) -> None:
        self.closed = True


def _mtime(entry: os.DirEntry[str]) -> float:
    try:
        return entry.stat().st_mtime
    except FileNotFoundError:  # deleted meanwhile by another process
        return 0.0


def _files_of(infos: list[pafs.FileInfo]) -> list[tuple[str, int | None, int | None]]:
    """``(path, size, mtime_ns)`` of the files of a listing, sorted: what a kept listing holds."""
    return sorted((info.path, info.size, info.mtime_ns) for info in infos if info.type == pafs.FileType.File)


def _timed(fh: pa.NativeFile, start: int, length: int, took: list[float]) -> bytes:
    started = time.perf_counter()
    data = fh.read_at(length, start)
    took.append(time.perf_counter() - started)
    return data


def _checked(fh: pa.NativeFile, path: str, size: int) -> pa.NativeFile:
    """``fh``, unless the file is no longer ``size`` bytes (rewritten since it was listed)."""
    actual = fh.size()
    if actual != size:
        fh.close()
        raise OSError(
            f"{path} is {actual} bytes on the store, {size} when listed: it was rewritten while "
            "being read; open the dataset again"
        )
    return fh
