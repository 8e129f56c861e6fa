"""Input listing: find the source files of a conversion and split them into balanced partitions.

Listing happens once, on the driver, from file metadata only (names and sizes); the files are
opened by the Spark tasks. Object-store prefixes (``s3://...``) are listed in parallel through
:mod:`pipeline.storage`; their files keep their URL, which tasks open with
:func:`pipeline.storage.open_input`. Partitions are contiguous runs of the sorted listing whose byte sizes
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
from urllib.parse import unquote, urlparse

import pyarrow.fs as pafs

from pipeline.errors import InputError, PipelineError
from pipeline.storage import file_info, is_remote, list_files, resolve

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
    """One input file: its absolute local path (or ``s3://...`` URL) and size in bytes."""

    path: str
    size: int


def local_path(path_or_url: str | os.PathLike[str]) -> Path:
    """A local path from a path or ``file://`` URL; other schemes are an :class:`InputError`."""
    text = os.fspath(path_or_url)
    parsed = urlparse(text)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise InputError(
                f"{text}: file:// URLs name no host; this one names {parsed.netloc!r}",
                hint="write file:///absolute/path (three slashes) or a plain path",
            )
        return Path(unquote(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:
        raise InputError(
            f"{text}: not a local path (this step needs a local path or a file:// URL)",
            hint="copy the data to a local or mounted folder",
        )
    return Path(text).expanduser()


def is_hidden(rel_path: str) -> bool:
    """Whether any part of a relative path starts with ``.`` (``.DS_Store``, ``._x.jpg``, ``.git/``)."""
    return any(part.startswith(".") for part in Path(rel_path).parts)


def _walk(root: str, seen: set[tuple[int, int]] | None = None) -> Iterable[tuple[str, int]]:
    """``(path, size)`` of the non-hidden files under ``root``, depth first, sorted per folder.

    Symbolic links are followed; a folder already visited (a link loop) is not entered again.
    """
    seen = set() if seen is None else seen
    info = os.stat(root)
    if (info.st_dev, info.st_ino) in seen:
        return
    seen.add((info.st_dev, info.st_ino))
    with os.scandir(root) as it:
        entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    for entry in entries:
        if entry.is_dir():
            yield from _walk(entry.path, seen)
        elif entry.is_file():
            yield entry.path, entry.stat().st_size


def list_source_files(
    src: str | os.PathLike[str], *, extensions: Sequence[str] | None = None, what: str = "input files"
) -> list[SourceFile]:
    """List the files of ``src``: a file, a folder (recursive) or a glob pattern.

    Hidden files and folders are left out. Files whose name does not end in one of
    ``extensions`` (case-insensitive) are left out and counted in a log line.

    Args:
        src: Path, ``file://`` URL, object-store URL (``s3://bucket/prefix``) or glob
            (``data/*.txt``, ``data/**/*.h5``, ``s3://bucket/data/*.txt``).
        extensions: Allowed suffixes such as ``(".jpg", ".png")``. Defaults to ``None`` (all files).
        what: What the files are, for error messages. Defaults to ``"input files"``.

    Returns:
        The files sorted by path, with their sizes.

    Raises:
        InputError: ``src`` does not exist or holds no matching file.
    """
    text = os.fspath(src)
    suffixes = tuple(e.lower() for e in extensions) if extensions else None
    if is_remote(text):
        return _filter(_list_remote(text), text, suffixes, what)
    root = local_path(text)
    try:
        if any(c in str(root) for c in "*?["):
            matches = (Path(p) for p in sorted(glob.glob(str(root), recursive=True)))
            found = [
                (str(p.resolve()), p.stat().st_size)
                for p in matches
                if p.is_file() and not p.name.startswith(".")
            ]
        elif root.is_dir():
            found = list(_walk(str(root.resolve())))
        elif root.is_file():
            found = [(str(root.resolve()), root.stat().st_size)]
        else:
            raise InputError(f"{text} does not exist", hint="check the SRC path")
    except OSError as exc:
        raise InputError(f"{exc.filename or text}: cannot list: {exc.strerror}") from None
    return _filter(found, text, suffixes, what)


def _filter(
    found: list[tuple[str, int]], text: str, suffixes: tuple[str, ...] | None, what: str
) -> list[SourceFile]:
    files = [
        SourceFile(path, size) for path, size in found if suffixes is None or path.lower().endswith(suffixes)
    ]
    ignored = len(found) - len(files)
    if ignored:
        log.info("ignored %d file(s) under %s without a %s suffix", ignored, text, "/".join(suffixes or ()))
    if not files:
        allowed = f" ending in {', '.join(suffixes)}" if suffixes else ""
        raise InputError(f"no {what}{allowed} found in {text}", hint="check the SRC path or pattern")
    files.sort(key=lambda f: f.path)
    return files


def _list_remote(url: str) -> list[tuple[str, int]]:
    """``(url, size)`` of the non-hidden objects of a prefix, an object or a glob on an object store.

    The URLs keep the scheme (``s3://bucket/key``) so that Spark tasks can open them.
    """
    scheme = url.split("://", 1)[0]
    fs, root = resolve(url)
    try:
        pattern = None
        if any(c in root for c in "*?["):
            parts = root.split("/")
            fixed = next(i for i, p in enumerate(parts) if any(c in p for c in "*?["))
            pattern, root = root, "/".join(parts[:fixed])
        else:
            info = file_info(fs, root, url=url)
            if info.type == pafs.FileType.File:
                return [(url, info.size or 0)]
        entries = list_files(fs, root, url=url)
    except PipelineError as exc:
        raise InputError(exc.message, hint=exc.hint) from None
    found = []
    for entry in entries:
        rel = entry.path[len(root) :].lstrip("/")
        if is_hidden(rel) or (pattern is not None and not _glob_match(entry.path, pattern)):
            continue
        found.append((f"{scheme}://{entry.path}", entry.size or 0))
    if not found and pattern is None:
        raise InputError(f"{url} does not exist or is empty", hint="check the SRC URL")
    return found


def _glob_match(path: str, pattern: str) -> bool:
    """Glob match where ``*`` stays inside one path segment and ``**`` spans several."""
    import re

    regex = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            regex, i = regex + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            regex, i = regex + ".*", i + 2
        elif pattern[i] == "*":
            regex, i = regex + "[^/]*", i + 1
        elif pattern[i] == "?":
            regex, i = regex + "[^/]", i + 1
        else:
            regex, i = regex + re.escape(pattern[i]), i + 1
    return re.fullmatch(regex, path) is not None


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
