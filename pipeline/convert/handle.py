"""``pipeline.spark_dataset(df)``: a DataFrame converted once, reused by every later process.

The cache key is a SHA-256 of

* the DataFrame's plan fingerprint (:func:`plan_fingerprint`: the canonicalized analyzed plan
  and the schema; no Spark job),
* the conversion options (type policy and Parquet settings), and
* for file-backed sources, every input file's path, size and modification time
  (``df.inputFiles()``): a table that gained, lost or rewrote a file gets a new key.

A cached dataset is ``<cache_dir>/<key>``, written atomically by the conversion; reusing it reads
only its metadata. Two processes converting the same DataFrame at once serialise on a lock file
(``<cache_dir>/.locks/<key>.lock``), and where locks do not work (some network filesystems) the
one that commits second discards its copy and uses the winner's. The cache folder is the
``cache_dir`` argument, else the Spark conf ``spark.pipeline.cacheDir``, else ``conf/cache.yaml``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from pipeline.config import load_config
from pipeline.errors import DatasetError

__all__ = [
    "CacheConfig",
    "CacheEntry",
    "SparkDataset",
    "cache_entries",
    "clear_cache",
    "resolve_cache_dir",
    "spark_dataset",
]

log = logging.getLogger(__name__)

CACHE_CONF_KEY = "spark.pipeline.cacheDir"
_KEY_VERSION = 1


@dataclass(frozen=True)
class CacheConfig:
    """Where ``spark_dataset`` keeps converted DataFrames (``conf/cache.yaml``)."""

    cache_dir: str = "~/.cache/pipeline/spark_datasets"
    """Cache folder; every Spark executor must see the same path. Defaults to
    ``"~/.cache/pipeline/spark_datasets"``."""


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None = None, spark: Any = None) -> Path:
    """The cache folder: ``cache_dir``, else Spark conf ``spark.pipeline.cacheDir``, else ``conf/cache.yaml``."""
    if cache_dir is None and spark is not None:
        cache_dir = spark.conf.get(CACHE_CONF_KEY, None)
    if cache_dir is None:
        cache_dir = load_config(CacheConfig, "cache.yaml").cache_dir
    text = os.fspath(cache_dir)
    if text.startswith("file:"):
        text = unquote(urlparse(text).path)
    return Path(text).expanduser().resolve()


def _file_stats(spark: Any, files: list[str]) -> list[tuple[str, int, int]]:
    """``(path, size, mtime_ns)`` of input files; the JVM's Hadoop filesystem for non-local URLs."""
    out = []
    jvm = getattr(getattr(spark, "sparkContext", None), "_jvm", None) if spark is not None else None
    for url in sorted(files):
        parsed = urlparse(url)
        if parsed.scheme in ("", "file"):
            try:
                st = os.stat(unquote(parsed.path))
                out.append((url, st.st_size, st.st_mtime_ns))
            except OSError:
                out.append((url, -1, -1))
        elif jvm is not None:
            path = jvm.org.apache.hadoop.fs.Path(url)
            status = path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()).getFileStatus(path)
            out.append((url, int(status.getLen()), int(status.getModificationTime())))
        else:
            out.append((url, -1, -1))
    return out


def cache_key(df: Any, options: dict[str, Any]) -> tuple[str, str]:
    """``(key, plan_fingerprint)`` of ``df`` converted with ``options`` (no Spark job)."""
    from pipeline.convert.table import split_options
    from pipeline.convert.table_fingerprint import plan_fingerprint

    table, settings = split_options(options)
    fingerprint = plan_fingerprint(df)
    try:
        inputs = list(df.inputFiles())
    except Exception:  # a source without files (range, local data)
        inputs = []
    spark = df.sparkSession
    payload = {
        "version": _KEY_VERSION,
        "plan": fingerprint,
        "options": dataclasses.asdict(table),
        "settings": {k: v for k, v in dataclasses.asdict(settings).items() if k != "overwrite"},
        "files": _file_stats(spark, inputs),
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32], fingerprint


@dataclass(frozen=True)
class SparkDataset:
    """A converted DataFrame in the cache: open it like any dataset."""

    url: str
    """``file://`` URL of the dataset."""
    rows: int
    """Rows in the dataset."""
    key: str
    """Cache key (the folder's name)."""
    converted: bool
    """Whether this call ran the conversion (``False``: reused from the cache)."""

    @property
    def path(self) -> Path:
        return Path(unquote(urlparse(self.url).path))

    def open_loader(self, **kwargs: Any) -> Any:
        """:func:`pipeline.open_loader` on this dataset; keyword arguments as there."""
        from pipeline.loader import open_loader

        return open_loader(self.url, **kwargs)

    def delete(self) -> None:
        """Remove the dataset from the cache (the next ``spark_dataset`` call converts again)."""
        shutil.rmtree(self.path, ignore_errors=True)


def _rows_of(path: Path) -> int | None:
    """Rows of a complete cached dataset (from its provenance), or ``None`` if it is not one."""
    from pipeline.dataset import read_provenance

    if not (path / "_common_metadata").is_file():
        return None
    try:
        record = read_provenance(path)
    except DatasetError:
        return None
    return None if record is None else int(record.get("counts", {}).get("rows", 0))


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX)
        except OSError:  # a filesystem without locks: the commit race below still holds
            log.debug("no lock on %s", lock_path)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(fh, fcntl.LOCK_UN)


def spark_dataset(
    df: Any, *, cache_dir: str | os.PathLike[str] | None = None, **options: Any
) -> SparkDataset:
    """The dataset of ``df``, converted on the first call and reused from the cache afterwards.

    Args:
        df: A PySpark DataFrame (table, query, joined features...).
        cache_dir: Cache folder. Defaults to ``None``: the Spark conf ``spark.pipeline.cacheDir``,
            else ``cache_dir`` of ``conf/cache.yaml`` (``~/.cache/pipeline/spark_datasets``).
        **options: Conversion options of :func:`pipeline.convert_dataframe` (``float32``,
            ``image_column``, ``on_error``, ``decimal``, ``row_group_mb``, ...); part of the key.

    Returns:
        A :class:`SparkDataset` with ``url``, ``rows``, ``open_loader(**kwargs)`` and ``delete()``.
    """
    from pipeline.convert.table import convert_dataframe_result, require_classic, split_options

    started = time.perf_counter()
    require_classic(df)
    if "overwrite" in options:
        raise TypeError("spark_dataset() takes no 'overwrite'; call .delete() on the handle instead")
    root = resolve_cache_dir(cache_dir, df.sparkSession)
    key, fingerprint = cache_key(df, options)
    path = root / key
    rows = _rows_of(path)
    if rows is None:
        with _locked(root / ".locks" / f"{key}.lock"):
            rows = _rows_of(path)
            if rows is None:
                if path.exists():  # an incomplete entry (cannot normally happen: commits are atomic)
                    shutil.rmtree(path, ignore_errors=True)
                table, settings = split_options(options)
                try:
                    result = convert_dataframe_result(
                        df, str(path), table, settings=settings, fingerprint=fingerprint
                    )
                    log.info("spark_dataset: converted %d rows into %s", result.rows, path)
                    return SparkDataset("file://" + str(path), result.rows, key, True)
                except DatasetError:
                    rows = _rows_of(path)  # another process committed first: use its copy
                    if rows is None:
                        raise
    log.info("spark_dataset: reusing %s (%d rows) after %.2f s", path, rows, time.perf_counter() - started)
    return SparkDataset("file://" + str(path), rows, key, False)


@dataclass(frozen=True)
class CacheEntry:
    """One cached dataset, as ``pipeline cache list`` shows it."""

    key: str
    path: str
    rows: int | None
    bytes: int
    source: str | None
    created: str | None


def cache_entries(cache_dir: str | os.PathLike[str] | None = None) -> list[CacheEntry]:
    """The datasets in the cache folder (``None``: as :func:`resolve_cache_dir` without Spark)."""
    from pipeline.dataset import read_provenance

    root = resolve_cache_dir(cache_dir)
    if not root.is_dir():
        return []
    out = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        record: dict[str, Any] = {}
        with contextlib.suppress(DatasetError):
            record = read_provenance(entry) or {}
        size = sum(p.stat().st_size for p in entry.rglob("*") if p.is_file())
        rows = record.get("counts", {}).get("rows")
        out.append(
            CacheEntry(entry.name, str(entry), rows, size, record.get("source"), record.get("created"))
        )
    return out


def clear_cache(cache_dir: str | os.PathLike[str] | None = None, keys: list[str] | None = None) -> list[str]:
    """Remove cached datasets (all, or those of ``keys``); returns the keys removed."""
    root = resolve_cache_dir(cache_dir)
    removed = []
    for entry in cache_entries(root):
        if keys and entry.key not in keys:
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(entry.key)
    if not keys:
        shutil.rmtree(root / ".locks", ignore_errors=True)
    return removed
