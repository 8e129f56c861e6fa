"""``Unischema`` and ``UnischemaField``: the schema of a Petastorm dataset, without petastorm.

Same constructors, attributes and semantics as ``petastorm.unischema`` 0.12.1: a field is a
named tuple ``(name, numpy_dtype, shape, codec, nullable)`` compared without its codec; a
schema keeps its fields in the given order and offers each one as an attribute. The instance
attributes (``_name``, ``_fields`` and one per field) are exactly petastorm's, because they are
what the dataset's metadata pickle holds (see :mod:`pipeline.format.pickling`).

Objects from petastorm itself are accepted wherever a field, codec or schema is passed and
converted by :func:`as_unischema` / :func:`as_field` / :func:`as_codec`.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
from collections import OrderedDict, namedtuple
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import numpy as np

from pipeline.format.codecs import (
    CompressedImageCodec,
    CompressedNdarrayCodec,
    DataframeColumnCodec,
    NdarrayCodec,
    ScalarCodec,
)

__all__ = [
    "Unischema",
    "UnischemaField",
    "as_codec",
    "as_field",
    "as_unischema",
    "encode_row",
    "insert_explicit_nulls",
    "match_unischema_fields",
]

log = logging.getLogger(__name__)


def _field_key(field: Any) -> tuple[Any, ...]:
    return (field.name, field.numpy_dtype, field.shape, field.nullable)


class UnischemaField(NamedTuple):
    """One field: ``name``, ``numpy_dtype`` (a numpy scalar type such as ``np.uint8``), ``shape``
    (``None`` for a dimension whose length varies), ``codec`` (how it is stored; ``None`` for a
    plain Parquet column) and ``nullable``.

    Equality and hash ignore the codec, as petastorm's do.
    """

    name: str
    numpy_dtype: Any
    shape: tuple[int | None, ...]
    codec: Any | None = None
    nullable: bool | None = False

    def __eq__(self, other: object) -> bool:
        try:
            return _field_key(self) == _field_key(other)
        except AttributeError:
            return False

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return hash(_field_key(self))


def _spark_type_of_numpy(numpy_dtype: Any) -> Any:
    """petastorm's numpy -> Spark mapping for scalar fields without a codec."""
    import pyspark.sql.types as T

    mapping = {
        np.int8: T.ByteType(),
        np.uint8: T.ShortType(),
        np.int16: T.ShortType(),
        np.uint16: T.IntegerType(),
        np.int32: T.IntegerType(),
        np.int64: T.LongType(),
        np.float32: T.FloatType(),
        np.float64: T.DoubleType(),
        np.bytes_: T.StringType(),
        np.str_: T.StringType(),
        np.bool_: T.BooleanType(),
    }
    return mapping.get(numpy_dtype)


def _spark_type(field: UnischemaField) -> Any:
    if field.codec is not None:
        return field.codec.spark_dtype()
    if field.shape != ():
        raise ValueError(
            f"An instance of non-scalar UnischemaField '{field.name}' has codec set to None. "
            "Don't know how to guess a Spark type for it"
        )
    spark_type = _spark_type_of_numpy(field.numpy_dtype)
    if spark_type is None:
        raise ValueError(f"Was not able to map type {field.numpy_dtype} to a spark type.")
    return spark_type


@functools.lru_cache(maxsize=256)
def _namedtuple_type(schema_name: str, names: tuple[str, ...]) -> type:
    """One namedtuple class per (schema, fields), so that equal views give equal types."""
    return namedtuple(f"{schema_name}_view", names)  # type: ignore[misc]


class Unischema:
    """A schema: a name and an ordered list of :class:`UnischemaField`.

    Args:
        name: Name of the schema.
        fields: The fields, in column order (petastorm ``UnischemaField`` objects are converted).
    """

    def __init__(self, name: str, fields: Iterable[Any]) -> None:
        fields = [_interned(as_field(f)) for f in fields]
        self._name = name
        self._fields: OrderedDict[str, UnischemaField] = OrderedDict((f.name, f) for f in fields)
        for f in fields:  # attribute access to fields, as petastorm offers it
            if not hasattr(self, f.name):
                setattr(self, f.name, f)
            else:
                log.debug("Unischema %s: field %r hides no attribute (name taken)", name, f.name)

    @property
    def fields(self) -> OrderedDict[str, UnischemaField]:
        """Fields by name, in column order."""
        return self._fields

    def __setstate__(self, state: Mapping[str, Any]) -> None:
        """Rebuild from a pickled state (ours or petastorm's), checking what it holds."""
        name = state.get("_name") if isinstance(state, Mapping) else None
        fields = state.get("_fields") if isinstance(state, Mapping) else None
        if not isinstance(name, str) or not isinstance(fields, Mapping):
            raise TypeError("a pickled Unischema needs a str _name and a mapping _fields")
        for field in fields.values():
            if not isinstance(field, UnischemaField):
                raise TypeError(f"a pickled Unischema holds {type(field).__name__}, not UnischemaField")
        self.__init__(name, list(fields.values()))  # type: ignore[misc]

    def create_schema_view(self, fields: Iterable[Any]) -> Unischema:
        """A schema with a subset of the fields: ``UnischemaField`` objects and/or regexes.

        Raises:
            ValueError: An element is neither, or a field does not belong to this schema.
        """
        fields = list(fields)
        patterns = [f for f in fields if isinstance(f, str)]
        objects = [f for f in fields if isinstance(f, tuple)]
        if len(patterns) + len(objects) != len(fields):
            raise ValueError(
                'Elements of "fields" must be either a string (regular expressions) or an instance of '
                "UnischemaField class."
            )
        unknown = {f.name for f in objects} - set(self._fields)
        if unknown:
            raise ValueError(f"field {unknown} does not belong to the schema {self}")
        chosen = [self._fields[f.name] for f in objects]
        chosen += [f for f in match_unischema_fields(self, patterns) if f not in chosen]
        return Unischema(f"{self._name}_view", chosen)

    def as_spark_schema(self) -> Any:
        """The ``pyspark.sql.types.StructType`` of the stored columns."""
        import pyspark.sql.types as T

        return T.StructType(
            [T.StructField(f.name, _spark_type(f), f.nullable) for f in self._fields.values()]
        )

    def make_namedtuple(self, **values: Any) -> Any:
        """A namedtuple of this schema's fields, e.g. ``schema.make_namedtuple(id=1, image=img)``."""
        return _namedtuple_type(self._name, tuple(self._fields))(**values)

    def make_namedtuple_tf(self, *args: Any, **kwargs: Any) -> Any:
        return _namedtuple_type(self._name, tuple(self._fields))(*args, **kwargs)

    def __str__(self) -> str:
        lines = "".join(
            f"  {type(f).__name__}('{f.name}', {getattr(f.numpy_dtype, '__name__', f.numpy_dtype)}, "
            f"{f.shape}, {f.codec}, {f.nullable}),\n"
            for f in self._fields.values()
        )
        return f"{type(self).__name__}({self._name}, [\n{lines}])"

    __repr__ = __str__


def match_unischema_fields(schema: Any, field_regex: Iterable[str] | None) -> list[Any]:
    """The fields whose whole name matches one of the regular expressions, in schema order."""
    patterns = [re.compile(p) for p in field_regex or ()]
    return [f for name, f in schema.fields.items() if any(p.fullmatch(name) for p in patterns)]


def as_codec(codec: Any) -> Any:
    """This package's codec equal to ``codec`` (ours or petastorm's); ``None`` stays ``None``.

    Raises:
        ValueError: ``codec`` is not one of the format's codecs.
    """
    if codec is None or isinstance(codec, DataframeColumnCodec):
        return codec
    kind = type(codec).__name__
    if kind == "ScalarCodec":
        return ScalarCodec(codec.spark_dtype())
    if kind == "NdarrayCodec":
        return NdarrayCodec()
    if kind == "CompressedNdarrayCodec":
        return CompressedNdarrayCodec()
    if kind == "CompressedImageCodec":
        return CompressedImageCodec(codec.image_codec, getattr(codec, "_quality", 80))
    raise ValueError(
        f"codec {type(codec).__module__}.{kind} is not a Petastorm format codec "
        "(ScalarCodec, NdarrayCodec, CompressedNdarrayCodec, CompressedImageCodec)"
    )


def as_field(field: Any) -> UnischemaField:
    """This package's ``UnischemaField`` equal to ``field`` (ours or petastorm's)."""
    if isinstance(field, UnischemaField) and (
        field.codec is None or isinstance(field.codec, DataframeColumnCodec)
    ):
        return field
    name, numpy_dtype, shape, codec, nullable = tuple(field)
    return UnischemaField(name, numpy_dtype, tuple(shape), as_codec(codec), nullable)


def _interned(field: UnischemaField) -> UnischemaField:
    """``field`` with its name interned: the key, the attribute and the field then share one
    string, as in a schema built from literals (the pickle memoizes it once)."""
    name = sys.intern(field.name) if type(field.name) is str else field.name
    return field if name is field.name else field._replace(name=name)


def as_unischema(schema: Any) -> Unischema:
    """This package's ``Unischema`` equal to ``schema`` (ours, or a petastorm ``Unischema``)."""
    if isinstance(schema, Unischema):
        return schema
    fields = getattr(schema, "fields", None)
    if not isinstance(fields, Mapping):
        raise TypeError(f"expected a Unischema, got {type(schema).__name__}")
    return Unischema(getattr(schema, "_name", "Schema"), list(fields.values()))


def insert_explicit_nulls(schema: Any, row: dict[str, Any]) -> None:
    """Add ``None`` for missing nullable fields of ``row`` (in place).

    Raises:
        ValueError: A missing field is not nullable.
    """
    for name, field in schema.fields.items():
        if name not in row:
            if not field.nullable:
                raise ValueError(f"Field {name} is not found in the row_dict, but is not nullable.")
            row[name] = None


def encode_row(schema: Any, row: Mapping[str, Any]) -> dict[str, Any]:
    """``row`` (field -> value) encoded by the fields' codecs, in schema order (petastorm's
    ``dict_to_spark_row`` without the Spark ``Row``).

    Raises:
        ValueError: The fields differ from the schema's, or a non-nullable value is ``None``.
    """
    values = dict(row)
    insert_explicit_nulls(schema, values)
    if set(values) != set(schema.fields):
        raise ValueError(f"row fields {sorted(values)} do not match schema fields {list(schema.fields)}")
    out = {}
    for name, field in schema.fields.items():
        value = values[name]
        if value is None:
            if not field.nullable:
                raise ValueError(f'Field {name} is not "nullable", but got passes a None value')
            out[name] = None
        elif field.codec is not None:
            out[name] = field.codec.encode(field, value)
        else:
            out[name] = value.tolist() if isinstance(value, np.generic) else value
    return out
