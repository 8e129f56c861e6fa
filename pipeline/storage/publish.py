"""DEST of a conversion on an object store, with the commit protocol of :mod:`pipeline.storage.commit`:
data files under attempt names (written by the Spark tasks themselves, or uploaded by the driver),
``_common_metadata`` last as the commit point, then the removal of everything else under the prefix.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection
from pathlib import Path, PurePosixPath

import pyarrow.parquet as pq

from pipeline.errors import DatasetError
from pipeline.storage.commit import attempt_name, is_attempt_file, new_attempt, read_index
from pipeline.storage.config import StorageConfig, load_storage_config
from pipeline.storage.objects import delete_paths, list_files, upload_file, write_bytes
from pipeline.storage.resolve import resolve

__all__ = ["COMMON_METADATA", "SKIPPED_REPORT", "ObjectStoreDest"]

log = logging.getLogger(__name__)

COMMON_METADATA = "_common_metadata"
SKIPPED_REPORT = "_skipped.jsonl"
_LEFTOVER_NAMES = (SKIPPED_REPORT,)


class ObjectStoreDest:
    """DEST of a conversion on an object store (``s3://bucket/prefix``, fsspec URLs).

    Args:
        url: DEST URL.
        overwrite: Whether an existing dataset at DEST may be replaced.
        config: Storage settings. Defaults to ``None`` (``conf/storage.yaml``).

    Raises:
        DatasetError: DEST holds a dataset and ``overwrite`` is off, or holds objects that are
            neither a dataset nor leftovers of an interrupted conversion; or the bucket cannot be
            listed (missing, access denied).
    """

    def __init__(self, url: str, *, overwrite: bool, config: StorageConfig | None = None) -> None:
        self.url = url.rstrip("/")
        self.overwrite = overwrite
        self.config = config or load_storage_config()
        self.fs, self.prefix = resolve(self.url, config=self.config)
        self.check()

    @property
    def prefix_path(self) -> PurePosixPath:
        """``bucket/prefix`` as a path (what :func:`check_destination` returns)."""
        return PurePosixPath(self.prefix)

    @property
    def safe_name(self) -> str:
        """A file name that stands for this DEST in the local staging folder."""
        return re.sub(r"[^A-Za-z0-9_.-]", "_", self.url.split("://", 1)[-1])[:120]

    def _rel(self, path: str) -> str:
        return path[len(self.prefix) :].lstrip("/")

    def _existing(self) -> list[str]:
        return [e.path for e in list_files(self.fs, self.prefix, url=self.url, config=self.config)]

    def check(self) -> list[str]:
        """Fail early if writing to DEST could lose data (see the class docstring).

        Returns:
            The names now under DEST (relative to it).
        """
        rels = [self._rel(p) for p in self._existing()]
        if COMMON_METADATA in rels and not self.overwrite:
            raise DatasetError(
                f"{self.url} already exists", hint="pass --overwrite to replace it, or choose another DEST"
            )
        if COMMON_METADATA not in rels:
            foreign = [r for r in rels if not (is_attempt_file(r) or r in _LEFTOVER_NAMES)]
            if foreign:
                raise DatasetError(
                    f"{self.url} is not empty and is not a dataset (e.g. {foreign[0]}); "
                    "--overwrite replaces datasets only",
                    hint="choose another DEST, or remove those objects yourself if they are really not needed",
                )
        return rels

    def remove_leftovers(self) -> None:
        """Delete what an interrupted conversion left at a DEST that holds no dataset."""
        paths = self._existing()
        rels = [self._rel(p) for p in paths]
        if COMMON_METADATA in rels or not paths:
            return  # a committed dataset: its strays go when the next attempt commits
        log.info("removing %d object(s) left by an interrupted conversion under %s", len(paths), self.url)
        delete_paths(self.fs, paths, url=self.url, config=self.config)

    def upload(self, local: Path) -> str:
        """Upload a data file written on the driver under a new attempt name; returns that name."""
        name = attempt_name(local.name, new_attempt())
        upload_file(str(local), self.fs, f"{self.prefix}/{name}", url=self.url, config=self.config)
        return name

    def footer(self, name: str) -> tuple[pq.FileMetaData, int]:
        """The Parquet footer and size of a data file under DEST."""
        with self.fs.open_input_file(f"{self.prefix}/{name}") as fh:
            return pq.read_metadata(fh), fh.size()

    def put(self, name: str, data: bytes) -> None:
        """Write one object under DEST (one PUT: all or nothing), e.g. ``_skipped.jsonl``."""
        write_bytes(self.fs, f"{self.prefix}/{name}", data, url=self.url, config=self.config)

    def commit(self, common_metadata: bytes, keep: Collection[str]) -> None:
        """Write ``_common_metadata`` (the commit point), then delete everything else under DEST.

        Args:
            common_metadata: The serialized ``_common_metadata``; its row-group index lists the
                committed data files.
            keep: Names (relative to DEST) that belong to the new dataset: its data files and
                ``_skipped.jsonl``. Every other object goes after the commit point: the replaced
                dataset, files of task attempts that failed or lost to another attempt, leftovers.

        Raises:
            DatasetError: A dataset appeared at DEST while the conversion ran (without
                ``overwrite``), or a data file to commit is not in the store.
        """
        present = set(self.check())  # a dataset may have appeared while the conversion ran
        missing = sorted(n for n in keep if n not in present)
        if missing:
            raise DatasetError(
                f"{self.url}: {len(missing)} file(s) of this conversion are missing, e.g. {missing[0]}",
                hint="another process deleted them (two conversions to one DEST?); run the conversion again",
            )
        self.put(COMMON_METADATA, common_metadata)
        keep = {*keep, COMMON_METADATA}
        stale = [p for p in self._existing() if self._rel(p) not in keep]
        if stale:
            log.info("removing %d replaced or stray object(s) under %s", len(stale), self.url)
            delete_paths(self.fs, stale, url=self.url, config=self.config)

    def discard(self) -> None:
        """After a conversion that did not commit: delete the attempt files no dataset lists.

        A DEST without ``_common_metadata`` loses every attempt file and leftover; a committed
        dataset keeps the files its index lists (and its ``_skipped.jsonl``).
        """
        paths = self._existing()
        rels = {p: self._rel(p) for p in paths}
        if COMMON_METADATA in rels.values():
            index = read_index(self.fs, f"{self.prefix}/{COMMON_METADATA}") or {}
            drop = [p for p, r in rels.items() if is_attempt_file(r) and r not in index]
        else:
            drop = [p for p, r in rels.items() if is_attempt_file(r) or r in _LEFTOVER_NAMES]
        if drop:
            log.info("removing %d object(s) of this unfinished conversion under %s", len(drop), self.url)
            delete_paths(self.fs, drop, url=self.url, config=self.config)
