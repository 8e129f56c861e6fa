"""Publish a finished dataset folder to an object store with the commit protocol of
:mod:`pipeline.storage.commit`: attempt-named data files first, ``_common_metadata`` last,
then the removal of everything else under the prefix.
"""

from __future__ import annotations

import json
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

import pyarrow.parquet as pq

from pipeline.errors import DatasetError
from pipeline.storage.commit import INDEX_KEY, attempt_name, is_attempt_file, new_attempt
from pipeline.storage.config import StorageConfig, load_storage_config
from pipeline.storage.objects import delete_paths, list_files, upload_file
from pipeline.storage.resolve import resolve

__all__ = ["ObjectStoreDest"]

log = logging.getLogger(__name__)

_COMMON = "_common_metadata"
_LEFTOVER_NAMES = ("_skipped.jsonl",)


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
        self.attempt = new_attempt()
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

    def check(self) -> None:
        """Fail early if writing to DEST could lose data (see the class docstring)."""
        rels = [self._rel(p) for p in self._existing()]
        if _COMMON in rels and not self.overwrite:
            raise DatasetError(
                f"{self.url} already exists", hint="pass --overwrite to replace it, or choose another DEST"
            )
        if _COMMON not in rels:
            foreign = [r for r in rels if not (is_attempt_file(r) or r in _LEFTOVER_NAMES)]
            if foreign:
                raise DatasetError(
                    f"{self.url} is not empty and is not a dataset (e.g. {foreign[0]}); "
                    "--overwrite replaces datasets only",
                    hint="choose another DEST, or remove those objects yourself if they are really not needed",
                )

    def remove_leftovers(self) -> None:
        """Delete what an interrupted conversion left at a DEST that holds no dataset."""
        paths = self._existing()
        rels = [self._rel(p) for p in paths]
        if _COMMON in rels or not paths:
            return  # a committed dataset: its strays go when the next attempt commits
        log.info("removing %d object(s) left by an interrupted conversion under %s", len(paths), self.url)
        delete_paths(self.fs, paths, url=self.url, config=self.config)

    def _rename_parts(self, folder: Path) -> list[Path]:
        """Give the data files their attempt names and rewrite the index in ``_common_metadata``."""
        renamed = {}
        for path in sorted(folder.glob("*.parquet")):
            target = folder / attempt_name(path.name, self.attempt)
            path.rename(target)
            renamed[path.name] = target.name
        common = folder / _COMMON
        if not common.is_file():
            raise DatasetError(
                f"{folder}: no _common_metadata to commit", hint="this is a bug; please report it"
            )
        schema = pq.read_schema(common)
        meta = dict(schema.metadata or {})
        index = json.loads(meta.get(INDEX_KEY, b"{}").decode("utf-8")) if INDEX_KEY in meta else None
        if index is None:  # no petastorm index: build one from the footers
            index = {old: pq.read_metadata(folder / new).num_row_groups for old, new in renamed.items()}
        meta[INDEX_KEY] = json.dumps({renamed.get(k, k): v for k, v in sorted(index.items())}).encode("utf-8")
        pq.write_metadata(schema.with_metadata(meta), common)
        return [folder / n for n in sorted(renamed.values())]

    def upload_data(self, folder: Path) -> None:
        """Step 1: upload the data files (under attempt names) and ``_skipped.jsonl``."""
        parts = self._rename_parts(folder)
        extra = [p for p in folder.iterdir() if p.is_file() and p.name in _LEFTOVER_NAMES]
        uploads = parts + extra
        with ThreadPoolExecutor(
            min(self.config.list_threads, max(1, len(uploads))), "pipeline-upload"
        ) as pool:
            list(
                pool.map(
                    lambda p: upload_file(
                        str(p), self.fs, f"{self.prefix}/{p.name}", url=self.url, config=self.config
                    ),
                    uploads,
                )
            )
        log.debug("uploaded %d file(s) of attempt %s to %s", len(uploads), self.attempt, self.url)

    def publish(self, folder: Path) -> None:
        """Step 2, the commit point: write ``_common_metadata``; then delete everything else."""
        keep = {p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")}
        upload_file(
            str(folder / _COMMON), self.fs, f"{self.prefix}/{_COMMON}", url=self.url, config=self.config
        )
        stale = [p for p in self._existing() if self._rel(p) not in keep]
        if stale:
            log.info("removing %d replaced or stray object(s) under %s", len(stale), self.url)
            delete_paths(self.fs, stale, url=self.url, config=self.config)
