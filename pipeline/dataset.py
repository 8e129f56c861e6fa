"""A dataset on disk: URLs, its Parquet files, its Unischema and its provenance metadata.

A *Petastorm dataset* is a folder of Parquet files plus a ``_common_metadata`` file that holds
the pickled Unischema (written by ``pipeline convert`` through :mod:`pipeline.format`, or by
petastorm's ``materialize_dataset``). A *plain Parquet dataset* has the files and no Unischema.
Both are read by Spark, pyarrow and DuckDB alike; only the first one has codecs to decode. The
Unischema is read by :mod:`pipeline.format.pickling`'s restricted unpickler: opening a dataset
runs no code from it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs

from pipeline.errors import DatasetError
from pipeline.format.metadata import unischema_from_metadata

__all__ = [
    "PROVENANCE_KEY",
    "DatasetFiles",
    "arrow_list_shape",
    "key_value_metadata",
    "list_dataset_files",
    "normalize_url",
    "read_common_metadata",
    "read_provenance",
    "read_unischema",
]

PROVENANCE_KEY = b"pipeline.provenance.v1"
"""Key of the JSON provenance record in ``_common_metadata`` (source, options, counts, ...)."""

_NOT_DATA = ("_", ".")


def normalize_url(path_or_url: str | os.PathLike[str]) -> str:
    """Turn a local path or URL into the URL form petastorm expects (``file:///abs/path``)."""
    text = os.fspath(path_or_url)
    parsed = urlparse(text)
    if parsed.scheme and len(parsed.scheme) > 1:  # not a Windows drive letter
        if parsed.scheme == "file":
            return "file://" + str(Path(parsed.path).resolve())
        return text.rstrip("/")
    return "file://" + str(Path(text).expanduser().resolve())


def arrow_list_shape(arrow_type: pa.DataType) -> tuple[tuple[int | None, ...], pa.DataType]:
    """Peel nested list types: ``list<fixed_size_list<float, 4>>`` -> ``((None, 4), float)``.

    ``None`` marks a dimension whose length varies from row to row.
    """
    shape: list[int | None] = []
    t = arrow_type
    while pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        shape.append(t.list_size if pa.types.is_fixed_size_list(t) else None)
        t = t.value_type
    return tuple(shape), t


def _filesystem(url: str) -> tuple[pafs.FileSystem, str]:
    from pipeline.storage import resolve  # s3:// from conf/storage.yaml + AWS_*; fsspec schemes

    return resolve(url)


@dataclass(frozen=True)
class DatasetFiles:
    """The Parquet data files of a dataset and the filesystem they live on."""

    url: str
    filesystem: pafs.FileSystem
    root: str
    files: tuple[str, ...]
    common_metadata: str | None
    metadata: dict[bytes, bytes] | None = field(default=None, compare=False)  # of _common_metadata, read once
    sizes: dict[str, int] = field(default_factory=dict, compare=False)  # bytes of each file, as listed

    @property
    def total_bytes(self) -> int:
        """Bytes on disk of the data files (as listed; asked from the filesystem for files not listed)."""
        missing = [f for f in self.files if f not in self.sizes]
        asked = self.filesystem.get_file_info(missing) if missing else []  # on a store: a HEAD each
        return sum(self.sizes[f] for f in self.files if f in self.sizes) + sum(i.size or 0 for i in asked)


def list_dataset_files(
    url: str | os.PathLike[str],
    *,
    on_listed: Callable[[pafs.FileSystem, list[str], dict[str, int]], None] | None = None,
) -> DatasetFiles:
    """List a dataset's Parquet files, or raise :class:`DatasetError` with a hint.

    Data files end in ``.parquet`` or ``.parq``; hidden files and anything under a name starting
    with ``_`` (``_SUCCESS``, ``_common_metadata``, ``_skipped.jsonl``) are not data.

    ``on_listed(filesystem, data_files, sizes)``, when given, is called with what the listing found
    before ``_common_metadata`` is read (which says which of them are committed): a reader starts
    reading their footers then, in the same round trip.
    """
    url = normalize_url(url)
    from pipeline.storage import file_info, is_remote_filesystem, list_files

    fs, root = _filesystem(url)
    # On a store, a folder is listed first: its existence check would cost 2 more round trips
    # (a HEAD and a one-key listing) before it. Only an empty listing is looked at again. A URL
    # naming a Parquet file keeps the HEAD first (listing a file fails on fsspec stores, and
    # needs a list permission that reading it does not).
    is_file_url = root.endswith((".parquet", ".parq"))
    listed = list_files(fs, root, url=url) if is_remote_filesystem(fs) and not is_file_url else None
    if not listed:
        info = file_info(fs, root, url=url)  # retries; a missing bucket or denied access: clean error
        if info.type == pafs.FileType.NotFound:
            raise DatasetError(f"{url} does not exist", hint="check the path, or convert data into it first")
        if info.type == pafs.FileType.File:
            if not is_file_url:
                raise DatasetError(
                    f"{url} is a file, not a dataset folder",
                    hint="pass the folder that holds the Parquet files",
                )
            return DatasetFiles(url, fs, root, (root,), None, sizes={root: int(info.size)})
    if listed is None:  # a local folder, or a file URL on a store that named a folder
        listed = list_files(fs, root, url=url)  # parallel, paginated, retried
    return dataset_from_listing(fs, root, url, listed, on_listed=on_listed)


def dataset_from_listing(
    fs: pafs.FileSystem,
    root: str,
    url: str,
    listed: list[pafs.FileInfo],
    *,
    on_listed: Callable[[pafs.FileSystem, list[str], dict[str, int]], None] | None = None,
) -> DatasetFiles:
    """The dataset at ``root`` on ``fs`` from a recursive listing of it: its committed data files.

    Data files end in ``.parquet`` or ``.parq``, with no part of their path under ``root``
    starting with ``_`` or ``.``. ``_common_metadata``, when listed, is read (once) and says
    which of them are committed. ``url`` names the dataset in messages. ``on_listed``: as in
    :func:`list_dataset_files`.

    Raises:
        DatasetError: There is no data file, or ``_common_metadata`` is damaged.
    """
    from pipeline.storage import committed_files

    files: list[str] = []
    common = None
    for entry in listed:
        if entry.type != pafs.FileType.File:
            continue
        rel = entry.path[len(root) :].lstrip("/")
        if rel == "_common_metadata":
            common = entry.path
        if any(p.startswith(_NOT_DATA) for p in rel.split("/")):
            continue
        if entry.path.endswith((".parquet", ".parq")):
            files.append(entry.path)
    if not files:
        raise DatasetError(
            f"no Parquet files under {url}",
            hint="was it written by `pipeline convert`, Spark or pyarrow? pass the dataset's root folder",
        )
    files.sort()
    sizes = {e.path: int(e.size) for e in listed if e.type == pafs.FileType.File and e.size is not None}
    if on_listed is not None:
        on_listed(fs, files, sizes)
    metadata = read_common_metadata(fs, common, url, size=sizes.get(common)) if common is not None else None
    files = committed_files(fs, root, files, common, url=url, metadata=metadata)  # what it lists
    return DatasetFiles(url, fs, root, tuple(files), common, metadata, sizes)


def read_common_metadata(
    fs: pafs.FileSystem, path: str, url: str, *, size: int | None = None
) -> dict[bytes, bytes]:
    """The key-value metadata of the ``_common_metadata`` file at ``path`` on ``fs``.

    ``size``: its bytes as listed; on a store, the file is then read without a ``HEAD``.
    """
    from pipeline.storage import RemoteReads

    try:
        reads = RemoteReads(fs, sizes={path: size} if size is not None else None)
        schema = reads.footer(path).schema.to_arrow_schema()
    except Exception as exc:  # a damaged metadata file is reported, not fatal for data access
        raise DatasetError(f"{url}: cannot read _common_metadata: {exc}") from None
    return dict(schema.metadata or {})


def key_value_metadata(files: DatasetFiles) -> dict[bytes, bytes]:
    """The key-value metadata of the dataset's ``_common_metadata`` (``{}`` when it has none)."""
    if files.common_metadata is None:
        return {}
    if files.metadata is not None:  # read with the listing
        return files.metadata
    return read_common_metadata(files.filesystem, files.common_metadata, files.url)


def read_unischema(url: str | os.PathLike[str] | DatasetFiles) -> Any:
    """The dataset's :class:`pipeline.format.Unischema`, or ``None`` for plain Parquet.

    Raises:
        UnsafeMetadataError: The stored pickle names a class the format does not use (nothing
            of it is run; a :class:`DatasetError`).
        DatasetError: The dataset is missing, or its metadata is damaged.
    """
    files = url if isinstance(url, DatasetFiles) else list_dataset_files(url)
    return unischema_from_metadata(key_value_metadata(files), where=files.url)


def read_provenance(url: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The provenance record written by ``pipeline convert``, or ``None`` when there is none."""
    raw = key_value_metadata(list_dataset_files(url)).get(PROVENANCE_KEY)
    if raw is None:
        return None
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{url}: provenance metadata is not valid JSON: {exc}") from None
