"""A read-through ``pyarrow.fs`` filesystem whose file reads are served by a :class:`DiskCache`.

``cached_filesystem(url)`` returns ``(filesystem, path)``; pass them on as
``DatasetSource(path, ReadOptions(filesystem=filesystem))`` or
``open_loader(path, filesystem=filesystem)``. Listings and file info go to the store; every
``read``/``read_at`` on an opened file becomes one cache entry keyed by the file's path, size,
mtime and the byte range. The filesystem pickles (store filesystem + cache folder and limit),
so DataLoader workers and Spark executors reopen it by themselves.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from pipeline.access.disk import DEFAULT_DISK_LIMIT, DiskCache, default_cache_dir
from pipeline.storage import resolve

__all__ = ["CachingHandler", "cached_filesystem"]


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
        self._infos: dict[str, pafs.FileInfo] = {}  # one HEAD per file and process, not per read

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

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return self.inner.get_file_info(paths)

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        return self.inner.get_file_info(selector)

    def open_input_file(self, path: str) -> pa.NativeFile:
        info = self._infos.get(path)
        if info is None:
            info = self._infos[path] = self.inner.get_file_info(path)
        if info.type != pafs.FileType.File:
            raise FileNotFoundError(f"{path} is not a file on {self.inner.type_name}")
        return pa.PythonFile(_CachedFile(self, path, info), mode="r")

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
        self._store: pa.NativeFile | None = None
        self._lock = threading.Lock()
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
        data = self._handler.cache.get(key, length, lambda: self._fetch(start, length))
        self._pos = start + length
        return data

    def _fetch(self, start: int, length: int) -> bytes:
        with self._lock:
            if self._store is None:
                self._store = self._handler.inner.open_input_file(self._path)
            return self._store.read_at(length, start)

    def close(self) -> None:
        self.closed = True
        if self._store is not None:
            self._store.close()
            self._store = None
