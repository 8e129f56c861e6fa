"""The Unischema pickle of a dataset's metadata: written for petastorm, read without running code.

Petastorm stores the dataset's ``Unischema`` as a pickle in ``_common_metadata``. Two halves:

* :func:`dumps_unischema` writes a pickle that petastorm 0.12.1 loads as its own classes: a
  pickler that names this package's classes ``petastorm.unischema.Unischema``,
  ``petastorm.codecs.NdarrayCodec``, ... It needs no petastorm at write time; the instance
  state is the same as petastorm's, so the bytes equal ``pickle.dumps`` of the petastorm schema.
* :func:`loads_unischema` reads one with a restricted unpickler that maps petastorm's names
  (and the ``av.experimental.deepdrive.dataset_toolkit`` / ``av.ml.dataset_toolkit`` names of
  petastorm's predecessors) to this package's classes and allows only what a schema is made of:
  the format's classes, ``collections.OrderedDict``, numpy scalar types and dtype/ndarray
  reconstruction, ``decimal.Decimal``, the ``pyspark.sql.types`` types that ``ScalarCodec``
  holds, ``copyreg._reconstructor`` (old protocol 0/1 pickles) and a few plain builtin types.
  Any other global -- ``os.system``, ``builtins.eval``, ``subprocess.Popen``... -- is refused
  before anything runs, with :class:`UnsafeMetadataError` naming it.
"""

from __future__ import annotations

import copyreg
import decimal
import io
import pickle
import types
from collections import OrderedDict
from typing import Any

import numpy as np

from pipeline.errors import DatasetError
from pipeline.format import spark_types
from pipeline.format.codecs import CompressedImageCodec, CompressedNdarrayCodec, NdarrayCodec, ScalarCodec
from pipeline.format.spark_types import (
    LazySparkType,
    imported_types_module,
    resolve_spark_type,
    spark_class,
    stand_in_class,
)
from pipeline.format.unischema import Unischema, UnischemaField

__all__ = ["PICKLE_PROTOCOL", "UnsafeMetadataError", "dumps_unischema", "loads_unischema"]

PICKLE_PROTOCOL = 4
"""Protocol of the pickles written: what petastorm's ``pickle.dumps`` uses on Python 3.8-3.13."""

_OURS: dict[str, type] = {
    "Unischema": Unischema,
    "UnischemaField": UnischemaField,
    "ScalarCodec": ScalarCodec,
    "NdarrayCodec": NdarrayCodec,
    "CompressedNdarrayCodec": CompressedNdarrayCodec,
    "CompressedImageCodec": CompressedImageCodec,
}
_PETASTORM_MODULE = {
    "Unischema": "petastorm.unischema",
    "UnischemaField": "petastorm.unischema",
    "ScalarCodec": "petastorm.codecs",
    "NdarrayCodec": "petastorm.codecs",
    "CompressedNdarrayCodec": "petastorm.codecs",
    "CompressedImageCodec": "petastorm.codecs",
}
_WRITE_AS = {cls: (_PETASTORM_MODULE[name], name) for name, cls in _OURS.items()}
_LEGACY_PACKAGES = ("av.experimental.deepdrive.dataset_toolkit", "av.ml.dataset_toolkit")
_OUR_MODULES = ("pipeline.format.unischema", "pipeline.format.codecs", "pipeline.format")

_BUILTINS = {
    name: getattr(__import__("builtins"), name)
    for name in (
        *("object", "str", "bytes", "bytearray", "int", "float", "complex", "bool"),
        *("tuple", "list", "dict", "set", "frozenset", "slice", "range"),
    )
}
_NUMPY_RENAMED = {"unicode_": "str_", "string_": "bytes_", "bool8": "bool_", "object0": "object_"}
_NUMPY_MULTIARRAY = ("numpy.core.multiarray", "numpy._core.multiarray")
_NUMPY_FUNCTIONS = {"_reconstruct", "scalar"}
_NUMPY_NUMERIC = ("numpy.core.numeric", "numpy._core.numeric")


class UnsafeMetadataError(DatasetError):
    """A dataset's schema pickle names a global that the format does not use (it could run code)."""


class _Refused(pickle.UnpicklingError):
    def __init__(self, qualified: str) -> None:
        super().__init__(f"global {qualified!r} is forbidden")
        self.qualified = qualified


def _stock_dispatch() -> dict[type, Any]:
    """The pure-Python pickler's own savers (``dill``, which petastorm imports, replaces some of
    them in ``pickle._Pickler.dispatch`` for every process that imports it)."""
    stock = pickle._Pickler  # type: ignore[attr-defined]
    savers = {
        type(None): "save_none",
        bool: "save_bool",
        int: "save_long",
        float: "save_float",
        bytes: "save_bytes",
        bytearray: "save_bytearray",
        str: "save_str",
        tuple: "save_tuple",
        list: "save_list",
        dict: "save_dict",
        set: "save_set",
        frozenset: "save_frozenset",
        type: "save_type",
        types.FunctionType: "save_global",
    }
    return {t: getattr(stock, name) for t, name in savers.items() if hasattr(stock, name)}


class _PetastormNamesPickler(pickle._Pickler):  # type: ignore[name-defined]
    """Pickles this package's format classes under petastorm's module and class names.

    The pure-Python pickler, with its stock savers and no global ``copyreg`` table, so that
    what other libraries register (``dill``) does not change the bytes.
    """

    dispatch = _stock_dispatch()

    def __init__(self, file: io.BytesIO, protocol: int) -> None:
        super().__init__(file, protocol=protocol)
        self.dispatch_table: dict[type, Any] = {}

    def save(self, obj: Any, save_persistent_id: bool = True) -> None:
        if isinstance(obj, LazySparkType):  # a Spark type read without pyspark: the real one
            obj = resolve_spark_type(obj)  # where pyspark is installed (one per stand-in)
        super().save(obj, save_persistent_id)

    def reducer_override(self, obj: Any) -> Any:
        """A stand-in left (pyspark is not installed) is written as pickle writes the real type:
        its ``pyspark.sql.types`` name (:meth:`save_global`) and its state."""
        if not isinstance(obj, LazySparkType):
            return NotImplemented
        state = dict(obj.__dict__) or None
        if self.proto >= 2:
            return (copyreg.__newobj__, (type(obj),), state)
        return (copyreg._reconstructor, (type(obj), object, None), state)

    def save_global(self, obj: Any, name: str | None = None) -> None:
        target = _WRITE_AS.get(obj)
        if isinstance(obj, type) and issubclass(obj, LazySparkType):
            target = ("pyspark.sql.types", obj.__name__)
        if target is None:
            module = getattr(obj, "__module__", None) or ""
            if module.startswith("numpy._core."):  # loadable by numpy 1.x too
                target = ("numpy.core." + module[len("numpy._core.") :], name or obj.__qualname__)
        if target is None:
            super().save_global(obj, name)
            return
        module, qualname = target
        if self.proto >= 4:
            self.save(module)
            self.save(qualname)
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + f"{module}\n{qualname}\n".encode("ascii"))
        self.memoize(obj)


def dumps_unischema(schema: Any) -> bytes:
    """Pickle ``schema`` (this package's ``Unischema``, or petastorm's) as petastorm does."""
    out = io.BytesIO()
    _PetastormNamesPickler(out, protocol=PICKLE_PROTOCOL).dump(schema)
    return out.getvalue()


def _spark_type_class(name: str) -> Any:
    """The class a pickle's ``pyspark.sql.types.<name>`` stands for: pyspark's own if pyspark is
    imported already, otherwise a stand-in that imports it only when the type is asked for
    (:mod:`pipeline.format.spark_types`: opening a dataset does not import pyspark)."""
    types_module = imported_types_module()  # None while another thread is still importing it
    return stand_in_class(name) if types_module is None else spark_class(types_module, name)


def _numpy_global(module: str, name: str) -> Any:
    if module == "numpy":
        if name in ("dtype", "ndarray"):
            return getattr(np, name)
        value = getattr(np, _NUMPY_RENAMED.get(name, name), None)
        return value if isinstance(value, type) and issubclass(value, np.generic) else None
    core = getattr(np, "_core", None) or np.core  # numpy 2 / numpy 1
    if module in _NUMPY_MULTIARRAY and name in _NUMPY_FUNCTIONS:
        return getattr(core.multiarray, name)
    if module in _NUMPY_NUMERIC and name == "_frombuffer":
        return core.numeric._frombuffer
    return None


def _allowed_global(module: str, name: str) -> Any:
    """The object a pickle may reference as ``module.name``, or ``None`` if it is not allowed."""
    if module in ("__builtin__", "builtins"):
        return _BUILTINS.get(name)
    if module in ("copy_reg", "copyreg"):
        return copyreg._reconstructor if name == "_reconstructor" else None
    for legacy in _LEGACY_PACKAGES:
        if module.startswith(legacy + "."):
            module = "petastorm" + module[len(legacy) :]
    if module in ("petastorm.unischema", "petastorm.codecs", *_OUR_MODULES):
        cls = _OURS.get(name)
        return (
            cls if cls is not None and (module in _OUR_MODULES or _PETASTORM_MODULE[name] == module) else None
        )
    if module == "collections" and name == "OrderedDict":
        return OrderedDict
    if module == "decimal" and name == "Decimal":
        return decimal.Decimal
    if module == "pyspark.sql.types":
        return _spark_type_class(name)
    if module == "pipeline.format.spark_types" and name == "_make":  # a plain pickle of a stand-in
        return spark_types._make
    if module == "numpy" or module.startswith("numpy."):
        return _numpy_global(module, name)
    return None


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        value = _allowed_global(module, name)
        if value is None:
            raise _Refused(f"{module}.{name}")
        return value


def _check_field(field: Any) -> None:
    dtype = field.numpy_dtype
    ok_dtype = isinstance(dtype, np.dtype) or (
        isinstance(dtype, type)
        and (issubclass(dtype, np.generic) or dtype in (*_BUILTINS.values(), decimal.Decimal))
    )
    ok_shape = isinstance(field.shape, tuple) and all(d is None or isinstance(d, int) for d in field.shape)
    ok_codec = field.codec is None or type(field.codec) in _OURS.values()
    if not (isinstance(field.name, str) and ok_dtype and ok_shape and ok_codec):
        raise TypeError(f"field {field.name!r} is malformed: {tuple(field)!r}")


def loads_unischema(data: bytes, *, where: str = "the dataset") -> Unischema:
    """Unpickle a dataset's Unischema, allowing only the classes the format is made of.

    Args:
        data: The pickle (the ``dataset-toolkit.unischema.v1`` value of ``_common_metadata``).
        where: The dataset, for error messages. Defaults to ``"the dataset"``.

    Raises:
        UnsafeMetadataError: The pickle names another global (nothing of it was run).
        DatasetError: The pickle is damaged or does not hold a Unischema.
    """
    key = "dataset-toolkit.unischema.v1"
    try:
        schema = _RestrictedUnpickler(io.BytesIO(data)).load()
        if not isinstance(schema, Unischema):
            raise TypeError(f"it holds a {type(schema).__name__}, not a Unischema")
        for field in schema.fields.values():
            _check_field(field)
    except _Refused as exc:
        raise UnsafeMetadataError(
            f"{where}: the schema in _common_metadata ({key}) names {exc.qualified}, which a Petastorm "
            "schema never contains; it was not loaded, because unpickling it could run code",
            hint="open only datasets from sources you trust; to read the data as plain Parquet, "
            f"rewrite _common_metadata without the {key} key",
        ) from None
    except Exception as exc:  # damaged bytes, wrong shapes of state
        raise DatasetError(
            f"{where}: cannot read the schema in _common_metadata ({key}): {exc}",
            hint="was the dataset written by `pipeline convert` or petastorm? rewrite its metadata",
        ) from None
    return schema
