"""The schema pickle in _common_metadata: written for petastorm, read without running code."""

from __future__ import annotations

import base64
import io
import json
import os
import pickle
import subprocess
import sys
from collections import OrderedDict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.dataset import read_unischema
from pipeline.errors import DatasetError
from pipeline.format import (
    ROW_GROUPS_PER_FILE_KEY,
    UNISCHEMA_KEY,
    CompressedImageCodec,
    CompressedNdarrayCodec,
    NdarrayCodec,
    ScalarCodec,
    Unischema,
    UnischemaField,
    UnsafeMetadataError,
    dumps_unischema,
    loads_unischema,
)
from pipeline.format.metadata import format_metadata, write_common_metadata
from pipeline.reader import DatasetSource
from tests.test_format import tiny_schema

# pickle.dumps of a petastorm 0.12.1 Unischema (petastorm classes, pyspark 4.0 types), made once
# on the old stack, so that every stack reads a real petastorm pickle without petastorm:
#   Unischema('Legacy', [id int64 ScalarCodec(LongType()), name str_ ScalarCodec(StringType()) nullable,
#   vec float32 (None, 2) NdarrayCodec(), img uint8 (4, 4, 3) CompressedImageCodec('jpeg', 90),
#   z float64 (3,) CompressedNdarrayCodec() nullable])
PETASTORM_PICKLE = base64.b64decode(
    "gASVTgIAAAAAAACME3BldGFzdG9ybS51bmlzY2hlbWGUjAlVbmlzY2hlbWGUk5QpgZR9lCiMBV9uYW1llIwGTGVnYWN5lIwHX2ZpZWxkc5S"
    "MC2NvbGxlY3Rpb25zlIwLT3JkZXJlZERpY3SUk5QpUpQojAJpZJRoAIwOVW5pc2NoZW1hRmllbGSUk5QoaAyMBW51bXB5lIwFaW50NjSUk5"
    "QpjBBwZXRhc3Rvcm0uY29kZWNzlIwLU2NhbGFyQ29kZWOUk5QpgZR9lIwLX3NwYXJrX3R5cGWUjBFweXNwYXJrLnNxbC50eXBlc5SMCExvbm"
    "dUeXBllJOUKYGUc2KJdJSBlIwEbmFtZZRoDihoHmgPjARzdHJflJOUKWgUKYGUfZRoF2gYjApTdHJpbmdUeXBllJOUKYGUfZSMCWNvbGxhdG"
    "lvbpSMC1VURjhfQklOQVJZlHNic2KIdJSBlIwDdmVjlGgOKGgraA+MB2Zsb2F0MzKUk5ROSwKGlGgSjAxOZGFycmF5Q29kZWOUk5QpgZSJdJ"
    "SBlIwDaW1nlGgOKGg0aA+MBXVpbnQ4lJOUSwRLBEsDh5RoEowUQ29tcHJlc3NlZEltYWdlQ29kZWOUk5QpgZR9lCiMDF9pbWFnZV9jb2RlY5"
    "SMBS5qcGVnlIwIX3F1YWxpdHmUS1p1Yol0lIGUjAF6lGgOKGhBaA+MB2Zsb2F0NjSUk5RLA4WUaBKMFkNvbXByZXNzZWROZGFycmF5Q29kZW"
    "OUk5QpgZSIdJSBlHVoDGgdaB5oKmgraDNoNGhAaEFoSXViLg=="
)


def test_reads_a_petastorm_pickle_as_our_classes():
    schema = loads_unischema(PETASTORM_PICKLE)
    assert isinstance(schema, Unischema) and schema._name == "Legacy"
    assert list(schema.fields) == ["id", "name", "vec", "img", "z"]
    assert schema.img == UnischemaField("img", np.uint8, (4, 4, 3), None, False)
    assert (
        isinstance(schema.img.codec, CompressedImageCodec)
        and str(schema.img.codec) == "CompressedImageCodec('jpeg', 90)"
    )
    assert isinstance(schema.vec.codec, NdarrayCodec) and isinstance(schema.z.codec, CompressedNdarrayCodec)
    assert (
        isinstance(schema.id.codec, ScalarCodec)
        and schema.name.codec.spark_dtype().simpleString() == "string"
    )
    assert schema.name.nullable and schema.vec.shape == (None, 2)


def test_written_pickle_equals_petastorms_and_reads_back():
    data = dumps_unischema(loads_unischema(PETASTORM_PICKLE))
    assert data == PETASTORM_PICKLE  # same bytes as petastorm's own pickle.dumps
    assert b"pipeline" not in data
    back = loads_unischema(dumps_unischema(tiny_schema()))
    assert list(back.fields) == list(tiny_schema().fields) and back.grey.codec == CompressedImageCodec(
        "jpeg", 95
    )


def test_petastorm_loads_what_we_write():
    pytest.importorskip("petastorm")
    from petastorm.codecs import CompressedImageCodec as TheirImageCodec
    from petastorm.etl.legacy import depickle_legacy_package_name_compatible
    from petastorm.unischema import Unischema as TheirUnischema

    theirs = depickle_legacy_package_name_compatible(dumps_unischema(tiny_schema()))
    assert isinstance(theirs, TheirUnischema) and isinstance(theirs.img.codec, TheirImageCodec)
    assert theirs.grey.codec.image_codec == "jpeg" and list(theirs.fields) == list(tiny_schema().fields)


def test_legacy_package_names_are_mapped():
    data = _protocol0(tiny_schema()).replace(b"(cpetastorm.", b"(cav.experimental.deepdrive.dataset_toolkit.")
    assert b"av.experimental" in data
    schema = loads_unischema(data)
    assert list(schema.fields) == list(tiny_schema().fields) and isinstance(
        schema.z.codec, CompressedNdarrayCodec
    )


def _protocol0(schema) -> bytes:
    import io

    from pipeline.format.pickling import _PetastormNamesPickler

    out = io.BytesIO()
    _PetastormNamesPickler(out, protocol=0).dump(schema)
    return out.getvalue()


class _RunsCommand:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _evil_schema(marker) -> Unischema:
    """A valid-looking Unischema whose image codec, when unpickled, would create ``marker``."""
    schema = tiny_schema()
    schema._fields["img"] = schema._fields["img"]._replace(codec=_RunsCommand(f"touch {marker}"))
    return schema


@pytest.mark.parametrize(
    ("payload", "named"),
    [
        (lambda marker: dumps_unischema(_evil_schema(marker)), "posix.system"),
        (lambda marker: pickle.dumps(_RunsCommand(f"touch {marker}")), "posix.system"),
        (lambda marker: pickle.dumps(eval), "builtins.eval"),
        (lambda marker: pickle.dumps(subprocess.Popen), "subprocess.Popen"),
        (lambda marker: pickle.dumps(np.load), "numpy.load"),
    ],
)
def test_forbidden_globals_are_refused_before_they_run(tmp_path, payload, named):
    marker = tmp_path / "ran"
    if os.name != "posix":
        named = named.replace("posix", "nt")
    with pytest.raises(UnsafeMetadataError, match=named) as info:
        loads_unischema(payload(marker), where="DS")
    assert not marker.exists()
    assert str(info.value).startswith("DS: ") and "HINT" in str(info.value)


def test_damaged_pickles_are_dataset_errors():
    with pytest.raises(DatasetError, match="cannot read the schema"):
        loads_unischema(b"\x80\x04garbage")
    with pytest.raises(DatasetError, match="not a Unischema"):
        loads_unischema(pickle.dumps({"a": 1}))
    schema = Unischema("S", [UnischemaField("x", np.int8, ())])
    schema._fields["x"] = schema._fields["x"]._replace(numpy_dtype=OrderedDict())  # not a dtype
    with pytest.raises(DatasetError, match="'x' is malformed"):
        loads_unischema(dumps_unischema(schema))


def _write_dataset(root, unischema_bytes: bytes) -> None:
    root.mkdir()
    table = pa.table({"id": pa.array([1, 2], pa.int64())})
    pq.write_table(table, root / "part-00000.parquet")
    write_common_metadata(
        root, table.schema, {UNISCHEMA_KEY: unischema_bytes, ROW_GROUPS_PER_FILE_KEY: b"{}"}
    )


def test_opening_a_dataset_with_a_command_in_its_metadata_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    _write_dataset(tmp_path / "ds", dumps_unischema(_evil_schema(marker)))
    for open_it in (read_unischema, DatasetSource):
        with pytest.raises(UnsafeMetadataError, match="system"):
            open_it(tmp_path / "ds")
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "inspect", str(tmp_path / "ds")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert "system" in proc.stderr and "HINT" in proc.stderr and str(tmp_path / "ds") in proc.stderr
    assert not marker.exists()


def test_format_metadata_keys(tmp_path):
    meta = format_metadata(tiny_schema(), {"part-00001.parquet": 2, "part-00000.parquet": 1})
    assert json.loads(meta[ROW_GROUPS_PER_FILE_KEY]) == {"part-00000.parquet": 1, "part-00001.parquet": 2}
    _write_dataset(tmp_path / "ds", meta[UNISCHEMA_KEY])
    assert list(read_unischema(tmp_path / "ds").fields) == list(tiny_schema().fields)
    stored = pq.read_schema(tmp_path / "ds" / "_common_metadata")
    assert stored.names == ["id"] and stored.metadata[UNISCHEMA_KEY] == meta[UNISCHEMA_KEY]


def _spark_types_schema() -> Unischema:
    from pyspark.sql.types import (
        ArrayType,
        DecimalType,
        IntegerType,
        LongType,
        StringType,
        StructField,
        StructType,
    )

    shared = OrderedDict(comment="one metadata dict, two fields")  # stays one, and ordered
    point = StructType(
        [StructField("x", LongType(), True, shared), StructField("y", LongType(), True, shared)]
    )
    return Unischema(
        "Typed",
        [
            UnischemaField("point", np.object_, (), ScalarCodec(point), False),
            UnischemaField("price", np.object_, (), ScalarCodec(DecimalType(10, 2)), False),
            UnischemaField("ids", np.int32, (None,), ScalarCodec(ArrayType(IntegerType())), False),
            UnischemaField("name", np.str_, (), ScalarCodec(StringType()), True),
            # pyspark's simple types are singletons: the pickle holds one LongType and one
            # IntegerType (shared with the array's element type), referred to again
            UnischemaField("id", np.int64, (), ScalarCodec(LongType()), False),
            UnischemaField("count", np.int64, (), ScalarCodec(LongType()), False),
            UnischemaField("label", np.int32, (), ScalarCodec(IntegerType()), False),
        ],
    )


_LAZY_CHECK = """
import base64, importlib.abc, json, pickle, sys
if sys.argv[2] == "absent":  # as if pyspark were not installed
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "pyspark" or name.startswith("pyspark."):
                raise ImportError("no pyspark here")
    sys.meta_path.insert(0, Block())
from pipeline.format import dumps_unischema, loads_unischema
data = base64.b64decode(sys.argv[1])
schema = loads_unischema(data)
out = {"after_load": "pyspark" in sys.modules, "str": [str(f.codec) for f in schema.fields.values()]}
plain = pickle.dumps(schema)  # how worker processes get it
copy = pickle.loads(plain)
out["after_plain_pickle"] = "pyspark" in sys.modules
out["plain_pickle_loads"] = list(loads_unischema(plain).fields) == list(schema.fields)
out["same_after_plain_pickle"] = dumps_unischema(copy) == data
out["dumps_equal"] = dumps_unischema(schema) == data
types = [f.codec.spark_dtype() for f in schema.fields.values()]
out["module"] = [type(t).__module__ for t in types]
out["real"] = [type(t).__mro__[1].__module__ for t in types]
out["attribute_is_the_type"] = all(f.codec._spark_type is t for f, t in zip(schema.fields.values(), types))
if sys.argv[2] == "present":
    import pyspark.sql.types as T
    out["isinstance"] = isinstance(schema.fields["price"].codec._spark_type, T.DecimalType)
    out["simple"] = [t.simpleString() for t in types]
    out["spark_schema"] = schema.as_spark_schema().simpleString()
    out["dumps_equal_after_resolving"] = dumps_unischema(schema) == data
    out["pickles_to_workers_lazily"] = "spark_types" in pickle.dumps(schema).decode("latin-1")
print(json.dumps(out))
"""


@pytest.mark.parametrize("pyspark_state", ["present", "absent"])
def test_reading_a_schema_imports_pyspark_only_when_a_spark_type_is_asked_for(pyspark_state):
    """Opening a dataset does not import pyspark (0.2 s per process); its types are resolved on
    demand, pickle to workers without it, and are written back as the same bytes."""
    data = dumps_unischema(_spark_types_schema())
    proc = subprocess.run(
        [sys.executable, "-c", _LAZY_CHECK, base64.b64encode(data).decode(), pyspark_state],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["after_load"] is False and out["after_plain_pickle"] is False
    names = ["StructType", "DecimalType", "ArrayType", "StringType", "LongType", "LongType", "IntegerType"]
    assert out["str"] == [f"ScalarCodec({name}())" for name in names]
    assert out["dumps_equal"] and out["same_after_plain_pickle"] and out["plain_pickle_loads"]
    assert out["module"] == ["pyspark.sql.types"] * 7 and out["attribute_is_the_type"]
    if pyspark_state == "present":
        assert out["real"] == ["pyspark.sql.types"] * 7  # DecimalType's base is FractionalType...
        assert out["isinstance"] and out["simple"] == [
            "struct<x:bigint,y:bigint>",
            "decimal(10,2)",
            "array<int>",
            "string",
            *["bigint"] * 2,
            "int",
        ]
        assert out["spark_schema"] == (
            "struct<point:struct<x:bigint,y:bigint>,price:decimal(10,2),ids:array<int>,name:string,"
            "id:bigint,count:bigint,label:int>"
        )
        assert out["dumps_equal_after_resolving"] and out["pickles_to_workers_lazily"]
    else:  # stand-ins: the class names and state, nothing to import
        assert out["real"] == ["pipeline.format.spark_types"] * 7


def test_a_stand_in_spark_type_resolves_to_the_real_one_and_compares_equal():
    from pyspark.sql.types import ArrayType, DecimalType, IntegerType, LongType, StringType

    from pipeline.format.spark_types import lazy_spark_class, resolve_spark_type

    def made_up():
        return lazy_spark_class("MadeUpType", any_type_name=True)()

    state = pickle.loads(pickle.dumps(DecimalType(10, 2))).__dict__
    stand_in = lazy_spark_class("DecimalType").__new__(lazy_spark_class("DecimalType"))
    stand_in.__setstate__(dict(state))
    assert pickle.loads(pickle.dumps(stand_in)) == stand_in  # plain pickle: still a stand-in
    assert resolve_spark_type(stand_in) == DecimalType(10, 2) and stand_in == DecimalType(10, 2)
    codec = ScalarCodec(stand_in)
    assert codec == ScalarCodec(DecimalType(10, 2)) and ScalarCodec(DecimalType(10, 2)) == codec
    assert codec != ScalarCodec(DecimalType(12, 2)) and codec != ScalarCodec(LongType())
    assert isinstance(codec.spark_dtype(), DecimalType) and codec._spark_type == DecimalType(10, 2)
    element = lazy_spark_class("IntegerType")()
    nested = lazy_spark_class("ArrayType").__new__(lazy_spark_class("ArrayType"))
    nested.__setstate__({"elementType": element, "containsNull": True})
    assert resolve_spark_type(nested) == ArrayType(IntegerType())
    assert hash(stand_in) == hash(DecimalType(10, 2))
    assert resolve_spark_type(stand_in) is resolve_spark_type(stand_in)  # one real object each
    # only Spark type names are read lazily; others go to pyspark as before (refused there)
    assert lazy_spark_class("MadeUpType") is None and lazy_spark_class("SparkSession") is None
    with pytest.raises(TypeError, match="not a Spark type"):  # where pyspark is not installed
        resolve_spark_type(made_up())
    assert lazy_spark_class("os.system", any_type_name=True) is None
    with pytest.raises(DatasetError, match="MadeUpType"):  # nor through a plain pickle's _make
        loads_unischema(
            pickle.dumps(Unischema("U", [UnischemaField("f", np.int64, (), ScalarCodec(made_up()), False)]))
        )
    # two stand-ins equal when their real types are (a pyspark 3 StringType lacks `collation`)
    old, new = lazy_spark_class("StringType")(), lazy_spark_class("StringType")()
    new.__setstate__(dict(vars(StringType())))
    assert old == new and hash(old) == hash(new) and old != lazy_spark_class("LongType")() and old != None  # noqa: E711


def test_a_schema_read_while_another_thread_imports_pyspark_gets_stand_ins(monkeypatch):
    """A module half-imported by another thread is not used (it may lack the type yet)."""
    import types

    from pipeline.format.pickling import _spark_type_class
    from pipeline.format.spark_types import LazySparkType

    half = types.ModuleType("pyspark.sql.types")
    half.__spec__ = types.SimpleNamespace(_initializing=True)
    monkeypatch.setitem(sys.modules, "pyspark.sql.types", half)
    assert issubclass(_spark_type_class("LongType"), LazySparkType)


def test_stand_ins_are_written_as_petastorm_writes_the_real_types_at_old_protocols():
    from pyspark.sql.types import LongType

    from pipeline.format.pickling import _PetastormNamesPickler
    from pipeline.format.spark_types import lazy_spark_class

    stand_in = lazy_spark_class("LongType")()
    for protocol in (0, 2, 4):
        out = io.BytesIO()
        _PetastormNamesPickler(out, protocol=protocol).dump(ScalarCodec(stand_in))
        expected = io.BytesIO()
        _PetastormNamesPickler(expected, protocol=protocol).dump(ScalarCodec(LongType()))
        assert out.getvalue() == expected.getvalue(), protocol
