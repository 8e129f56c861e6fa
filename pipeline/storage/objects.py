"""Object operations used by conversions and readers: parallel listing, reads, writes, deletes.

Listing a large prefix: the top level is listed with a delimiter, then each sub-prefix is
listed recursively in its own thread (``list_threads`` at once); each of those listings is
paginated by the SDK (1000 keys a page). Every step retries transient errors.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any

import pyarrow.fs as pafs

from pipeline.errors import InputError
from pipeline.storage.config import StorageConfig, load_storage_config
from pipeline.storage.errors import storage_error
from pipeline.storage.resolve import endpoint_of, is_remote, resolve
from pipeline.storage.retry import with_retries

__all__ = ["delete_paths", "list_files", "local_copy", "open_input", "read_bytes", "write_bytes"]

log = logging.getLogger(__name__)


def _cfg(config: StorageConfig | dict[str, Any] | None) -> StorageConfig:
    if isinstance(config, StorageConfig):
        return config
    return StorageConfig(**config) if isinstance(config, dict) else load_storage_config()


def list_files(
    fs: pafs.FileSystem, root: str, *, url: str | None = None, config: StorageConfig | None = None
) -> list[pafs.FileInfo]:
    """Every file under ``root`` (recursive), sorted by path; ``[]`` when ``root`` does not exist.

    Sub-prefixes of ``root`` are listed in parallel (``config.list_threads``).

    Raises:
        PipelineError: A non-transient storage error (missing bucket, access denied), or a
            transient one after the last retry.
    """
    cfg = _cfg(config)
    where = url or root
    endpoint = endpoint_of(cfg) if isinstance(fs, pafs.S3FileSystem) else None

    def listing(path: str, recursive: bool) -> list[pafs.FileInfo]:
        selector = pafs.FileSelector(path, recursive=recursive, allow_not_found=True)
        return with_retries(
            lambda: fs.get_file_info(selector), url=where, action="list", config=cfg, endpoint=endpoint
        )

    top = listing(root, False)
    files = [e for e in top if e.type == pafs.FileType.File]
    subdirs = [e.path for e in top if e.type == pafs.FileType.Directory]
    if subdirs:
        with ThreadPoolExecutor(
            min(cfg.list_threads, len(subdirs)), thread_name_prefix="pipeline-list"
        ) as pool:
            for entries in pool.map(lambda p: listing(p, True), subdirs):
                files.extend(e for e in entries if e.type == pafs.FileType.File)
    files.sort(key=lambda e: e.path)
    return files


def file_info(
    fs: pafs.FileSystem, path: str, *, url: str, config: StorageConfig | None = None
) -> pafs.FileInfo:
    """``FileInfo`` of one path, with retries and clean errors (a missing bucket is an error)."""
    cfg = _cfg(config)
    endpoint = endpoint_of(cfg) if isinstance(fs, pafs.S3FileSystem) else None
    info = with_retries(lambda: fs.get_file_info(path), url=url, action="read", config=cfg, endpoint=endpoint)
    if info.type == pafs.FileType.NotFound and isinstance(fs, pafs.S3FileSystem):
        bucket = path.split("/", 1)[0]
        found = with_retries(
            lambda: fs.get_file_info(bucket), url=url, action="read", config=cfg, endpoint=endpoint
        )
        if found.type == pafs.FileType.NotFound:
            raise storage_error(OSError("NoSuchBucket"), url, "read", endpoint)
    return info


def open_input(url: str, config: StorageConfig | dict[str, Any] | None = None) -> IO[bytes]:
    """A binary, seekable file object for a path or URL (runs in Spark executors too).

    Raises:
        OSError: The file cannot be opened (a missing file is ``FileNotFoundError``), so that
            callers treat it as bad input like a local ``open``.
    """
    if not is_remote(url):
        return open(url, "rb")
    fs, path = resolve(url, config=config)
    return fs.open_input_file(path)  # type: ignore[return-value]


def read_bytes(url: str, config: StorageConfig | dict[str, Any] | None = None) -> bytes:
    """The whole content of a file (local or remote)."""
    if not is_remote(url):
        with open(url, "rb") as fh:
            return fh.read()
    fs, path = resolve(url, config=config)
    with fs.open_input_stream(path) as fh:
        return fh.read()


@contextlib.contextmanager
def local_copy(url: str, config: StorageConfig | dict[str, Any] | None = None) -> Iterator[str]:
    """A local path for ``url``: the path itself, or a temporary download removed on exit.

    For formats read with many small random reads (HDF5), one sequential download beats a
    request per read over a high-latency link.
    """
    if not is_remote(url):
        yield url
        return
    fs, path = resolve(url, config=config)
    fd, tmp = tempfile.mkstemp(prefix="pipeline-", suffix=os.path.splitext(path)[1])
    try:
        with os.fdopen(fd, "wb") as out, fs.open_input_stream(path) as src:
            shutil.copyfileobj(src, out, 8 << 20)
        yield tmp
    finally:
        os.unlink(tmp)


def write_bytes(
    fs: pafs.FileSystem, path: str, data: bytes, *, url: str, config: StorageConfig | None = None
) -> None:
    """Write one whole object (a single PUT on S3: visible complete or not at all), with retries."""
    cfg = _cfg(config)

    def put() -> None:
        with fs.open_output_stream(path) as out:
            out.write(data)

    with_retries(put, url=url, action="write", config=cfg)


def upload_file(
    local: str, fs: pafs.FileSystem, path: str, *, url: str, config: StorageConfig | None = None
) -> None:
    """Copy a local file to ``fs``/``path``, with retries."""
    cfg = _cfg(config)

    def put() -> None:
        with open(local, "rb") as src, fs.open_output_stream(path) as out:
            shutil.copyfileobj(src, out, 8 << 20)

    with_retries(put, url=url, action="write", config=cfg)


def delete_paths(
    fs: pafs.FileSystem, paths: Sequence[str], *, url: str, config: StorageConfig | None = None
) -> None:
    """Delete files (missing ones are fine), several at once, with retries."""
    cfg = _cfg(config)

    def delete(path: str) -> None:
        def step() -> None:
            with contextlib.suppress(FileNotFoundError):
                fs.delete_file(path)

        with_retries(step, url=url, action="delete", config=cfg)

    if not paths:
        return
    with ThreadPoolExecutor(min(cfg.list_threads, len(paths)), thread_name_prefix="pipeline-delete") as pool:
        list(pool.map(delete, paths))


def check_readable(url: str, config: StorageConfig | None = None) -> None:
    """Raise a clean :class:`InputError` when ``url``'s bucket or prefix cannot be listed."""
    fs, root = resolve(url, config=config)
    try:
        fs.get_file_info(root)
    except OSError as exc:
        err = storage_error(exc, url, "read", endpoint_of(_cfg(config)))
        raise InputError(err.message, hint=err.hint) from None
