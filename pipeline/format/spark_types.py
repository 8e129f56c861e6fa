"""The ``pyspark.sql.types`` values of a Unischema, without importing pyspark to read a dataset.

A Petastorm schema pickles a Spark type in every ``ScalarCodec`` (``LongType()``,
``StringType()``, ``DecimalType(10, 2)``...). Importing pyspark to unpickle them costs about
0.2 s and tens of MB in every process that opens a dataset -- a training process, each spawned
reader worker, ``pipeline inspect`` -- which then never uses them: the loader decodes with
numpy types. So, unless pyspark is imported already, the unpickler makes a
:class:`LazySparkType` instead: a stand-in with the type's class name and pickled state. It
becomes the real type (:func:`resolve_spark_type`) when something asks for it
(``ScalarCodec.spark_dtype()``, ``Unischema.as_spark_schema()``, writing the schema back),
and stays a stand-in where pyspark is not installed.

A stand-in pickles as itself with the standard pickler (worker processes get it without
pyspark) and as the real ``pyspark.sql.types`` name in a dataset's metadata
(:mod:`pipeline.format.pickling`).
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["LazySparkType", "complete_spark_type", "lazy_spark_class", "resolve_spark_type", "spark_class"]

_MODULE = "pyspark.sql.types"


class LazySparkType:
    """Stands for an instance of ``pyspark.sql.types.<class name>`` (its pickled state kept)."""

    def __setstate__(self, state: Any) -> None:
        self.__dict__.update(state if isinstance(state, dict) else {})

    def __reduce__(self) -> tuple[Any, ...]:
        return (_make, (type(self).__name__, dict(self.__dict__)))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, LazySparkType):
            return type(other).__name__ == type(self).__name__ and vars(other) == vars(self)
        return resolve_spark_type(self) == other if _pyspark_available() else NotImplemented

    def __hash__(self) -> int:
        return hash(type(self).__name__)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


_CLASSES: dict[str, type[LazySparkType]] = {}


def lazy_spark_class(name: str) -> type[LazySparkType] | None:
    """The stand-in class for ``pyspark.sql.types.<name>``; ``None`` unless ``name`` can name a
    Spark type (``...Type``) or ``StructField``, as a schema pickle's names do."""
    if not name.isidentifier() or not (name.endswith("Type") or name == "StructField"):
        return None
    cls = _CLASSES.get(name)
    if cls is None:
        cls = _CLASSES[name] = type(name, (LazySparkType,), {"__module__": _MODULE, "__qualname__": name})
    return cls


def spark_class(types_module: Any, name: str) -> type | None:
    """``types_module.<name>`` (pyspark's ``pyspark.sql.types``) if it is a Spark type or
    ``StructField`` -- what a schema pickle may name there -- else ``None``."""
    value = getattr(types_module, name, None)
    if isinstance(value, type) and (
        issubclass(value, types_module.DataType) or value is types_module.StructField
    ):
        return value
    return None


def _make(name: str, state: dict[str, Any]) -> LazySparkType:
    cls = lazy_spark_class(name)
    if cls is None:
        raise ValueError(f"{name!r} is not the name of a Spark type")
    value = cls.__new__(cls)
    value.__setstate__(state)
    return value


def _pyspark_available() -> bool:
    if _MODULE in sys.modules:
        return True
    try:
        import pyspark.sql.types  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_spark_type(value: Any) -> Any:
    """``value`` with every :class:`LazySparkType` in it made the real pyspark type.

    Lists, tuples and dicts (a ``StructType``'s fields, an ``ArrayType``'s element type) are
    resolved inside. Without pyspark the stand-ins are returned as they are.

    Raises:
        TypeError: A stand-in names something of ``pyspark.sql.types`` that is not a Spark type.
    """
    if isinstance(value, list):
        return [resolve_spark_type(v) for v in value]
    if isinstance(value, tuple):
        return tuple(resolve_spark_type(v) for v in value)
    if isinstance(value, dict):
        return {k: resolve_spark_type(v) for k, v in value.items()}
    if not isinstance(value, LazySparkType) or not _pyspark_available():
        return value
    import pyspark.sql.types as T

    name = type(value).__name__
    cls = spark_class(T, name)
    if cls is None:
        raise TypeError(f"pyspark.sql.types.{name} is not a Spark type")
    real = cls.__new__(cls)
    real.__dict__.update(resolve_spark_type(dict(value.__dict__)))
    return complete_spark_type(real)


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
