"""Commits without rename: how a dataset on an object store becomes visible only when complete.

Object stores have no atomic rename of a folder, but a single object is written all at once.
A conversion to ``s3://bucket/out`` therefore:

1. writes its data files under names unique to the *task attempt* that wrote them:
   ``part-00000-<attempt>.parquet`` (``<attempt>`` = 12 hex digits). The Spark tasks write them
   straight to the store and return their names; a retried or speculative attempt writes a file
   of its own name, never over another attempt's;
2. writes ``_skipped.jsonl`` if any, then ``_common_metadata`` **last**, as one object: it lists
   the files of the task attempts whose results the driver collected (petastorm's
   ``dataset-toolkit.num_row_groups_per_file.v1`` index). This write is the commit point;
3. deletes every other object under the prefix (the replaced dataset, files of failed or losing
   attempts, leftovers of killed runs).

Readers (:func:`committed_files`) read exactly the files that ``_common_metadata`` lists, and
refuse a prefix that holds attempt files but no ``_common_metadata`` (an interrupted first
conversion). The next conversion to the same DEST removes what an interrupted attempt left.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.errors import DatasetError

__all__ = [
    "INDEX_KEY",
    "attempt_name",
    "committed_files",
    "is_attempt_file",
    "new_attempt",
    "read_index",
]

INDEX_KEY = b"dataset-toolkit.num_row_groups_per_file.v1"
"""Key in ``_common_metadata``: JSON ``{relative file name: row groups}`` of the committed files."""

_ATTEMPT_FILE = re.compile(r"^part-\d+-[0-9a-f]{12}\.parquet$")


def new_attempt() -> str:
    """A fresh attempt id (12 hex digits)."""
    return uuid.uuid4().hex[:12]


def attempt_name(name: str, attempt: str) -> str:
    """``part-00003.parquet`` -> ``part-00003-<attempt>.parquet``."""
    stem, dot, ext = name.rpartition(".")
    return f"{stem}-{attempt}.{ext}" if dot else f"{name}-{attempt}"


def is_attempt_file(rel: str) -> bool:
    """Whether a relative name is a data file written by an object-store conversion attempt."""
    return bool(_ATTEMPT_FILE.match(rel))


def read_index(
    fs: pafs.FileSystem, common_metadata: str, metadata: Mapping[bytes, bytes] | None = None
) -> dict[str, int] | None:
    """The committed files listed in ``_common_metadata`` (``None`` when it has no index).

    ``metadata``: its key-value metadata when the caller read it already (one read per open).
    """
    if metadata is None:
        with fs.open_input_file(common_metadata) as fh:
            metadata = pq.read_schema(fh).metadata or {}
    raw = metadata.get(INDEX_KEY)
    if raw is None:
        return None
    try:
        index = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{common_metadata}: the row-group index is not valid JSON: {exc}") from None
    return {str(k): int(v) for k, v in index.items()}


def committed_files(
    fs: pafs.FileSystem,
    root: str,
    files: Sequence[str],
    common_metadata: str | None,
    *,
    url: str,
    metadata: Mapping[bytes, bytes] | None = None,
) -> list[str]:
    """The data files a reader may read, given a listing of a dataset folder.

    Args:
        fs: The filesystem.
        root: The dataset folder on ``fs``.
        files: Data files found under ``root`` (full paths on ``fs``).
        common_metadata: Path of ``_common_metadata``, or ``None`` when there is none.
        url: The dataset's URL, for messages.
        metadata: The key-value metadata of ``_common_metadata`` if the caller read it already.

    Returns:
        ``files`` restricted to the committed ones, in the order given.

    Raises:
        DatasetError: No ``_common_metadata`` but attempt files (an interrupted conversion), or
            a committed file is missing (replaced by a concurrent ``--overwrite``).
    """
    rel = {f: f[len(root) :].lstrip("/") for f in files}
    if common_metadata is None:
        if any(is_attempt_file(r) for r in rel.values()):
            raise DatasetError(
                f"{url} holds the files of an unfinished conversion (no _common_metadata)",
                hint="the conversion was interrupted; run it again (it removes the leftovers), "
                "or pass --overwrite",
            )
        return list(files)
    index = read_index(fs, common_metadata, metadata)
    if index is None:
        return list(files)
    present = set(rel.values())
    missing = sorted(set(index) - present)
    if missing:
        raise DatasetError(
            f"{url}: {len(missing)} file(s) listed in _common_metadata are gone, e.g. {missing[0]}",
            hint="the dataset was replaced (--overwrite) while it was read; open it again",
        )
    return [f for f in files if rel[f] in index]
