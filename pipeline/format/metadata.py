"""The keys a Petastorm dataset keeps in ``_common_metadata``, and how they are written and read.

``_common_metadata`` is a Parquet file without rows: the Arrow schema of the data files whose
key-value metadata holds

* ``dataset-toolkit.unischema.v1`` -- the pickled ``Unischema`` (:mod:`pipeline.format.pickling`);
* ``dataset-toolkit.num_row_groups_per_file.v1`` -- JSON ``{relative file path: row groups}``,
  from which petastorm's ``make_reader`` lists row groups without opening every footer.

Both are what ``petastorm.etl.dataset_metadata.materialize_dataset`` writes (with
``use_summary_metadata=False``); petastorm's ``make_reader`` needs both, ``make_batch_reader``
reads the Unischema when it is there. Other keys (``pipeline.provenance.v1``) are kept.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pipeline.errors import DatasetError
from pipeline.format.pickling import dumps_unischema, loads_unischema
from pipeline.format.unischema import Unischema, as_unischema

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "COMMON_METADATA",
    "ROW_GROUPS_PER_FILE_KEY",
    "UNISCHEMA_KEY",
    "format_metadata",
    "row_groups_per_file",
    "unischema_from_metadata",
    "write_common_metadata",
]

UNISCHEMA_KEY = b"dataset-toolkit.unischema.v1"
ROW_GROUPS_PER_FILE_KEY = b"dataset-toolkit.num_row_groups_per_file.v1"
COMMON_METADATA = "_common_metadata"


def format_metadata(schema: Any, row_groups: Mapping[str, int]) -> dict[bytes, bytes]:
    """The Petastorm keys for a dataset of ``schema`` whose files have ``row_groups`` each.

    Args:
        schema: The dataset's ``Unischema`` (ours or petastorm's).
        row_groups: Row groups per data file, keyed by the path relative to the dataset root
            (``part-00000.parquet``).
    """
    counts = {str(path): int(n) for path, n in sorted(row_groups.items())}
    return {
        UNISCHEMA_KEY: dumps_unischema(as_unischema(schema)),
        ROW_GROUPS_PER_FILE_KEY: json.dumps(counts).encode("utf-8"),
    }


def write_common_metadata(
    root: str | os.PathLike[str],
    arrow_schema: pa.Schema,
    metadata: Mapping[bytes, bytes],
    *,
    filesystem: Any = None,
) -> None:
    """Write ``root/_common_metadata``: ``arrow_schema`` with ``metadata`` added to its own.

    Args:
        root: The dataset folder.
        arrow_schema: Schema of the data files.
        metadata: Keys to store (e.g. from :func:`format_metadata`).
        filesystem: A ``pyarrow.fs.FileSystem``. Defaults to ``None`` (the local disk).
    """
    import pyarrow.parquet as pq

    merged = dict(arrow_schema.metadata or {})
    merged.update(metadata)
    schema = arrow_schema.with_metadata(merged)
    path = os.path.join(os.fspath(root), COMMON_METADATA)
    if filesystem is None:
        pq.write_metadata(schema, path)
        crc = os.path.join(os.fspath(root), "." + COMMON_METADATA + ".crc")  # Hadoop's checksum, now stale
        if os.path.exists(crc):
            os.remove(crc)
        return
    with filesystem.open_output_stream(path) as out:
        pq.write_metadata(schema, out)


def unischema_from_metadata(
    metadata: Mapping[bytes, bytes], *, where: str = "the dataset"
) -> Unischema | None:
    """The ``Unischema`` stored in ``_common_metadata``'s key-value ``metadata``, or ``None``.

    Read with the restricted unpickler of :func:`pipeline.format.pickling.loads_unischema`.

    Raises:
        UnsafeMetadataError: The pickle names a class the format does not use.
        DatasetError: The pickle is damaged.
    """
    raw = metadata.get(UNISCHEMA_KEY)
    return None if raw is None else loads_unischema(raw, where=where)


def row_groups_per_file(
    metadata: Mapping[bytes, bytes], *, where: str = "the dataset"
) -> dict[str, int] | None:
    """The ``{relative path: row groups}`` index in ``_common_metadata``, or ``None``."""
    raw = metadata.get(ROW_GROUPS_PER_FILE_KEY)
    if raw is None:
        return None
    try:
        counts = json.loads(raw.decode("utf-8"))
        return {str(k): int(v) for k, v in counts.items()}
    except (UnicodeDecodeError, ValueError, AttributeError, TypeError) as exc:
        raise DatasetError(
            f"{where}: the row-group index in _common_metadata is damaged: {exc}",
            hint="rewrite the dataset's metadata",
        ) from None
