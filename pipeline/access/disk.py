"""A bounded local disk cache of raw Parquet byte ranges, shared by the processes of one machine.

What is cached, and why raw bytes: the entries are the byte ranges the Parquet reader asks a
file for -- footers and the column chunks of row groups -- exactly as stored. Raw bytes are what
is slow to get from far away (object stores, HDFS); decoding stays in each process, where
it is cheap next to the network. They are also 5-50x smaller than decoded images, they do not
depend on the fields, transform or library versions of the process reading them, and a
corrupt entry is detected by a checksum of the very bytes the store returned.

The cache plugs in as a ``pyarrow.fs`` filesystem (:func:`cached_filesystem`): anything that
reads Parquet through a ``pyarrow.fs.FileSystem`` -- ``open_dataset``, ``open_loader(filesystem=)``,
the object-storage reader -- reads through it without a change.

Guarantees:

* **Atomic**: an entry is written to a temporary file in its folder, then renamed.
* **Validated**: each entry ends with a 16-byte trailer (magic, length, CRC-32); an entry whose
  size, trailer or checksum is wrong is deleted and read again from the store, never served.
  A process computes an entry's checksum once and then trusts it while the file's inode, size,
  mtime and ctime stay the same (any write to the file changes them; the cache's own writes
  are renames, new inodes), once the file has been unchanged for a second (file times tick
  coarsely): later epochs do not checksum page-cache bytes again.
* **Shared**: a miss takes an exclusive ``fcntl.flock`` on one of 256 lock stripes, checks the
  entry again and only then reads the store, so N processes missing the same range read it once.
* **Bounded**: after each write the least recently used entries (a hit touches the file's mtime,
  at most once a minute per entry: the LRU order has a minute's resolution) are deleted until the entries fit ``limit`` bytes; an entry larger than the limit is not kept.
  The processes keep a running total of the entries' bytes in the eviction lock file, so that a
  write scans the folder only when the total may exceed the limit (a scan then makes it exact
  again), not at every write.
* **Stale-proof**: keys hash the file's path, size and mtime with the range, so a rewritten
  file never hits the old entries (which age out of the LRU).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import struct
import time
import zlib
from collections.abc import Callable
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_DISK_LIMIT", "CacheStats", "DiskCache", "default_cache_dir"]

log = logging.getLogger(__name__)

DEFAULT_DISK_LIMIT = 10 * 2**30
"""Default bound of the disk cache: 10 GiB of entries."""

_TRAILER = struct.Struct("<4sQI")  # magic, payload length, crc32
_MAGIC = b"PRC1"
_STRIPES = 256
_STALE_TMP_S = 3600
_TOUCH_S = 60.0  # a hit older than this moves the entry to the recent end of the LRU order
_SETTLED_S = 1.0  # file times tick coarsely: trust a checksum only for files unchanged this long
_CHECKED_MAX = 200_000  # validated entries remembered per process (then forgotten, re-checked)
_NOT_ENTRIES = ("locks", "listings")  # folders beside the entries' (listings: see cachedfs)


def default_cache_dir() -> Path:
    """``$PIPELINE_CACHE_DIR/ranges``, else ``$XDG_CACHE_HOME/pipeline/ranges``, else ``~/.cache/...``."""
    base = os.environ.get("PIPELINE_CACHE_DIR")
    if base:
        return Path(base) / "ranges"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "pipeline" / "ranges"


@dataclass
class CacheStats:
    """Counters of one process's use of a :class:`DiskCache`."""

    hits: int = 0
    misses: int = 0
    corrupt: int = 0
    evicted: int = 0
    bytes_fetched: int = 0


class DiskCache:
    """Entries of raw bytes under ``directory``, at most ``limit`` bytes in all.

    Args:
        directory: The cache folder (created if needed); several processes may share it.
        limit: Bound on the bytes of all entries. Defaults to ``DEFAULT_DISK_LIMIT``.
    """

    def __init__(self, directory: str | os.PathLike[str], limit: int = DEFAULT_DISK_LIMIT) -> None:
        from pipeline.errors import ConfigError

        if limit < 0:
            raise ConfigError(f"cache_limit must be >= 0 bytes, got {limit}")
        self.directory = Path(directory).expanduser().resolve()
        self.limit = int(limit)
        self.stats = CacheStats()
        self._checked: dict[str, tuple[int, ...]] = {}  # entry path -> stat of its validated file
        try:
            (self.directory / "locks").mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a file in the way, no permission, a read-only disk
            raise ConfigError(
                f"cache_dir {self.directory} cannot hold a cache: {exc.strerror or exc}",
                hint="pass a folder this process may write to",
            ) from None

    def __getstate__(self) -> dict[str, Any]:
        return {"directory": self.directory, "limit": self.limit}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.directory, self.limit, self.stats = state["directory"], state["limit"], CacheStats()
        self._checked = {}

    @staticmethod
    def key(*parts: object) -> str:
        """A stable entry name for ``parts`` (file identity and byte range)."""
        return hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:40]

    def entry_path(self, key: str) -> Path:
        return self.directory / key[:2] / key

    def get(self, key: str, length: int, fetch: Callable[[], bytes]) -> bytes | memoryview:
        """The ``length`` bytes of entry ``key``: a valid entry, else ``fetch()`` (then stored).

        A hit is a ``memoryview`` of the entry read from disk (no copy); a miss the fetched bytes."""
        data = self._load(key, length)
        if data is not None:
            self.stats.hits += 1
            return data
        with self._locked(f"stripe-{int(key[:2], 16) % _STRIPES:03d}"):
            data = self._load(key, length)  # another process may have fetched it meanwhile
            if data is not None:
                self.stats.hits += 1
                return data
            self.stats.misses += 1
            data = bytes(fetch())
            if len(data) != length:
                raise OSError(f"read {len(data)} bytes of a {length}-byte range from the store")
            self.stats.bytes_fetched += length
            if length + _TRAILER.size <= self.limit:
                self._write(key, data)
        if length + _TRAILER.size <= self.limit:
            self.evict(added=length + _TRAILER.size)
        return data

    def _load(self, key: str, length: int) -> memoryview | None:
        path = str(self.entry_path(key))
        want = length + _TRAILER.size
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            st = os.fstat(fd)
            raw = bytearray(want) if st.st_size == want else None
            got = _read_into(fd, raw) if raw is not None else st.st_size
        finally:
            os.close(fd)
        if raw is not None and got == want:
            magic, size, crc = _TRAILER.unpack_from(raw, length)
            data = memoryview(raw)[:length]
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            if (
                magic == _MAGIC
                and size == length
                and (self._checked.get(path) == stamp or zlib.crc32(data) == crc)
            ):
                if time.time() - st.st_mtime > _TOUCH_S:
                    with suppress(OSError):
                        os.utime(path)  # LRU: most recently used (the next hit checks it again)
                elif time.time() - st.st_ctime > _SETTLED_S:  # a later write gets another ctime
                    if len(self._checked) >= _CHECKED_MAX:
                        self._checked.clear()
                    self._checked[path] = stamp
                return data
        self._checked.pop(path, None)
        self.stats.corrupt += 1
        log.warning("cache entry %s is corrupt or partial (%d bytes); reading it again", path, got)
        Path(path).unlink(missing_ok=True)
        return None

    def _write(self, key: str, data: bytes) -> None:
        path = self.entry_path(key)
        path.parent.mkdir(exist_ok=True)
        tmp = path.parent / f".tmp-{os.getpid()}-{time.monotonic_ns()}-{key}"
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.write(_TRAILER.pack(_MAGIC, len(data), zlib.crc32(data)))
            os.replace(tmp, path)
        except OSError as exc:  # a full or read-only disk degrades to no cache, not a failure
            log.warning("cannot write cache entry %s: %s", path, exc)
            tmp.unlink(missing_ok=True)

    @contextmanager
    def _locked(self, name: str) -> Any:
        """An exclusive ``flock`` on ``locks/name``: excludes other processes and other threads
        (each call opens its own file description). Yields the lock file's descriptor."""
        fd = os.open(self.directory / "locks" / name, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)  # releases the lock

    def entries(self) -> list[tuple[float, int, Path]]:
        """``(mtime, size, path)`` of every entry (temporary files excluded)."""
        found = []
        now = time.time()
        for sub in os.scandir(self.directory):
            if not sub.is_dir() or sub.name in _NOT_ENTRIES:
                continue
            for entry in os.scandir(sub.path):
                try:
                    st = entry.stat()
                except FileNotFoundError:
                    continue
                if entry.name.startswith(".tmp-"):
                    if now - st.st_mtime > _STALE_TMP_S:  # left by a killed process
                        Path(entry.path).unlink(missing_ok=True)
                    continue
                found.append((st.st_mtime, st.st_size, Path(entry.path)))
        return found

    @property
    def nbytes(self) -> int:
        """Bytes of all entries on disk now."""
        return sum(size for _, size, _ in self.entries())

    def evict(self, added: int | None = None) -> None:
        """Delete least recently used entries until all fit the limit (one process at a time).

        Args:
            added: Bytes of the entry just written. The running total in the lock file plus
                ``added`` decides whether the folder is scanned: only when it may exceed the
                limit, or when there is no total yet. Defaults to ``None`` (scan).
        """
        with self._locked("evict") as fd:
            known = _read_total(fd)
            if added is not None and known is not None and known + added <= self.limit:
                _write_total(fd, known + added)
                return
            entries = self.entries()
            total = sum(size for _, size, _ in entries)
            if total > self.limit:
                for _, size, path in sorted(entries, key=lambda e: e[0]):
                    path.unlink(missing_ok=True)
                    self.stats.evicted += 1
                    total -= size
                    if total <= self.limit:
                        break
            _write_total(fd, total)  # exact again; entries deleted by others only make it high (safe)

    def clear(self) -> None:  # the running total stays high until the next write scans: safe
        """Delete every entry (and the listings kept beside them)."""
        for _, _, path in self.entries():
            path.unlink(missing_ok=True)
        with suppress(FileNotFoundError):
            for entry in os.scandir(self.directory / "listings"):
                Path(entry.path).unlink(missing_ok=True)


def _read_into(fd: int, buf: bytearray) -> int:
    """Read ``fd`` from its start into ``buf``; the bytes read (fewer at the end of the file)."""
    view, done = memoryview(buf), 0
    while done < len(buf):
        n = os.preadv(fd, [view[done:]], done)
        if n == 0:
            break
        done += n
    return done


def _read_total(fd: int) -> int | None:
    """The running total of entry bytes kept in the eviction lock file, or ``None``."""
    raw = os.pread(fd, 20, 0)
    try:
        return int(raw.decode("ascii").strip()) if raw else None
    except (UnicodeDecodeError, ValueError):
        return None


def _write_total(fd: int, total: int) -> None:
    os.pwrite(fd, b"%020d" % max(0, total), 0)  # fixed width: no truncate (slow on some filesystems)
