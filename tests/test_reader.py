"""Reading and decoding: petastorm datasets like make_reader, plain Parquet like make_batch_reader."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import DatasetError, PipelineError
from pipeline.reader import DatasetSource, Reader, ReaderConfig, ReadOptions, WorkItem
from pipeline.reader.shuffle import RowBuffer
from tests.datasets import expected_row, write_parquet_dataset, write_petastorm_dataset


@pytest.fixture(scope="module")
def petastorm_url(spark, tmp_path_factory):
    return write_petastorm_dataset(spark, tmp_path_factory.mktemp("ps") / "tiny", rows=60, files=3)


@pytest.fixture
def parquet_url(tmp_path):
    return write_parquet_dataset(tmp_path / "plain", rows=50, files=3, row_group_rows=6)


def read_all(url, options=None, **config):
    source = DatasetSource(url, options)
    reader = Reader(
        source, ReaderConfig(shuffle=False, **config), batch_size=1000, drop_last=False, rank=0, world_size=1
    )
    out = {}
    for sel in reader.batches():
        for name, column in sel.columns.items():
            out.setdefault(name, []).extend(column[sel.positions])
    return out


@pytest.mark.spark
def test_petastorm_rows_decode_like_make_reader(petastorm_url):
    from tests.datasets import make_reader

    rows = read_all(petastorm_url, workers=2)
    assert sorted(rows["id"]) == list(range(60))
    for i, row_id in enumerate(rows["id"]):
        expected = expected_row(int(row_id))
        np.testing.assert_array_equal(rows["image"][i], expected["image"])
        np.testing.assert_array_equal(rows["vector"][i], expected["vector"])
        assert rows["name"][i] == expected["name"] and rows["label"][i] == expected["label"]
    # petastorm's own reader gives the same values and dtypes
    with make_reader(petastorm_url, workers_count=1, shuffle_row_groups=False, num_epochs=1) as reader:
        theirs = {int(r.id): r for r in reader}
    for i, row_id in enumerate(rows["id"]):
        np.testing.assert_array_equal(theirs[int(row_id)].image, rows["image"][i])
        assert np.asarray(rows["label"][i]).dtype == np.asarray(theirs[int(row_id)].label).dtype


@pytest.mark.spark
def test_row_form_transform_spec(petastorm_url):
    from pipeline.format import TransformSpec

    def add_mean(row):
        row["mean"] = np.float64(row["image"].mean())
        row["vector"] = np.concatenate([row["vector"], row["vector"]])
        return row

    spec = TransformSpec(
        add_mean,
        edit_fields=[("mean", np.float64, (), False), ("vector", np.float32, (8,), False)],
        removed_fields=["name"],
    )
    source = DatasetSource(petastorm_url, ReadOptions(transform=spec))
    assert set(source.specs) == {"id", "label", "image", "vector", "mean"}
    rows = read_all(petastorm_url, ReadOptions(transform=spec))
    assert "name" not in rows
    i = rows["id"].index(7)
    assert rows["mean"][i] == pytest.approx(expected_row(7)["image"].mean())
    np.testing.assert_array_equal(rows["vector"][i], np.full(8, 7, np.float32))
    selected = read_all(petastorm_url, ReadOptions(transform=TransformSpec(selected_fields=["label", "id"])))
    assert list(selected) == ["label", "id"]


@pytest.mark.spark
def test_predicate_and_field_selection(petastorm_url):
    from pipeline.predicates import in_lambda

    options = ReadOptions(fields=("id", "label"), predicate=in_lambda(["id"], lambda i: i % 4 == 0))
    source = DatasetSource(petastorm_url, options)
    assert sum(source.sizes) == 15
    rows = read_all(petastorm_url, options)
    assert set(rows) == {"id", "label"} and sorted(rows["id"]) == list(range(0, 60, 4))


def test_plain_parquet_reads_like_make_batch_reader(parquet_url):
    from tests.datasets import make_batch_reader

    ours = read_all(parquet_url, workers=3)
    assert ours["id"] == list(range(50))  # stored order without shuffling
    plain = ["id", "x", "name"]  # make_batch_reader cannot read ragged lists; we can
    with make_batch_reader(
        "file://" + parquet_url, schema_fields=plain, workers_count=1, shuffle_row_groups=False, num_epochs=1
    ) as reader:
        theirs = {name: [] for name in plain}
        for batch in reader:
            for name in plain:
                theirs[name].extend(getattr(batch, name))
    assert [int(i) for i in theirs["id"]] == ours["id"]
    np.testing.assert_array_equal(np.asarray(theirs["x"]), np.asarray(ours["x"]))
    assert [str(s) for s in theirs["name"]] == ours["name"]
    assert [t.tolist() for t in ours["tokens"]] == [list(range(i % 7 + 1)) for i in range(50)]


def test_batch_form_transform_spec_on_plain_parquet(parquet_url):
    from pipeline.format import TransformSpec

    def scale(frame):
        frame["x"] = frame["x"] * 10
        frame["double_id"] = frame["id"] * 2
        return frame

    spec = TransformSpec(scale, edit_fields=[("double_id", np.int64, (), False)], removed_fields=["name"])
    rows = read_all(parquet_url, ReadOptions(transform=spec))
    assert set(rows) == {"id", "x", "tokens", "double_id"}
    assert rows["double_id"] == [2 * i for i in rows["id"]]
    assert rows["x"][3] == pytest.approx(15.0)


def test_transform_must_keep_the_row_count(parquet_url):
    from pipeline.format import TransformSpec

    spec = TransformSpec(lambda frame: frame.iloc[:2])
    with pytest.raises(PipelineError, match="number of rows") as info:
        read_all(parquet_url, ReadOptions(transform=spec))
    assert any("row group" in note for note in info.value.__notes__)


def test_unknown_field_and_missing_dataset(parquet_url, tmp_path):
    with pytest.raises(DatasetError, match="'nope' is not in") as info:
        DatasetSource(parquet_url, ReadOptions(fields=("id", "nope")))
    assert "available fields: id, x, name, tokens" in str(info.value)
    with pytest.raises(DatasetError, match="does not exist"):
        DatasetSource(tmp_path / "missing")


def test_pyarrow_filesystem_passes_through(parquet_url):
    import pyarrow.fs as pafs

    rows = read_all(parquet_url, ReadOptions(filesystem=pafs.LocalFileSystem(), fields=("id",)))
    assert rows["id"] == list(range(50))


def test_read_into_writes_reserved_rows(parquet_url):
    source = DatasetSource(parquet_url)
    buffer = RowBuffer(source.specs, capacity=20, size=0, rng=None)
    rows = buffer.reserve(4)
    source.read_into(WorkItem(epoch=0, piece=1, start=1, stop=5), buffer.columns, rows)
    assert buffer.columns["id"][rows].tolist() == [7, 8, 9, 10]
    assert [list(t) for t in buffer.columns["tokens"][rows]] == [
        list(range(i % 7 + 1)) for i in (7, 8, 9, 10)
    ]


def test_row_buffer_memory_is_fixed_by_the_settings_not_the_dataset(tmp_path):
    small = write_parquet_dataset(tmp_path / "small", rows=60, files=1, row_group_rows=10)
    large = write_parquet_dataset(tmp_path / "large", rows=6000, files=4, row_group_rows=10)
    capacities = []
    for url in (small, large):
        reader = Reader(
            DatasetSource(url),
            ReaderConfig(shuffle_buffer=32, workers=2),
            batch_size=8,
            drop_last=False,
            rank=0,
            world_size=1,
        )
        capacities.append(reader._buffer().capacity)  # 2 workers x read_ahead 2 = 4 items in flight
    assert capacities[0] == capacities[1] == 32 + 5 * 10


def test_fixed_length_arrays_stored_as_spark_lists():
    """ScalarCodec(ArrayType) fields with a fixed shape, as `convert text --seq-len` writes them."""
    import pyarrow as pa
    from pyspark.sql.types import ArrayType, IntegerType

    from pipeline.format import ScalarCodec, UnischemaField
    from pipeline.reader.decode import decode_column, spec_from_unischema

    field = UnischemaField("tokens", np.int32, (3,), ScalarCodec(ArrayType(IntegerType())), False)
    spec = spec_from_unischema(field)
    column = pa.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]], pa.list_(pa.int32())).slice(1)
    out = decode_column(spec, field, column)
    assert out.dtype == np.int32 and out.tolist() == [[4, 5, 6], [7, 8, 9]]
    with pytest.raises(DatasetError, match="5 values for 2 rows"):
        decode_column(spec, field, pa.array([[1, 2, 3], [4, 5]], pa.list_(pa.int32())))


def _npy(value):
    import io

    out = io.BytesIO()
    np.save(out, value)
    return out.getvalue()


@pytest.mark.parametrize(
    ("dtype", "shape", "stored"),
    [
        (np.float32, (16,), np.float32),
        (np.int16, (2, 3, 4), np.int16),
        (np.float64, (), np.float64),
        (np.float64, (5,), ">f8"),  # big-endian bytes, read as numpy.load reads them
        (np.float32, (4,), np.float64),  # stored wider than the field: cast on assignment
        (np.bool_, (3,), np.bool_),
        (np.complex64, (2,), np.complex64),
    ],
)
def test_ndarray_columns_decode_at_once_as_numpy_load_value_by_value(dtype, shape, stored):
    """The one-copy path of NdarrayCodec columns gives exactly the value-by-value result, with
    ``out``/``rows`` scattering, a sliced column and large_binary."""
    import pyarrow as pa

    import pipeline.reader.decode as decode
    from pipeline.format import NdarrayCodec, UnischemaField

    field = UnischemaField("x", dtype, shape, NdarrayCodec(), False)
    spec = decode.spec_from_unischema(field)
    rng = np.random.default_rng(0)
    values = [(rng.standard_normal(shape) * 100).astype(stored) for _ in range(40)]
    for column in (
        pa.array([_npy(v) for v in values], pa.binary()).slice(3, 30),
        pa.array([_npy(v) for v in values], pa.large_binary()),
    ):
        rows = np.arange(len(column))[::-1].copy()
        fast = decode.decode_column(spec, field, column, np.zeros((len(column), *shape), dtype), rows)
        assert decode._npy_into(spec, column, np.empty_like(fast), rows)  # the one-copy path ran
        slow = np.zeros_like(fast)
        for row, blob in zip(rows, decode._binary_views(column), strict=True):
            slow[row] = field.codec.decode(field, blob)
        np.testing.assert_array_equal(fast, slow)
        assert fast.dtype == np.dtype(dtype)


def test_ndarray_columns_that_differ_decode_value_by_value():
    """Mixed dtypes or shapes, Fortran order, a shape other than the field's: no one-copy path;
    the value-by-value result (and its errors) as before."""
    import pyarrow as pa

    import pipeline.reader.decode as decode
    from pipeline.format import NdarrayCodec, UnischemaField

    field = UnischemaField("x", np.float32, (2, 3), NdarrayCodec(), False)
    spec = decode.spec_from_unischema(field)
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    for values in (
        [a, a.astype(np.float64)],  # another dtype: another length
        [a, a.astype(np.int32)],  # same length, other header
        [np.asfortranarray(a), np.asfortranarray(a + 1)],
    ):
        column = pa.array([_npy(v) for v in values], pa.binary())
        out = np.empty((2, 2, 3), np.float32)
        assert not decode._npy_into(spec, column, out, np.arange(2))
        np.testing.assert_array_equal(decode.decode_column(spec, field, column), np.stack(values))
    wrong = pa.array([_npy(np.zeros((3, 2), np.float32))], pa.binary())
    assert not decode._npy_into(spec, wrong, np.empty((1, 2, 3), np.float32), np.arange(1))
    with pytest.raises(ValueError):
        decode.decode_column(spec, field, wrong)


def test_image_decoding_matches_the_codec_and_stops_when_cancelled():
    import threading

    import pyarrow as pa

    from pipeline.format import CompressedImageCodec, UnischemaField
    from pipeline.reader.decode import ReadCancelled, decode_column, spec_from_unischema

    field = UnischemaField("image", np.uint8, (8, 8, 3), CompressedImageCodec("png"), False)
    images = [expected_row(i)["image"] for i in range(100)]
    column = pa.array([bytes(field.codec.encode(field, im)) for im in images], pa.binary())
    spec = spec_from_unischema(field)
    out = decode_column(spec, field, column)
    for i in (0, 57, 99):
        np.testing.assert_array_equal(out[i], field.codec.decode(field, column[i].as_py()))
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(ReadCancelled):
        decode_column(spec, field, column, cancel=cancel)


@pytest.mark.spark
def test_plain_parquet_written_by_spark(spark, tmp_path):
    from pyspark.sql import functions as F

    path = tmp_path / "spark_plain"
    df = spark.range(30).select(
        F.col("id"),
        (F.col("id") * 0.5).alias("x"),
        F.concat(F.lit("r"), F.col("id").cast("string")).alias("name"),
        F.sequence(F.lit(0), F.col("id") % 4).alias("seq"),
    )
    df.repartition(3).write.parquet(str(path))
    rows = read_all(str(path), workers=2)
    order = np.argsort(rows["id"])
    assert [rows["id"][i] for i in order] == list(range(30))
    assert [rows["name"][i] for i in order] == [f"r{i}" for i in range(30)]
    assert [rows["seq"][i].tolist() for i in order] == [list(range(i % 4 + 1)) for i in range(30)]
    assert rows["x"][order[7]] == pytest.approx(3.5)


def _jpeg_variants(h: int, w: int) -> list[bytes]:
    """Colour JPEGs as encoders write them: every chroma subsampling, progressive, optimized,
    odd sizes, several qualities; plus a grey and a CMYK JPEG (which take the OpenCV path)."""
    import io

    from PIL import Image

    rng = np.random.default_rng(7)
    blobs = []
    for i in range(24):
        smooth = np.kron(rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, 3)), np.ones((4, 4, 1)))[:h, :w]
        pixels = np.clip(smooth + rng.integers(-25, 25, (h, w, 3)), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(
            buf, "JPEG", quality=50 + 2 * i, subsampling=i % 3, progressive=bool(i % 2), optimize=i % 4 == 0
        )
        blobs.append(buf.getvalue())
    for mode in ("L", "CMYK"):
        buf = io.BytesIO()
        Image.fromarray(pixels).convert(mode).save(buf, "JPEG", quality=90)
        blobs.append(buf.getvalue())
    return blobs


@pytest.mark.parametrize("shape", [(64, 64), (37, 51)])
def test_jpeg_fast_path_gives_petastorms_pixels(shape):
    """Colour JPEGs decoded by libjpeg-turbo straight to RGB equal petastorm's cv2 decode."""
    import pyarrow as pa

    from pipeline.format import CompressedImageCodec, UnischemaField
    from pipeline.reader.decode import _jpeg_into, decode_column, spec_from_unischema

    h, w = shape
    field = UnischemaField("image", np.uint8, (h, w, 3), CompressedImageCodec("jpeg"), False)
    blobs = _jpeg_variants(h, w)
    colour, grey, cmyk = blobs[:-2], blobs[-2], blobs[-1]
    scratch = np.empty((h, w, 3), np.uint8)
    assert all(_jpeg_into(np.frombuffer(b, np.uint8), scratch) for b in colour)
    assert not _jpeg_into(np.frombuffer(grey, np.uint8), scratch)
    assert not _jpeg_into(np.frombuffer(cmyk, np.uint8), scratch)
    spec = spec_from_unischema(field)
    out = decode_column(spec, field, pa.array(colour, pa.binary()))
    for i, blob in enumerate(colour):
        np.testing.assert_array_equal(out[i], field.codec.decode(field, blob), err_msg=f"jpeg variant {i}")
    with pytest.raises(DatasetError, match="decodes to shape"):  # as without the fast path
        decode_column(spec, field, pa.array([grey], pa.binary()))


def test_threads_beyond_the_cores_read_but_do_not_decode_at_once(parquet_url, monkeypatch):
    """More threads than cores (a remote dataset): reading is not limited, decoding is -- at
    most ``cores`` items decode at once -- and the rows are the same as without the gate."""
    import threading
    import time

    import pipeline.reader.reader as reader_module
    import pipeline.reader.source as source_module
    from pipeline.reader.workers_cores import CoreCount

    expected = read_all(parquet_url, workers=6)
    state = {"now": 0, "most": 0}
    lock = threading.Lock()
    real_decode = source_module.decode_column

    def counting_decode(*args, **kwargs):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        time.sleep(0.002)  # long enough for the other threads to pile up
        try:
            return real_decode(*args, **kwargs)
        finally:
            with lock:
                state["now"] -= 1

    monkeypatch.setattr(source_module, "decode_column", counting_decode)
    monkeypatch.setattr(reader_module, "usable_cores", lambda: CoreCount(2, 2, None, 1))
    rows = read_all(parquet_url, workers=6)
    assert state["most"] == 2, state
    assert {k: [np.asarray(v).tolist() for v in vs] for k, vs in rows.items()} == {
        k: [np.asarray(v).tolist() for v in vs] for k, vs in expected.items()
    }


def test_a_folder_without_parquet_files_is_a_clean_error_by_url_and_on_a_filesystem(tmp_path):
    """The same listing rules and message whether the dataset is named by URL or given as a path
    on a filesystem: hidden and ``_``-prefixed files are not data."""
    import pyarrow.fs as pafs

    from pipeline.errors import DatasetError
    from pipeline.reader.config import ReadOptions
    from pipeline.reader.source import DatasetSource

    folder = tmp_path / "notes"
    (folder / "_staging").mkdir(parents=True)
    (folder / "_staging" / "part-0.parquet").write_bytes(b"PAR1")
    (folder / ".hidden.parquet").write_bytes(b"PAR1")
    (folder / "readme.txt").write_text("not data")
    for options in (ReadOptions(), ReadOptions(filesystem=pafs.LocalFileSystem())):
        with pytest.raises(DatasetError, match=f"no Parquet files under file://{folder}") as info:
            DatasetSource(str(folder), options)
        assert "root folder" in str(info.value)
