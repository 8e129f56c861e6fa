"""What a dataset on disk holds: rows, row groups, files, bytes, fields and provenance.

Works on Petastorm datasets (fields from the Unischema, with codecs) and on plain Parquet
(fields from the Arrow schema). Used by ``pipeline inspect``.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.dataset import arrow_list_shape, list_dataset_files, read_provenance, read_unischema
from pipeline.errors import DatasetError

__all__ = ["DatasetInfo", "FieldInfo", "inspect_dataset"]


@dataclass(frozen=True)
class FieldInfo:
    """One field of a dataset, as a reader will see it."""

    dtype: str
    """numpy dtype name (``uint8``, ``int64``, ``str``, ...) or the Arrow type for nested data."""
    shape: tuple[int | None, ...]
    """``()`` for scalars; ``None`` marks a dimension whose length varies from row to row."""
    codec: str | None
    """Petastorm codec (``png``, ``jpeg``, ``ndarray``, ``scalar``) or ``None`` for plain Parquet."""
    nullable: bool


@dataclass(frozen=True)
class DatasetInfo:
    """Summary of a dataset; ``to_dict()`` is the ``--json`` output of ``pipeline inspect``."""

    url: str
    kind: str
    """``"petastorm"`` or ``"parquet"``."""
    rows: int
    row_groups: int
    files: int
    bytes: int
    fields: dict[str, FieldInfo]
    metadata: dict[str, Any] | None = field(default=None)
    """Provenance written by ``pipeline convert`` (source, options, counts, class names...)."""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for value in out["fields"].values():
            value["shape"] = list(value["shape"])
        return out


def _codec_name(codec: Any) -> str:
    if codec is None:
        return "scalar"
    image_codec = getattr(codec, "image_codec", None)
    if isinstance(image_codec, str):
        return image_codec
    name = type(codec).__name__
    return {
        "ScalarCodec": "scalar",
        "NdarrayCodec": "ndarray",
        "CompressedNdarrayCodec": "compressed_ndarray",
    }.get(name, name)


def _numpy_name(dtype: Any) -> str:
    if dtype in (str, np.str_):  # np.unicode_ (numpy 1) is np.str_
        return "str"
    if dtype in (bytes, np.bytes_):
        return "bytes"
    try:
        return np.dtype(dtype).name
    except TypeError:
        return str(dtype)


def _arrow_field(arrow_field: pa.Field) -> FieldInfo:
    dims, t = arrow_list_shape(arrow_field.type)
    shape: list[int | None] = list(dims)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        dtype = "str"
    elif pa.types.is_binary(t) or pa.types.is_large_binary(t):
        dtype = "bytes"
    else:
        try:
            dtype = np.dtype(t.to_pandas_dtype()).name
        except (NotImplementedError, TypeError):
            dtype = str(t)
    return FieldInfo(dtype=dtype, shape=tuple(shape), codec=None, nullable=arrow_field.nullable)


def inspect_dataset(url: str | os.PathLike[str]) -> DatasetInfo:
    """Describe the dataset at ``url`` (a local path or a URL pyarrow understands).

    Raises:
        DatasetError: ``url`` is missing, empty or not a Parquet dataset, or its schema metadata
            is damaged or names a class the format does not use (``UnsafeMetadataError``).
    """
    files = list_dataset_files(url)
    rows = row_groups = 0
    arrow_schema: pa.Schema | None = None
    for path in files.files:
        try:
            with files.filesystem.open_input_file(path) as fh:
                meta = pq.ParquetFile(fh).metadata
        except (pa.ArrowInvalid, OSError) as exc:
            raise DatasetError(
                f"{path} is not a readable Parquet file: {exc}", hint="is the dataset complete?"
            ) from None
        rows += meta.num_rows
        row_groups += meta.num_row_groups
        if arrow_schema is None:
            arrow_schema = meta.schema.to_arrow_schema()

    unischema = read_unischema(files)
    if unischema is not None:
        kind = "petastorm"
        fields = {
            name: FieldInfo(
                dtype=_numpy_name(f.numpy_dtype),
                shape=tuple(f.shape),
                codec=_codec_name(f.codec),
                nullable=bool(f.nullable),
            )
            for name, f in unischema.fields.items()
        }
    else:
        kind = "parquet"
        assert arrow_schema is not None  # list_dataset_files guarantees at least one file
        fields = {f.name: _arrow_field(f) for f in arrow_schema}
    return DatasetInfo(
        url=files.url,
        kind=kind,
        rows=rows,
        row_groups=row_groups,
        files=len(files.files),
        bytes=files.total_bytes,
        fields=fields,
        metadata=read_provenance(files.url),
    )
