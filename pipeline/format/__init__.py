"""The Petastorm dataset format, owned by this package (no petastorm needed).

A Petastorm dataset is a folder of Parquet files plus ``_common_metadata`` holding the pickled
:class:`Unischema` and a row-group index (:mod:`pipeline.format.metadata`). This package has the
schema classes, the codecs, ``TransformSpec``, and the safe reading and petastorm-compatible
writing of the schema pickle:

* :mod:`~pipeline.format.unischema` -- ``Unischema``, ``UnischemaField``;
* :mod:`~pipeline.format.codecs` -- ``ScalarCodec``, ``NdarrayCodec``, ``CompressedImageCodec``, ...;
* :mod:`~pipeline.format.transform` -- ``TransformSpec`` and ``transform_schema``;
* :mod:`~pipeline.format.pickling` -- the pickle written for petastorm, read without running code;
* :mod:`~pipeline.format.metadata` -- the ``_common_metadata`` keys.

Predicates (``in_set``, ``in_lambda``, ...) are in :mod:`pipeline.predicates`. See docs/format.md.
"""

from __future__ import annotations

from pipeline.format.codecs import (
    CompressedImageCodec,
    CompressedNdarrayCodec,
    DataframeColumnCodec,
    NdarrayCodec,
    ScalarCodec,
)
from pipeline.format.metadata import ROW_GROUPS_PER_FILE_KEY, UNISCHEMA_KEY
from pipeline.format.pickling import UnsafeMetadataError, dumps_unischema, loads_unischema
from pipeline.format.transform import TransformSpec, edit_field, transform_schema
from pipeline.format.unischema import (
    Unischema,
    UnischemaField,
    as_unischema,
    encode_row,
    match_unischema_fields,
)

__all__ = [
    "ROW_GROUPS_PER_FILE_KEY",
    "UNISCHEMA_KEY",
    "CompressedImageCodec",
    "CompressedNdarrayCodec",
    "DataframeColumnCodec",
    "NdarrayCodec",
    "ScalarCodec",
    "TransformSpec",
    "Unischema",
    "UnischemaField",
    "UnsafeMetadataError",
    "as_unischema",
    "dumps_unischema",
    "edit_field",
    "encode_row",
    "loads_unischema",
    "match_unischema_fields",
    "transform_schema",
]
