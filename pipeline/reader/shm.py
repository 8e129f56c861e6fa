"""Row-buffer columns in POSIX shared memory, so that worker processes decode straight into them.

The reader's parent process creates one segment per fixed-shape column of the row buffer
(``/dev/shm/pipeline_<pid>_<token>_<n>``), maps it as a numpy array and hands the segment names
to its worker processes, which map the same pages and write decoded rows into the rows reserved
for their work item: no pickling and no copy of the decoded arrays. The parent alone creates
and unlinks the segments (:meth:`SharedColumns.close`, called in the reader's ``finally``); the
multiprocessing resource tracker unlinks them should the parent die without doing it.

Free space is checked before anything is allocated: a segment larger than what is left on
``/dev/shm`` would otherwise fail with SIGBUS at the first write of a row past the limit.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import secrets
import sys
from dataclasses import dataclass
from multiprocessing import shared_memory
from typing import Any

import numpy as np

from pipeline.errors import ConfigError

__all__ = ["PREFIX", "ColumnLayout", "SharedColumns", "attach_columns", "populate_rows", "shm_free_bytes"]

PREFIX = "pipeline_"
"""Names of this package's segments start with it (``/dev/shm/pipeline_*`` on Linux)."""

SHM_DIR = "/dev/shm"


@dataclass(frozen=True)
class ColumnLayout:
    """Where one column lives: a segment name, a dtype and a shape (picklable)."""

    name: str
    segment: str
    dtype: str
    shape: tuple[int, ...]


def shm_free_bytes() -> int | None:
    """Bytes free on ``/dev/shm``; ``None`` where there is no such mount."""
    try:
        st = os.statvfs(SHM_DIR)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


class SharedColumns:
    """Fixed-shape columns allocated in shared memory by the parent process; a context manager."""

    def __init__(self) -> None:
        self._segments: list[shared_memory.SharedMemory] = []
        self.layouts: list[ColumnLayout] = []
        self._token = f"{PREFIX}{os.getpid()}_{secrets.token_hex(4)}"

    def check_space(self, needed: int) -> None:
        """Raise ``ConfigError`` when ``/dev/shm`` has less than ``needed`` bytes free."""
        free = shm_free_bytes()
        if free is not None and needed > free:
            raise ConfigError(
                f"process workers need {needed / 2**20:,.0f} MiB of shared memory for the row buffer, "
                f"{SHM_DIR} has {free / 2**20:,.0f} MiB free",
                hint="lower shuffle_buffer or read_ahead, give the container more shared memory "
                "(docker run --shm-size=2g), or use workers_type='thread'",
            )

    def allocate(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A new zero-filled array of ``shape`` and ``dtype`` in a segment of its own."""
        nbytes = max(1, int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
        segment = shared_memory.SharedMemory(
            name=f"{self._token}_{len(self._segments)}", create=True, size=nbytes
        )
        self._segments.append(segment)
        self.layouts.append(ColumnLayout(name, segment.name, np.dtype(dtype).str, tuple(shape)))
        return np.ndarray(shape, dtype=dtype, buffer=segment.buf)

    def close(self) -> None:
        """Unmap and unlink every segment (arrays made by :meth:`allocate` must be dropped first)."""
        segments, self._segments = self._segments, []
        for segment in segments:
            with contextlib.suppress(BufferError):  # a view still exists: unlinking frees the name anyway
                segment.close()
            with contextlib.suppress(FileNotFoundError):
                segment.unlink()

    def __enter__(self) -> SharedColumns:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def attach_columns(layouts: list[ColumnLayout]) -> tuple[dict[str, np.ndarray], list[Any]]:
    """In a worker process: map the parent's segments; returns the arrays and the segment handles.

    The worker does not own the segments. Python < 3.13 registers them again with the resource
    tracker, which is harmless: workers share the parent's tracker (fork and spawn both pass it
    on), whose set of names already holds them, and the parent's unlink removes the name.
    """
    arrays: dict[str, np.ndarray] = {}
    handles = []
    for layout in layouts:
        segment = shared_memory.SharedMemory(name=layout.segment)
        handles.append(segment)
        arrays[layout.name] = np.ndarray(layout.shape, dtype=np.dtype(layout.dtype), buffer=segment.buf)
    return arrays, handles


_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23) if sys.platform.startswith("linux") else None
_populate_ok = _POPULATE_WRITE is not None and hasattr(mmap.mmap, "madvise")


def populate_rows(segments: list[Any], layouts: list[ColumnLayout], rows: np.ndarray) -> None:
    """Map, in this process, the pages of ``rows`` of each column before they are written.

    The first write to each 4 KB page of a segment faults, in every process that writes it:
    the page is allocated and zeroed, or (written before by another worker) mapped. On this
    project's 2-core VM a fault costs 2-3.5 us, 9 of them for a 37.6 KB row;
    ``madvise(MADV_POPULATE_WRITE)`` over the rows of a work item does the same work without a
    trap per page: 17% less for fresh pages, 40% less for pages another process made
    (``docs/reader.md``). Linux >= 5.14; elsewhere, or if it fails, the writes fault as before.
    """
    global _populate_ok
    if not _populate_ok or not len(rows):
        return
    page = mmap.PAGESIZE
    ordered = np.unique(np.asarray(rows, dtype=np.int64))
    for segment, layout in zip(segments, layouts, strict=True):
        row_bytes = int(np.prod(layout.shape[1:], dtype=np.int64)) * np.dtype(layout.dtype).itemsize
        if row_bytes <= 0:
            continue
        starts = ordered * row_bytes // page * page
        ends = -(-(ordered + 1) * row_bytes // page) * page
        # merge rows whose pages touch: one call per run of pages
        breaks = np.flatnonzero(starts[1:] > ends[:-1]) + 1
        first = np.concatenate(([0], breaks))
        last = np.concatenate((breaks - 1, [len(ordered) - 1]))
        try:
            for lo, hi in zip(starts[first].tolist(), ends[last].tolist(), strict=True):
                segment._mmap.madvise(_POPULATE_WRITE, lo, min(hi, segment.size) - lo)
        except OSError as exc:
            if exc.errno in (errno.ENOMEM, errno.EFAULT, errno.ENOSPC):  # the write would SIGBUS
                raise ConfigError(
                    f"{SHM_DIR} is full: a reader worker process could not place the rows of its "
                    f"work item in shared memory ({os.strerror(exc.errno or 0)})",
                    hint="lower shuffle_buffer or read_ahead, give the container more shared memory "
                    "(docker run --shm-size=2g), or use workers_type='thread'",
                ) from None
            _populate_ok = False  # an older kernel (EINVAL): the writes fault as before
            return
        except (ValueError, AttributeError):
            _populate_ok = False
            return
