"""The type policy of ``convert table``: Spark column types -> dataset fields (driver side).

Every rule, in the order :func:`plan_columns` applies them (documented in ``docs/tables.md``):

===========================================  ===============================================
Spark type                                   stored field
===========================================  ===============================================
boolean, byte, short, int, long              same type (``bool``, ``int8`` .. ``int64``)
float, double                                ``float32`` / ``float64`` (``float32=True``: double -> float32)
decimal                                      as double (``decimal="error"``: refused)
date                                         ``int64`` days since 1970-01-01
timestamp, timestamp_ntz                     ``int64`` microseconds since 1970-01-01 00:00 UTC
                                             (``timestamp_ntz`` wall-clock values read as UTC)
string / binary                              ``str`` / ``bytes`` (nulls kept as ``None``)
array<numeric>, any depth                    fixed shape when every row has the same lengths,
                                             else ragged (1-D) or ``(None, n, ...)``
array<string>                                list of ``str`` per row
ml / mllib vector (dense or sparse)          1-D float64 array (float32 with ``float32=True``)
struct                                       one field per leaf, named ``a_b`` for ``a.b``
image column (binary, or the ``image``       ``uint8`` ``H x W x 3`` image, the rules of
source's struct)                             ``pipeline convert images``
anything else (map, interval, variant, ...)  an error naming the column, before any work
===========================================  ===============================================

A null the field cannot hold (any numeric, date, timestamp, array or image) is bad input: an
error naming the column under ``on_error="fail"``, a skipped row under ``"skip"``; with
``null_floats="nan"`` a null float or double scalar becomes NaN instead.

:func:`plan_columns` reads only the schema. What the schema cannot tell is measured in the
conversion job itself (array lengths, nulls: :mod:`pipeline.convert.table_jvm`), except whether
every image is a JPEG, which :func:`images_all_jpeg` finds in one small job before it (only for
a binary image column under ``image_encoding: auto``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from pipeline.errors import InputError

__all__ = ["ColumnRule", "format_types", "images_all_jpeg", "plan_columns", "projection", "unischema_for"]

RuleKind = Literal["scalar", "date", "timestamp", "string", "binary", "array", "strings", "image"]

_HINT = "drop or cast that column in a SELECT (e.g. to_json(col) for a map) and convert again"


def format_types() -> Any:
    """``(Unischema, UnischemaField, ScalarCodec, CompressedImageCodec)`` of :mod:`pipeline.format`."""
    from pipeline.format import CompressedImageCodec, ScalarCodec, Unischema, UnischemaField

    return Unischema, UnischemaField, ScalarCodec, CompressedImageCodec


@dataclass(frozen=True)
class ColumnRule:
    """How one output field is made from one column of the projected DataFrame."""

    name: str
    """Output field name (also the column name after :func:`projection`)."""
    source: str
    """The input column, dotted for struct members (``a.b``)."""
    kind: RuleKind
    spark_type: str
    """The input column's Spark type, as ``simpleString()`` (for messages and provenance)."""
    dtype: str = ""
    """numpy dtype name of the stored values (``""`` for strings, bytes and images)."""
    depth: int = 0
    """Array nesting depth (0 for scalars)."""
    shape: tuple[int | None, ...] = ()
    """Field shape; ``None`` = varies by row. Arrays get theirs from the conversion job
    (:func:`pipeline.convert.table_jvm.shapes_from_metrics`)."""
    nullable: bool = False
    """Whether the stored field may hold nulls (strings, bytes and string arrays only)."""
    vector: bool = False
    """An ml/mllib vector, turned into an array in the Spark projection."""
    image_struct: bool = False
    """An image column from Spark's ``image`` source (raw BGR pixels in a struct)."""
    path: tuple[str, ...] = ()
    """The input column's names from the top (``("a", "b")`` for ``a.b``); ``()`` = ``(source,)``."""

    @property
    def unit(self) -> str | None:
        """The unit of a converted date or timestamp, recorded in the dataset's provenance."""
        return {"date": "days since 1970-01-01", "timestamp": "microseconds since 1970-01-01 UTC"}.get(
            self.kind
        )


def _numeric_dtype(dt: Any, float32: bool, decimal: str, where: str) -> str | None:
    from pyspark.sql import types as T

    simple = {
        T.BooleanType: "bool",
        T.ByteType: "int8",
        T.ShortType: "int16",
        T.IntegerType: "int32",
        T.LongType: "int64",
        T.FloatType: "float32",
        T.DoubleType: "float32" if float32 else "float64",
    }
    for cls, name in simple.items():
        if isinstance(dt, cls):
            return name
    if isinstance(dt, T.DecimalType):
        if decimal == "error":
            raise InputError(
                f"column {where!r} is {dt.simpleString()}; decimals are refused (decimal='error')",
                hint="cast it to double in a SELECT, or use the default decimal='float64'",
            )
        return "float32" if float32 else "float64"
    return None


def _is_vector(dt: Any) -> bool:
    from pyspark.sql.types import UserDefinedType

    return isinstance(dt, UserDefinedType) and type(dt).__name__ == "VectorUDT"


def _is_image_struct(dt: Any) -> bool:
    from pyspark.sql.types import StructType

    return isinstance(dt, StructType) and {"height", "width", "nChannels", "data"} <= set(dt.fieldNames())


def plan_columns(
    schema: Any,
    *,
    float32: bool = False,
    decimal: str = "float64",
    image_column: str | None = None,
) -> list[ColumnRule]:
    """One :class:`ColumnRule` per output field, from the DataFrame's Spark schema alone.

    Raises:
        InputError: A column has a type without a rule (naming the column and the type), the
            image column is missing or not binary, or two flattened names collide.
    """
    from pyspark.sql import types as T

    if image_column is not None and image_column not in schema.fieldNames():
        raise InputError(
            f"image column {image_column!r} is not a column of the table (columns: "
            f"{', '.join(schema.fieldNames())})",
            hint="pass one of those names to --image-column",
        )
    rules: list[ColumnRule] = []

    def visit(dt: Any, path: list[str], nullable: bool) -> None:
        where = ".".join(path)
        name = "_".join(path)
        common = {"name": name, "source": where, "path": tuple(path), "spark_type": dt.simpleString()}
        if where == image_column:
            if isinstance(dt, T.BinaryType) or _is_image_struct(dt):
                rules.append(
                    ColumnRule(kind="image", image_struct=not isinstance(dt, T.BinaryType), **common)
                )
                return
            raise InputError(
                f"image column {where!r} is {dt.simpleString()}; expected binary (JPEG/PNG bytes) or "
                "the struct of Spark's image source",
                hint="pass a binary column such as binaryFile's `content`",
            )
        if isinstance(dt, T.StructType):
            for f in dt.fields:
                visit(f.dataType, [*path, f.name], nullable or f.nullable)
            return
        numeric = _numeric_dtype(dt, float32, decimal, where)
        if numeric is not None:
            rules.append(ColumnRule(kind="scalar", dtype=numeric, **common))
        elif isinstance(dt, T.DateType):
            rules.append(ColumnRule(kind="date", dtype="int64", **common))
        elif isinstance(dt, T.TimestampType) or type(dt).__name__ == "TimestampNTZType":
            rules.append(ColumnRule(kind="timestamp", dtype="int64", **common))
        elif isinstance(dt, T.StringType):
            rules.append(ColumnRule(kind="string", nullable=nullable, **common))
        elif isinstance(dt, T.BinaryType):
            rules.append(ColumnRule(kind="binary", nullable=nullable, **common))
        elif _is_vector(dt):
            dtype = "float32" if float32 else "float64"
            rules.append(ColumnRule(kind="array", dtype=dtype, depth=1, shape=(None,), vector=True, **common))
        elif isinstance(dt, T.ArrayType):
            depth, inner = 1, dt.elementType
            while isinstance(inner, T.ArrayType):
                depth, inner = depth + 1, inner.elementType
            if depth == 1 and isinstance(inner, T.StringType):
                rules.append(ColumnRule(kind="strings", nullable=nullable, shape=(None,), **common))
                return
            element = _numeric_dtype(inner, float32, decimal, where)
            if element is None:
                raise InputError(
                    f"column {where!r} has type {dt.simpleString()}: arrays of "
                    f"{inner.simpleString()} have no rule (arrays of numbers, or of strings, do)",
                    hint=_HINT,
                )
            rules.append(
                ColumnRule(kind="array", dtype=element, depth=depth, shape=(None,) * depth, **common)
            )
        else:
            raise InputError(f"column {where!r} has type {dt.simpleString()}, which has no rule", hint=_HINT)

    for field in schema.fields:
        visit(field.dataType, [field.name], field.nullable)
    seen: dict[str, str] = {}
    for rule in rules:
        if rule.name in seen:
            raise InputError(
                f"columns {seen[rule.name]!r} and {rule.source!r} both become field {rule.name!r}",
                hint="rename one of them in a SELECT",
            )
        seen[rule.name] = rule.source
    if not rules:
        raise InputError("the table has no columns", hint="select some columns")
    return rules


def projection(rules: list[ColumnRule]) -> list[Any]:
    """Spark columns ``_c0``, ``_c1``, ... that give each rule's input (structs flattened,
    vectors as arrays, decimals as doubles), in the order of ``rules``."""
    from pyspark.sql import functions as F

    cols = []
    for rule in rules:
        parts = rule.path or (rule.source,)
        col = F.col(".".join("`" + p.replace("`", "``") + "`" for p in parts))
        if rule.vector:
            from pyspark.ml.functions import vector_to_array

            col = vector_to_array(col, rule.dtype)
        elif rule.spark_type.startswith("decimal"):
            col = col.cast("double")
        cols.append(col.alias(f"_c{len(cols)}"))  # by position: mapInArrow resolves dotted names as nested
    return cols


def images_all_jpeg(df: Any, rules: list[ColumnRule]) -> bool:
    """Whether every image of a binary image column is a JPEG (one small Spark aggregation).

    ``df`` is the projected DataFrame. No job runs when there is no binary image column; an
    image column from Spark's ``image`` source (raw pixels) is never a JPEG.
    """
    from pyspark.sql import functions as F

    if any(r.image_struct for r in rules):
        return False
    aggs: list[Any] = []
    for i, rule in enumerate(rules):
        if rule.kind == "image":
            col = F.col(f"_c{i}")
            jpeg = F.hex(F.substring(col, 1, 3)) == F.lit("FFD8FF")
            aggs.append(F.sum(F.when(col.isNotNull() & ~jpeg, 1).otherwise(0)).alias(f"notjpeg_{i}"))
    if not aggs:
        return True
    stats = df.agg(*aggs).collect()[0].asDict()
    return all(not v for v in stats.values())


def unischema_for(
    rules: list[ColumnRule],
    *,
    image_size: tuple[int, int] | None = None,
    image_encoding: str = "png",
    jpeg_quality: int = 95,
) -> Any:
    """The Unischema of the dataset: native Parquet columns, a compressed image codec for images."""
    from pyspark.sql import types as T

    Unischema, UnischemaField, ScalarCodec, CompressedImageCodec = format_types()
    spark_scalars = {
        "bool": T.BooleanType(),
        "int8": T.ByteType(),
        "int16": T.ShortType(),
        "int32": T.IntegerType(),
        "int64": T.LongType(),
        "float32": T.FloatType(),
        "float64": T.DoubleType(),
    }
    fields = []
    for rule in rules:
        if rule.kind == "image":
            shape = (*image_size, 3) if image_size else (None, None, 3)
            codec = CompressedImageCodec(image_encoding, jpeg_quality)
            fields.append(UnischemaField(rule.name, np.uint8, shape, codec, False))
        elif rule.kind == "string":
            fields.append(UnischemaField(rule.name, np.str_, (), ScalarCodec(T.StringType()), rule.nullable))
        elif rule.kind == "binary":
            fields.append(
                UnischemaField(rule.name, np.bytes_, (), ScalarCodec(T.BinaryType()), rule.nullable)
            )
        elif rule.kind == "strings":
            codec = ScalarCodec(T.ArrayType(T.StringType()))
            fields.append(UnischemaField(rule.name, np.str_, (None,), codec, rule.nullable))
        else:
            spark_type: Any = spark_scalars[rule.dtype]
            for _ in range(rule.depth):
                spark_type = T.ArrayType(spark_type, False)
            dtype = np.dtype(rule.dtype).type
            fields.append(UnischemaField(rule.name, dtype, rule.shape, ScalarCodec(spark_type), False))
    return Unischema("TableSchema", fields)
