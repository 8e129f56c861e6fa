"""Input listing: find the source files of a conversion and split them into balanced partitions.

Listing happens once, on the driver, from file metadata only (names and sizes); the files are
opened by the Spark tasks. Partitions are contiguous runs of the sorted listing whose byte sizes
are as equal as possible, so that the output keeps the listing's order and tasks take about the
same time.
"""

from __future__ import annotations

import glob
import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from pipeline.errors import InputError

__all__ = [
    "SourceFile",
    "choose_partitions",
    "is_hidden",
    "list_source_files",
    "local_path",
    "split_by_bytes",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceFile:
    """One input file: its absolute local path and size in bytes."""

    path: str
    size: int


def local_path(path_or_url: str | os.PathLike[str]) -> Path:
    """A local path from a path or ``file://`` URL; other schemes are an :class:`InputError`."""
    text = os.fspath(path_or_url)
    parsed = urlparse(text)
    if parsed.scheme == "file":
        return Path(parsed.path)
    if parsed.scheme and len(parsed.scheme) > 1:
        raise InputError(
            f"{text}: only local paths and file:// URLs are supported as conversion sources",
            hint="copy the data to a local or mounted folder (every Spark worker must see the same path)",
        )
    return Path(text).expanduser()


def is_hidden(rel_path: str) -> bool:
    """Whether any part of a relative path starts with ``.`` (``.DS_Store``, ``._x.jpg``, ``.git/``)."""
    return any(part.startswith(".") for part in Path(rel_path).parts)


def _walk(root: Path) -> Iterable[Path]:
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith("."):
                yield Path(dirpath) / name


def list_source_files(
    src: str | os.PathLike[str], *, extensions: Sequence[str] | None = None, what: str = "input files"
) -> list[SourceFile]:
    """List the files of ``src``: a file, a folder (recursive) or a glob pattern.

    Hidden files and folders are left out. Files whose name does not end in one of
    ``extensions`` (case-insensitive) are left out and counted in a log line.

    Args:
        src: Path, ``file://`` URL or glob (``data/*.txt``, ``data/**/*.h5``).
        extensions: Allowed suffixes such as ``(".jpg", ".png")``. Defaults to ``None`` (all files).
        what: What the files are, for error messages. Defaults to ``"input files"``.

    Returns:
        The files sorted by path, with their sizes.

    Raises:
        InputError: ``src`` does not exist or holds no matching file.
    """
    text = os.fspath(src)
    root = local_path(text)
    if any(c in str(root) for c in "*?["):
        candidates = [Path(p) for p in sorted(glob.glob(str(root), recursive=True))]
        candidates = [p for p in candidates if p.is_file() and not p.name.startswith(".")]
    elif root.is_dir():
        candidates = list(_walk(root))
    elif root.is_file():
        candidates = [root]
    else:
        raise InputError(f"{text} does not exist", hint="check the SRC path")
    suffixes = tuple(e.lower() for e in extensions) if extensions else None
    files: list[SourceFile] = []
    ignored = 0
    for path in candidates:
        if suffixes is not None and not path.name.lower().endswith(suffixes):
            ignored += 1
            continue
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise InputError(f"{path}: cannot read file metadata: {exc.strerror}") from None
        files.append(SourceFile(str(path.resolve()), size))
    if ignored:
        log.info("ignored %d file(s) under %s without a %s suffix", ignored, text, "/".join(suffixes or ()))
    if not files:
        allowed = f" ending in {', '.join(suffixes)}" if suffixes else ""
        raise InputError(f"no {what}{allowed} found in {text}", hint="check the SRC path or pattern")
    files.sort(key=lambda f: f.path)
    return files


def split_by_bytes(sizes: Sequence[int], parts: int) -> list[tuple[int, int]]:
    """Split items into at most ``parts`` contiguous ``[start, stop)`` ranges of similar total size.

    Each item counts at least one byte, so that empty files still spread out. No range is
    empty; the order of items is kept.
    """
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    n = len(sizes)
    if n == 0:
        return []
    parts = min(parts, n)
    weights = [max(1, s) for s in sizes]
    total = sum(weights)
    ranges: list[tuple[int, int]] = []
    start = 0
    acc = 0
    for i, w in enumerate(weights):
        acc += w
        remaining_parts = parts - len(ranges) - 1
        remaining_items = n - i - 1
        boundary = total * (len(ranges) + 1) / parts
        if remaining_parts > 0 and (acc >= boundary or remaining_items == remaining_parts):
            ranges.append((start, i + 1))
            start = i + 1
    ranges.append((start, n))
    return ranges


def choose_partitions(
    total_bytes: int, items: int, *, file_mb: int, parallelism: int, fixed: int | None
) -> int:
    """Number of Spark tasks (and at most output files) for a conversion.

    ``fixed`` wins when given; otherwise ``ceil(total_bytes / file_mb)``, at least ``parallelism``
    (keep every core busy), at most one per item.
    """
    if fixed is not None:
        return max(1, min(fixed, items))
    by_size = math.ceil(total_bytes / (file_mb * 1024 * 1024)) if total_bytes else 1
    return max(1, min(items, max(by_size, parallelism)))
