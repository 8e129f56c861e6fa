"""pipeline.format without petastorm: schema objects, codecs, TransformSpec, predicates.

Byte and behaviour comparisons with petastorm 0.12.1 run where petastorm is installed (the old
stack); everything else runs on every stack.
"""

from __future__ import annotations

import hashlib
import sys

import numpy as np
import pytest
from pyspark.sql.types import ArrayType, DecimalType, IntegerType, LongType, StringType

import pipeline
from pipeline.format import (
    CompressedImageCodec,
    CompressedNdarrayCodec,
    NdarrayCodec,
    ScalarCodec,
    TransformSpec,
    Unischema,
    UnischemaField,
    as_unischema,
    encode_row,
    transform_schema,
)
from pipeline.predicates import (
    in_intersection,
    in_lambda,
    in_negate,
    in_pseudorandom_split,
    in_reduce,
    in_set,
)


def tiny_schema() -> Unischema:
    return Unischema(
        "Tiny",
        [
            UnischemaField("id", np.int64, (), ScalarCodec(LongType()), False),
            UnischemaField("name", np.str_, (), ScalarCodec(StringType()), True),
            UnischemaField("vec", np.float32, (None, 2), NdarrayCodec(), False),
            UnischemaField("img", np.uint8, (4, 5, 3), CompressedImageCodec("png"), False),
            UnischemaField("grey", np.uint8, (4, 5), CompressedImageCodec("jpeg", 95), False),
            UnischemaField("z", np.float64, (3,), CompressedNdarrayCodec(), True),
        ],
    )


def test_public_names_from_pipeline():
    assert pipeline.Unischema is Unischema and pipeline.TransformSpec is TransformSpec
    assert pipeline.CompressedImageCodec is CompressedImageCodec and pipeline.ScalarCodec is ScalarCodec
    assert pipeline.NdarrayCodec is NdarrayCodec and pipeline.UnischemaField is UnischemaField


def test_unischema_like_petastorms():
    schema = tiny_schema()
    assert list(schema.fields) == ["id", "name", "vec", "img", "grey", "z"]
    assert schema.img is schema.fields["img"]
    assert UnischemaField("a", np.int32, ()) == UnischemaField("a", np.int32, (), NdarrayCodec(), False)
    assert (
        UnischemaField("a", np.int32, ()).nullable is False
        and UnischemaField("a", np.int32, ()).codec is None
    )
    assert hash(schema.id) == hash(UnischemaField("id", np.int64, (), None, False))
    view = schema.create_schema_view([schema.id, "i.*", "v.c"])
    assert list(view.fields) == ["id", "vec", "img"] and view._name == "Tiny_view"  # regexes: schema order
    with pytest.raises(ValueError, match="does not belong"):
        schema.create_schema_view([UnischemaField("nope", np.int8, ())])
    spark = schema.as_spark_schema()
    assert [f.dataType.typeName() for f in spark.fields] == [
        "long",
        "string",
        "binary",
        "binary",
        "binary",
        "binary",
    ]
    assert [f.nullable for f in spark.fields] == [False, True, False, False, False, True]
    assert schema.make_namedtuple(id=1, name="a", vec=None, img=None, grey=None, z=None).id == 1
    assert "CompressedImageCodec('jpeg', 95)" in str(schema)


def test_codecs_round_trip():
    schema = tiny_schema()
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    vec = rng.random((7, 2)).astype(np.float32)
    z = np.arange(3, dtype=np.float64)
    row = encode_row(schema, {"id": np.int64(3), "vec": vec, "img": img, "grey": img[..., 0], "z": z})
    assert row["id"] == 3 and type(row["id"]) is int and row["name"] is None
    np.testing.assert_array_equal(schema.img.codec.decode(schema.img, row["img"]), img)
    np.testing.assert_array_equal(schema.vec.codec.decode(schema.vec, row["vec"]), vec)
    np.testing.assert_array_equal(schema.z.codec.decode(schema.z, row["z"]), z)
    assert schema.grey.codec.decode(schema.grey, row["grey"]).shape == (4, 5)
    with pytest.raises(ValueError, match="Unexpected dimensions"):
        schema.vec.codec.encode(schema.vec, np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="Unexpected type"):
        schema.img.codec.encode(schema.img, img.astype(np.int16))
    with pytest.raises(ValueError, match="not found in the row_dict"):
        encode_row(schema, {"id": 1})


def test_transform_schema_semantics():
    schema = tiny_schema()
    spec = TransformSpec(
        edit_fields=[("vec", np.float64, (4,), False), ("extra", np.int32, (), True)], removed_fields=["name"]
    )
    out = transform_schema(schema, spec)
    assert list(out.fields) == ["id", "img", "grey", "z", "vec", "extra"] and out._name == "Tiny_transformed"
    assert out.vec.codec is None and out.vec.shape == (4,) and out.extra.nullable is True
    out = transform_schema(schema, TransformSpec(selected_fields=["z", "id", "missing"]))
    assert list(out.fields) == ["z", "id"]
    with pytest.raises(ValueError, match="only specify one"):
        TransformSpec(removed_fields=["a"], selected_fields=["b"])


def test_predicates():
    values = {"id": 7, "tags": np.array([1, 5]), "name": "x"}
    assert in_set([7, 8], "id").do_include(values) and not in_set([1], "id").do_include(values)
    assert in_intersection([5, 9], "tags").do_include(values)
    assert not in_intersection([9], "tags").do_include(values)
    assert in_lambda(["id"], lambda i: i > 3).do_include(values)
    assert in_lambda(["id"], lambda i, s: i > s, 10).do_include(values) is False
    both = in_reduce([in_set([7], "id"), in_set(["x"], "name")], all)
    assert both.get_fields() == {"id", "name"} and both.do_include(values)
    assert not in_negate(both).do_include(values)
    with pytest.raises(ValueError, match="should be a list"):
        in_lambda("id", bool)
    with pytest.raises(ValueError, match="out of range"):
        in_pseudorandom_split([0.5, 0.5], 2, "id")


def test_pseudorandom_split_hashing():
    """A subset is the md5 of str(value) mod sys.maxsize in the fraction's range (petastorm's rule)."""
    splits = [in_pseudorandom_split([0.6, 0.3, 0.1], k, "id") for k in range(3)]
    member = [[s.do_include({"id": i}) for s in splits] for i in range(2000)]
    assert all(sum(m) == 1 for m in member)  # each row in exactly one subset
    share = np.mean([m[0] for m in member])
    assert 0.55 < share < 0.65
    bucket = int(hashlib.md5(b"1234").hexdigest(), 16) % sys.maxsize
    borders = [0, *(sum([0.6, 0.3, 0.1][: i + 1]) for i in range(3))]
    expected = [
        borders[k] * (sys.maxsize - 1) <= bucket < borders[k + 1] * (sys.maxsize - 1) for k in range(3)
    ]
    assert [s.do_include({"id": 1234}) for s in splits] == expected


def test_spark_type_from_an_older_pyspark_is_completed():
    codec = ScalarCodec.__new__(ScalarCodec)
    bare = StringType.__new__(StringType)  # as unpickled from pyspark 3 (no attributes)
    codec.__setstate__({"_spark_type": bare})
    assert codec.spark_dtype().simpleString() == "string"
    array = ScalarCodec(ArrayType(IntegerType()))
    assert array.spark_dtype().elementType == IntegerType()
    assert ScalarCodec(DecimalType(10, 2)).encode(UnischemaField("d", np.float64, ()), 1.5) == 1.5


# --- comparisons with petastorm itself (old stack) ------------------------------------------


@pytest.fixture
def petastorm():
    return pytest.importorskip("petastorm")


def _same_schema_in_petastorm(schema):
    from petastorm import codecs as pc
    from petastorm.unischema import Unischema as PUnischema
    from petastorm.unischema import UnischemaField as PField

    def codec(c):
        if c is None:
            return None
        if isinstance(c, CompressedImageCodec):
            return pc.CompressedImageCodec(c.image_codec, c.quality)
        if isinstance(c, ScalarCodec):
            return pc.ScalarCodec(c.spark_dtype())
        return getattr(pc, type(c).__name__)()

    return PUnischema(
        schema._name,
        [PField(f.name, f.numpy_dtype, f.shape, codec(f.codec), f.nullable) for f in schema.fields.values()],
    )


def test_codecs_encode_petastorms_bytes(petastorm):
    ours = tiny_schema()
    theirs = _same_schema_in_petastorm(ours)
    rng = np.random.default_rng(1)
    for seed in range(3):
        img = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
        row = {"id": seed, "name": f"r{seed}", "vec": rng.random((seed + 1, 2)).astype(np.float32)}
        row.update(img=img, grey=img[..., 1].copy(), z=rng.random(3))
        for name, field in ours.fields.items():
            mine = field.codec.encode(field, row[name])
            other = theirs.fields[name].codec.encode(theirs.fields[name], row[name])
            if name == "z":  # a zip archive with timestamps: compare the decoded arrays
                np.testing.assert_array_equal(field.codec.decode(field, other), row[name])
                np.testing.assert_array_equal(theirs.fields[name].codec.decode(field, mine), row[name])
            else:
                assert (bytes(mine) == bytes(other)) if isinstance(mine, bytearray) else (mine == other), name


def test_objects_from_petastorm_are_accepted(petastorm):
    from petastorm.predicates import in_pseudorandom_split as their_split
    from petastorm.transform import TransformSpec as TheirSpec

    theirs = _same_schema_in_petastorm(tiny_schema())
    ours = as_unischema(theirs)
    assert isinstance(ours, Unischema) and isinstance(ours.img.codec, CompressedImageCodec)
    assert ours.img.codec.quality == 80 and list(ours.fields) == list(theirs.fields)
    assert Unischema("X", list(theirs.fields.values())).grey.codec == CompressedImageCodec("jpeg", 95)
    spec = TheirSpec(edit_fields=[("vec", np.float64, (4,), False)], removed_fields=["name"])
    assert list(transform_schema(ours, spec).fields) == list(
        petastorm.transform.transform_schema(theirs, spec).fields
    )
    assert ours.as_spark_schema() == theirs.as_spark_schema()
    ids = [*range(500), "a", "b", 3.5]
    for k in range(2):
        mine, other = in_pseudorandom_split([0.7, 0.3], k, "id"), their_split([0.7, 0.3], k, "id")
        assert [mine.do_include({"id": i}) for i in ids] == [other.do_include({"id": i}) for i in ids]


def test_image_decode_is_petastorms(petastorm):
    """Our CompressedImageCodec.decode (which the reader's fast paths are tested against) gives
    petastorm's pixels for PNG and JPEG, colour and grey."""
    from petastorm.codecs import CompressedImageCodec as TheirCodec

    rng = np.random.default_rng(2)
    for shape in ((16, 24, 3), (16, 24)):
        field = UnischemaField("im", np.uint8, shape, None, False)
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        for codec, quality in (("png", 80), ("jpeg", 80), ("jpeg", 30)):
            blob = bytes(CompressedImageCodec(codec, quality).encode(field, image))
            mine = CompressedImageCodec(codec, quality).decode(field, blob)
            np.testing.assert_array_equal(mine, TheirCodec(codec, quality).decode(field, blob))


def test_a_dataset_written_with_pipeline_format_reads_everywhere(tmp_path):
    """Several row groups per file: our reader and (where installed) petastorm's readers agree."""
    from pipeline.reader import DatasetSource
    from pipeline.reader.plan import WorkItem
    from tests.datasets import expected_row, make_batch_reader, make_reader, write_format_dataset

    url = write_format_dataset(tmp_path / "ds", rows=45, files=2, row_group_rows=10)
    source = DatasetSource(url)
    assert source.kind == "petastorm" and source.sizes == [10, 10, 3, 10, 10, 2]
    chunk = source.read(WorkItem(epoch=0, piece=4, start=0, stop=10))
    assert chunk.columns["id"].tolist() == list(range(33, 43))
    with make_reader(url, workers_count=1, shuffle_row_groups=False, num_epochs=1) as reader:
        rows = {int(r.id): r for r in reader}
    assert sorted(rows) == list(range(45))
    for i in (0, 22, 44):
        np.testing.assert_array_equal(rows[i].image, expected_row(i)["image"])
        np.testing.assert_array_equal(rows[i].vector, expected_row(i)["vector"])
        assert rows[i].name == f"row-{i}" and rows[i].label == i % 3
    with make_batch_reader(url, workers_count=1, shuffle_row_groups=False, num_epochs=1) as reader:
        ids = [int(i) for batch in reader for i in batch.id]
    assert ids == list(range(45))
