"""The ``pyspark.sql.types`` values of a Unischema, without importing pyspark to read a dataset.

A Petastorm schema pickles a Spark type in every ``ScalarCodec`` (``LongType()``,
``StringType()``, ``DecimalType(10, 2)``...). Importing pyspark to unpickle them costs about
0.2 s and tens of MB in every process that opens a dataset -- a training process, each spawned
reader worker, ``pipeline inspect`` -- which then never uses them: the loader decodes with
numpy types. So, unless pyspark is imported already, the unpickler makes a
:class:`LazySparkType` for a known Spark type name instead: a stand-in with the type's class
name and pickled state. ``ScalarCodec`` hands out the real type in its place
(:func:`resolve_spark_type`, once per stand-in: what was one object in the pickle stays one
object), and stand-ins stay stand-ins where pyspark is not installed.

A stand-in pickles as itself with the standard pickler (worker processes get it without
pyspark), and as the real type, same bytes, in a dataset's metadata
(:mod:`pipeline.format.pickling`).
"""

from __future__ import annotations

import sys
import threading
import weakref
from typing import Any

__all__ = [
    "SPARK_TYPE_NAMES",
    "LazySparkType",
    "complete_spark_type",
    "imported_types_module",
    "lazy_spark_class",
    "resolve_spark_type",
    "spark_class",
    "stand_in_class",
]

_MODULE = "pyspark.sql.types"

SPARK_TYPE_NAMES = frozenset(
    {
        *("NullType", "StringType", "CharType", "VarcharType", "BinaryType", "BooleanType"),
        *("DateType", "TimestampType", "TimestampNTZType", "TimeType", "DecimalType", "DoubleType"),
        *("FloatType", "ByteType", "ShortType", "IntegerType", "LongType", "DayTimeIntervalType"),
        *("YearMonthIntervalType", "CalendarIntervalType", "VariantType", "ArrayType", "MapType"),
        *("StructType", "StructField"),
    }
)
"""The ``pyspark.sql.types`` names read as stand-ins while pyspark is not imported; any other
name is checked against pyspark itself (imported then), as before."""


class LazySparkType:
    """Stands for an instance of ``pyspark.sql.types.<class name>`` (its pickled state kept)."""

    def __setstate__(self, state: Any) -> None:
        # as pickle's BUILD sets a real type's attributes: the names interned (which decides
        # what a later pickle of the schema writes once and refers to again)
        for key, value in (state if isinstance(state, dict) else {}).items():
            self.__dict__[sys.intern(key) if type(key) is str else key] = value

    def __reduce__(self) -> tuple[Any, ...]:
        return (_make, (type(self).__name__, dict(self.__dict__)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LazySparkType) and not type(other).__module__.startswith("pyspark."):
            return NotImplemented  # not a Spark type: no need to import pyspark to say so
        mine = resolve_spark_type(self)
        theirs = resolve_spark_type(other)
        if isinstance(mine, LazySparkType) or isinstance(theirs, LazySparkType):  # no pyspark here
            return type(other).__name__ == type(self).__name__ and vars(other) == vars(self)
        return bool(mine == theirs)

    def __hash__(self) -> int:
        real = resolve_spark_type(self)
        return hash(type(self).__name__) if real is self else hash(real)

    def __repr__(self) -> str:
        state = ", ".join(f"{key}={value!r}" for key, value in self.__dict__.items())
        return f"{type(self).__name__}({state})"


_CLASSES: dict[str, type[LazySparkType]] = {}


def lazy_spark_class(name: str, *, any_type_name: bool = False) -> type[LazySparkType] | None:
    """The stand-in class for ``pyspark.sql.types.<name>``: for a name of
    :data:`SPARK_TYPE_NAMES` (with ``any_type_name``, also any other ``...Type`` name: what a
    process without pyspark reads); otherwise ``None``."""
    known = name in SPARK_TYPE_NAMES
    if not known and not (any_type_name and name.isidentifier() and name.endswith("Type")):
        return None
    cls = _CLASSES.get(name)
    if cls is None:  # setdefault: two threads get the same class
        made = type(name, (LazySparkType,), {"__module__": _MODULE, "__qualname__": name})
        cls = _CLASSES.setdefault(name, made)
    return cls


def stand_in_class(name: str) -> type[LazySparkType] | None:
    """The stand-in class a schema pickle's ``pyspark.sql.types.<name>`` gets without importing
    pyspark: a name of :data:`SPARK_TYPE_NAMES`; any other name only if the installed pyspark
    has such a Spark type (imported then) or, where pyspark is not installed, for any ``...Type``
    name; otherwise ``None`` (refused)."""
    cls = lazy_spark_class(name)
    if cls is None:
        types_module = _types_module()
        if types_module is None or spark_class(types_module, name) is not None:
            cls = lazy_spark_class(name, any_type_name=True)
    return cls


def _make(name: str, state: dict[str, Any]) -> LazySparkType:
    """A stand-in from its plain pickle (how worker processes receive it)."""
    cls = stand_in_class(name)
    if cls is None:
        raise ValueError(f"{name!r} is not the name of a Spark type")
    value = cls.__new__(cls)
    value.__setstate__(state)
    return value


def imported_types_module() -> Any:
    """``pyspark.sql.types`` if this process has imported it completely, else ``None`` (not
    imported, or being imported by another thread right now)."""
    module = sys.modules.get(_MODULE)
    if module is None or getattr(getattr(module, "__spec__", None), "_initializing", False):
        return None
    return module


def spark_class(types_module: Any, name: str) -> type | None:
    """``types_module.<name>`` (pyspark's ``pyspark.sql.types``) if it is a Spark type or
    ``StructField`` -- what a schema pickle may name there -- else ``None``."""
    value = getattr(types_module, name, None)
    if isinstance(value, type) and (
        issubclass(value, types_module.DataType) or value is types_module.StructField
    ):
        return value
    return None


_RESOLVED: dict[int, tuple[weakref.ref[LazySparkType], Any]] = {}
_RESOLVING = threading.RLock()  # a nested type is resolved inside its parent
_pyspark_missing = False  # an import failed: stand-ins stay stand-ins


def _types_module() -> Any:
    """``pyspark.sql.types`` (imported now if needed), or ``None`` where pyspark is not installed."""
    global _pyspark_missing
    module = imported_types_module()
    if module is not None or _pyspark_missing:
        return module
    try:
        import pyspark.sql.types as module
    except ImportError:
        _pyspark_missing = True
        return None
    return module


def _cached(value: LazySparkType) -> Any:
    """The real type ``value`` was resolved to, or ``None``."""
    known = _RESOLVED.get(id(value))
    return known[1] if known is not None and known[0]() is value else None


def resolve_spark_type(value: Any) -> Any:
    """``value`` with every :class:`LazySparkType` in it made the real pyspark type.

    Each stand-in is resolved once: the same real object every time (a type that two fields
    shared in the pickle stays shared). Lists, tuples and dicts (a ``StructType``'s fields, an
    ``ArrayType``'s element type) are resolved inside. Without pyspark the stand-ins are
    returned as they are.

    Raises:
        TypeError: A stand-in names something of ``pyspark.sql.types`` that is not a Spark type.
    """
    return _resolve(value, {})


def _resolve(value: Any, memo: dict[int, Any]) -> Any:
    """:func:`resolve_spark_type`; a container is rebuilt (same type) only if it holds a
    stand-in, once per container (``memo``): shared and cyclic containers stay as they are."""
    if isinstance(value, (list, tuple, dict)):
        if id(value) in memo:
            return memo[id(value)]
        memo[id(value)] = value  # a cycle back to it finds it unchanged
        if isinstance(value, dict):
            items = [(k, _resolve(v, memo)) for k, v in value.items()]
            changed = any(new is not old for (_, new), old in zip(items, value.values(), strict=True))
            result = type(value)(items) if changed else value
        else:
            parts = [_resolve(v, memo) for v in value]
            changed = any(new is not old for new, old in zip(parts, value, strict=True))
            result = (parts if isinstance(value, list) else tuple(parts)) if changed else value
        memo[id(value)] = result
        return result
    if not isinstance(value, LazySparkType):
        return value
    real = _cached(value)
    if real is not None:
        return real
    types_module = _types_module()
    if types_module is None:
        return value
    with _RESOLVING:
        real = _cached(value)
        if real is not None:  # another thread resolved it meanwhile
            return real
        name = type(value).__name__
        cls = spark_class(types_module, name)
        if cls is None:
            raise TypeError(f"pyspark.sql.types.{name} is not a Spark type")
        real = cls.__new__(cls)
        real.__dict__.update({k: _resolve(v, memo) for k, v in value.__dict__.items()})
        real = complete_spark_type(real)
        key = id(value)
        _RESOLVED[key] = (weakref.ref(value, lambda _, key=key: _RESOLVED.pop(key, None)), real)
    return real


def complete_spark_type(spark_type: Any) -> Any:
    """A Spark type unpickled from another pyspark version, with the attributes this one sets.

    pyspark 4 added attributes (``StringType.collation``) that a pickle from pyspark 3 lacks;
    a fresh instance's attributes fill the gaps, the pickled ones win.
    """
    cls = type(spark_type)
    if isinstance(spark_type, LazySparkType) or not cls.__module__.startswith("pyspark."):
        return spark_type
    try:
        fresh = cls()
    except Exception:  # needs arguments (DecimalType has defaults; ArrayType does not)
        return spark_type
    missing = {k: v for k, v in vars(fresh).items() if k not in vars(spark_type)}
    if missing:
        spark_type.__dict__.update(missing)
    return spark_type
