"""The provenance record of a converted dataset, stored as JSON in its ``_common_metadata``.

Read back with :func:`pipeline.dataset.read_provenance`; ``pipeline inspect`` prints it.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
from collections.abc import Mapping
from dataclasses import asdict, is_dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from pipeline import __version__
from pipeline.dataset import PROVENANCE_KEY

__all__ = ["build_provenance", "library_versions", "provenance_metadata", "write_provenance"]

_VERSIONED = ("pyspark", "petastorm", "pyarrow", "numpy", "pandas", "pillow", "opencv-python-headless")


def library_versions() -> dict[str, str]:
    """Versions of Python, this package and the libraries that shape the stored bytes."""
    out = {"pipeline": __version__, "python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def _jsonable(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    return value


def build_provenance(
    *,
    kind: str,
    source: str,
    options: Any,
    settings: Any,
    master: str,
    counts: Mapping[str, int],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The record: kind, source, time, options, settings, Spark master, counts, versions, extras."""
    return {
        "kind": kind,
        "source": source,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "options": _jsonable(options),
        "settings": _jsonable(settings),
        "spark_master": master,
        "counts": dict(counts),
        "versions": library_versions(),
        **dict(extra or {}),
    }


def provenance_metadata(record: Mapping[str, Any]) -> dict[bytes, bytes]:
    """``record`` as the ``_common_metadata`` key-value pair :func:`write_provenance` stores."""
    return {PROVENANCE_KEY: json.dumps(record, default=str, sort_keys=True).encode("utf-8")}


def write_provenance(
    data_dir: Path, record: Mapping[str, Any], also: Mapping[bytes, bytes] | None = None
) -> None:
    """Add ``record`` under :data:`~pipeline.dataset.PROVENANCE_KEY` to ``data_dir/_common_metadata``.

    The other keys (petastorm's Unischema, ...) are kept; ``also`` adds more in the same write.
    """
    path = data_dir / "_common_metadata"
    schema = pq.read_schema(path)
    meta = dict(schema.metadata or {})
    meta.update(also or {})
    meta.update(provenance_metadata(record))
    pq.write_metadata(schema.with_metadata(meta), path)
    (data_dir / "._common_metadata.crc").unlink(missing_ok=True)
