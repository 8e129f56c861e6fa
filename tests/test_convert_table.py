"""``convert table`` / ``convert_dataframe``: every type rule on real Spark values, read back by open_loader."""

from __future__ import annotations

import datetime as dt
import decimal
import io
import json
import math
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest

import pipeline
from pipeline.dataset import read_provenance, read_unischema
from pipeline.errors import DatasetError, InputError

pytestmark = pytest.mark.spark

UTC = dt.timezone.utc
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)


def _micros(t: dt.datetime) -> int:
    delta = t - EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def read_all(url: str) -> dict:
    """Every row of the dataset in stored order, as one batch of the loader."""
    with pipeline.open_loader(url, batch_size=1000, shuffle=False, num_epochs=1, workers=1) as loader:
        batches = list(loader)
    assert len(batches) == 1
    return batches[0]


def no_jobs(spark, fn):
    """Run ``fn`` and return (its result, the Spark job ids it started)."""
    sc = spark.sparkContext
    sc.setJobGroup("probe-no-jobs", "probe")
    try:
        out = fn()
    finally:
        sc._jsc.clearJobGroup()
    return out, list(sc.statusTracker().getJobIdsForGroup("probe-no-jobs"))


TIMES = [
    dt.datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC),
    dt.datetime(1, 1, 1, tzinfo=UTC),
    dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    dt.datetime(1969, 12, 31, 23, 59, 59, 500000, tzinfo=UTC),
]
DATES = [dt.date(1970, 1, 2), dt.date(1, 1, 1), dt.date(9999, 12, 31), dt.date(1969, 12, 31)]


@pytest.fixture(scope="module")
def all_types(spark):
    """A DataFrame with one column per rule (4 rows, 2 partitions) and its expected stored values."""
    from pyspark.ml.linalg import Vectors, VectorUDT
    from pyspark.mllib.linalg import Vectors as OldVectors
    from pyspark.mllib.linalg import VectorUDT as OldVectorUDT
    from pyspark.sql import types as T

    schema = T.StructType(
        [
            T.StructField("b", T.BooleanType()),
            T.StructField("i8", T.ByteType()),
            T.StructField("i16", T.ShortType()),
            T.StructField("i32", T.IntegerType()),
            T.StructField("i64", T.LongType()),
            T.StructField("f", T.FloatType()),
            T.StructField("d", T.DoubleType()),
            T.StructField("dec", T.DecimalType(12, 3)),
            T.StructField("day", T.DateType()),
            T.StructField("ts", T.TimestampType()),
            T.StructField("s", T.StringType()),
            T.StructField("bin", T.BinaryType()),
            T.StructField("fixed", T.ArrayType(T.FloatType())),
            T.StructField("ragged", T.ArrayType(T.LongType())),
            T.StructField("grid", T.ArrayType(T.ArrayType(T.DoubleType()))),
            T.StructField("vec", VectorUDT()),
            T.StructField("old", OldVectorUDT()),
            T.StructField("tags", T.ArrayType(T.StringType())),
            T.StructField(
                "st", T.StructType([T.StructField("x", T.IntegerType()), T.StructField("y", T.StringType())])
            ),
        ]
    )
    big = 2**63 - 1
    rows = [
        (True, 127, 32767, 2**31 - 1, big, 1.5, 2.25, decimal.Decimal("1.125"), DATES[0], TIMES[0], "héllo", b"\x00\x01",
         [1.0, 2.0], [1, 2, 3], [[1.0, 2.0], [3.0, 4.0]], Vectors.dense([1.0, 2.0, 3.0]), OldVectors.dense([1.0, 0.0]),
         ["a", "b"], (1, "x")),
        (False, -128, -32768, -(2**31), -big - 1, float("nan"), float("-inf"), decimal.Decimal("-999999999.999"),
         DATES[1], TIMES[1], None, None, [3.0, 4.0], [], [[5.0, 6.0], [7.0, 8.0]],
         Vectors.sparse(3, [1], [9.0]), OldVectors.sparse(2, [0], [4.0]), [], (2, None)),
        (True, 0, 0, 0, 0, float("inf"), float("nan"), decimal.Decimal("0"), DATES[2], TIMES[2], "", b"",
         [5.0, 6.0], [7], [[0.0, 0.0], [0.0, 0.0]], Vectors.sparse(3, [], []), OldVectors.dense([0.5, 0.5]),
         None, (3, "z")),
        (False, 1, 1, 1, 1, -0.0, 1e308, decimal.Decimal("0.001"), DATES[3], TIMES[3], "z", b"\xff",
         [7.0, 8.0], [4, 5], [[1.0, 1.0], [1.0, 1.0]], Vectors.dense([0.0, 0.0, 1.0]), OldVectors.dense([1.0, 1.0]),
         ["c"], (4, "w")),
    ]  # fmt: skip
    df = spark.createDataFrame(rows, schema)  # 2 partitions (local[2]), rows in order
    return df, rows


def test_every_rule_reads_back_equal(all_types, tmp_path):
    df, rows = all_types
    summary = pipeline.convert_dataframe(df, str(tmp_path / "ds"))
    assert (summary["rows"], summary["skipped"]) == (4, 0)
    assert summary["output"] == f"file://{tmp_path / 'ds'}"
    assert set(summary) >= {"rows", "skipped", "output", "seconds"}
    got = read_all(summary["output"])
    col = list(zip(*rows, strict=True))

    assert got["b"].tolist() == list(col[0])
    for i, (name, dtype) in enumerate(
        [("i8", np.int8), ("i16", np.int16), ("i32", np.int32), ("i64", np.int64)], start=1
    ):
        assert got[name].numpy().dtype == dtype and got[name].tolist() == list(col[i]), name
    np.testing.assert_array_equal(got["f"].numpy(), np.array(col[5], dtype=np.float32))
    assert got["f"].numpy().dtype == np.float32 and got["d"].numpy().dtype == np.float64
    np.testing.assert_array_equal(got["d"].numpy(), np.array(col[6]))
    assert got["dec"].tolist() == [float(v) for v in col[7]]
    assert got["day"].tolist() == [(d - dt.date(1970, 1, 1)).days for d in DATES]
    assert got["ts"].tolist() == [_micros(t) for t in TIMES]
    assert got["ts"].tolist()[1] == -62135596800000000  # 0001-01-01T00:00:00Z
    assert got["s"] == ["héllo", None, "", "z"] and got["bin"] == [b"\x00\x01", None, b"", b"\xff"]
    assert tuple(got["fixed"].shape) == (4, 2) and got["fixed"].numpy().dtype == np.float32
    assert got["fixed"].tolist() == list(col[12])
    assert got["ragged_lengths"].tolist() == [3, 0, 1, 2]
    assert [r[:n] for r, n in zip(got["ragged"].tolist(), [3, 0, 1, 2], strict=True)] == list(col[13])
    assert tuple(got["grid"].shape) == (4, 2, 2) and got["grid"].tolist() == list(col[14])
    assert got["vec"].tolist() == [v.toArray().tolist() for v in col[15]]
    assert got["vec"].numpy().dtype == np.float64
    assert got["old"].tolist() == [v.toArray().tolist() for v in col[16]]
    assert got["tags"] == [["a", "b"], [], None, ["c"]]
    assert got["st_x"].tolist() == [1, 2, 3, 4] and got["st_y"] == ["x", None, "z", "w"]

    fields = read_unischema(summary["output"]).fields
    assert (
        fields["fixed"].shape == (2,) and fields["ragged"].shape == (None,) and fields["grid"].shape == (2, 2)
    )
    assert fields["s"].nullable and not fields["i64"].nullable
    meta = read_provenance(summary["output"])
    assert meta["kind"] == "table" and len(meta["plan_fingerprint"]) == 64
    assert meta["columns"]["ts"]["unit"] == "microseconds since 1970-01-01 UTC"
    assert meta["columns"]["day"]["unit"] == "days since 1970-01-01"
    assert meta["columns"]["st_x"]["from"] == "st.x"


def test_float32_and_session_time_zone(all_types, spark, tmp_path):
    df, rows = all_types
    spark.conf.set("spark.sql.session.timeZone", "America/New_York")
    try:
        summary = pipeline.convert_dataframe(
            df.select("d", "dec", "fixed", "grid", "vec", "ts"), str(tmp_path / "f"), float32=True
        )
    finally:
        spark.conf.set("spark.sql.session.timeZone", "UTC")
    got = read_all(summary["output"])
    for name in ("d", "dec", "grid", "vec"):
        assert got[name].numpy().dtype == np.float32, name
    with np.errstate(over="ignore"):  # 1e308 -> inf, as the cast stores it
        expected = np.array([r[6] for r in rows], dtype=np.float32)
    np.testing.assert_array_equal(got["d"].numpy(), expected)
    assert got["ts"].tolist() == [_micros(t) for t in TIMES]  # instants: the session zone changes nothing


def test_odd_column_names_and_ragged_outer_arrays(spark, tmp_path):
    df = spark.sql(
        "SELECT * FROM VALUES (1, named_struct('in.ner', 2.0D), array(array(1, 2))), "
        "(2, named_struct('in.ner', 3.0D), array(array(3, 4), array(5, 6))) AS t(`a.b`, `s t`, g)"
    )
    summary = pipeline.convert_dataframe(df, str(tmp_path / "odd"), partitions=1)
    fields = read_unischema(summary["output"]).fields
    assert set(fields) == {"a.b", "s t_in.ner", "g"} and fields["g"].shape == (None, 2)
    got = pipeline.open_dataset(summary["output"])
    assert [got[i]["g"].tolist() for i in range(2)] == [[[1, 2]], [[3, 4], [5, 6]]]
    assert got[1]["s t_in.ner"] == 3.0


def test_timestamp_ntz_is_read_as_utc(spark, tmp_path):
    df = spark.sql(
        "SELECT TIMESTAMP_NTZ'2020-01-02 03:04:05.000006' AS t, TIMESTAMP_NTZ'0001-01-01 00:00:00' AS lo"
    )
    got = read_all(pipeline.convert_dataframe(df, str(tmp_path / "ntz"))["output"])
    assert got["t"].tolist() == [_micros(dt.datetime(2020, 1, 2, 3, 4, 5, 6, tzinfo=UTC))]
    assert got["lo"].tolist() == [-62135596800000000]


NULLS = "SELECT * FROM VALUES (1, 1.0D, array(1.0D)), (2, NULL, array(2.0D)), (3, 3.0D, NULL), (4, 4.0D, array(CAST(NULL AS DOUBLE))) AS t(id, x, a)"


def test_null_in_numeric_column_fails_naming_the_column(spark, tmp_path):
    df = spark.sql(NULLS).coalesce(1)
    with pytest.raises(InputError, match=r"column 'x' \(double\) is null.*--on-error skip"):
        pipeline.convert_dataframe(df, str(tmp_path / "n"))
    assert not (tmp_path / "n").exists()


def test_null_rows_are_skipped_and_listed(spark, tmp_path):
    df = spark.sql(NULLS).coalesce(1)
    summary = pipeline.convert_dataframe(df, str(tmp_path / "n"), on_error="skip")
    assert (summary["rows"], summary["skipped"]) == (1, 3)
    report = Path(summary["output"].removeprefix("file://")) / "_skipped.jsonl"
    records = [json.loads(line) for line in report.read_text().splitlines()]
    reasons = sorted(r["reason"] for r in records)
    assert reasons == [
        "column 'a' (array<double>) holds a null inside the array",
        "column 'a' (array<double>) is null",
        "column 'x' (double) is null",
    ]
    assert read_all(summary["output"])["id"].tolist() == [1]
    nan = pipeline.convert_dataframe(df.where("id <= 2"), str(tmp_path / "nan"), null_floats="nan")
    x = read_all(nan["output"])["x"].tolist()
    assert x[0] == 1.0 and math.isnan(x[1])


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELECT map('a', 1) AS m, 1 AS id", r"column 'm' has type map<string,int>"),
        ("SELECT named_struct('inner', map('a', 1)) AS s", r"column 's.inner' has type map<string,int>"),
        ("SELECT INTERVAL '1' DAY AS gap", r"column 'gap' has type interval day"),
        ("SELECT array(named_struct('a', 1)) AS xs", r"column 'xs' has type array<struct<a:int>>"),
        ("SELECT array(DATE'2020-01-01') AS ds", r"arrays of date have no rule"),
        ("SELECT named_struct('b', 1) AS a, 2 AS a_b", r"columns 'a.b' and 'a_b' both become field 'a_b'"),
    ],
)
def test_types_without_a_rule_fail_before_any_work(spark, tmp_path, sql, message):
    df = spark.sql(sql)

    def attempt() -> str:
        with pytest.raises(InputError, match=message) as info:
            pipeline.convert_dataframe(df, str(tmp_path / "x"))
        return str(info.value)

    text, jobs = no_jobs(spark, attempt)
    assert "HINT" in text and jobs == [] and not (tmp_path / "x").exists()


def test_decimal_error_option_and_jagged_nested_arrays(spark, tmp_path):
    with pytest.raises(InputError, match=r"column 'p' is decimal\(3,2\); decimals are refused"):
        pipeline.convert_dataframe(spark.sql("SELECT 1.25BD AS p"), str(tmp_path / "d"), decimal="error")
    jagged = spark.sql("SELECT array(array(1, 2), array(3)) AS g")
    with pytest.raises(
        InputError, match=r"column 'g' .* not rectangular: lengths at depth 2 range from 1 to 2"
    ):
        pipeline.convert_dataframe(jagged, str(tmp_path / "g"))
    with pytest.raises(Exception, match=r"unknown option\(s\) colour"):
        pipeline.convert_dataframe(jagged, str(tmp_path / "g"), colour="red")


def _png(color: tuple[int, int, int], size: tuple[int, int]) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size[1], size[0]), color).save(buf, format="PNG")
    return buf.getvalue()


def test_image_column_follows_the_convert_images_rules(spark, tmp_path):
    from pipeline.convert.imaging import decode_rgb, fit_image

    images = [_png((255, 0, 0), (10, 20)), _png((0, 0, 255), (8, 8)), b"not an image"]
    df = spark.createDataFrame([(i, b) for i, b in enumerate(images)], "id int, content binary").coalesce(1)
    with pytest.raises(InputError, match=r"bad input: DataFrame \(record partition 0 row 2\): not an image"):
        pipeline.convert_dataframe(df, str(tmp_path / "fail"), image_column="content", image_size=(6, 6))
    summary = pipeline.convert_dataframe(
        df, str(tmp_path / "img"), image_column="content", image_size=(6, 6), image_fit="pad", on_error="skip"
    )
    assert (summary["rows"], summary["skipped"]) == (2, 1)
    got = read_all(summary["output"])
    assert tuple(got["content"].shape) == (2, 6, 6, 3) and got["id"].tolist() == [0, 1]
    for row, data in enumerate(images[:2]):
        expected = np.asarray(fit_image(decode_rgb(data), (6, 6), "pad"))
        np.testing.assert_array_equal(got["content"][row].numpy(), expected)
    field = read_unischema(summary["output"]).fields["content"]
    assert field.shape == (6, 6, 3) and field.codec.image_codec == "png"


def test_image_source_struct(spark, tmp_path):
    raw = bytes([0, 0, 255] * 4)  # BGR red, 2x2
    df = spark.sql(
        f"SELECT named_struct('origin', 'x', 'height', 2, 'width', 2, 'nChannels', 3, 'mode', 16, "
        f"'data', unhex('{raw.hex()}')) AS image"
    )
    got = read_all(pipeline.convert_dataframe(df, str(tmp_path / "s"), image_column="image")["output"])
    assert got["image"].numpy().tolist() == [[[[255, 0, 0]] * 2] * 2]


def test_cli_table_sql_and_parquet(spark, tmp_path):
    from pipeline.cli import main

    spark.range(5).selectExpr("id", "id * 0.5 AS x").write.parquet(str(tmp_path / "pq"))
    spark.read.parquet(str(tmp_path / "pq")).createOrReplaceTempView("table_cli_view")
    runs = {
        "table": ["table_cli_view"],
        "sql": ["--sql", "SELECT id, x FROM table_cli_view WHERE id < 3"],
        "parquet": ["--parquet", str(tmp_path / "pq")],
    }
    for name, source in runs.items():
        out = io.StringIO()
        with redirect_stdout(out):
            code = main(["convert", "table", *source, str(tmp_path / name), "--float32", "--json"])
        assert code == 0, name
        result = json.loads(out.getvalue().strip().splitlines()[-1])
        assert (
            result["rows"] == (3 if name == "sql" else 5) and result["output"] == f"file://{tmp_path / name}"
        )
        assert read_all(result["output"])["x"].numpy().dtype == np.float32
        assert read_provenance(result["output"])["source_kind"] == name
    err = io.StringIO()
    from contextlib import redirect_stderr

    with redirect_stderr(err):
        assert main(["convert", "table", "no_such_table_xyz", str(tmp_path / "none")]) == 2
    assert "cannot read table 'no_such_table_xyz'" in err.getvalue()
    with redirect_stderr(err), pytest.raises(SystemExit):
        main(["convert", "table", "t", str(tmp_path / "x"), "--sql", "--parquet"])
    with pytest.raises(DatasetError, match="already exists"):
        pipeline.convert_dataframe(spark.table("table_cli_view"), str(tmp_path / "table"))
