"""``convert table``'s two writers: Spark writes tables without images (one job, shapes and nulls
measured in it); rows a field cannot store send the table through the Python tasks instead."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

import pipeline
from pipeline.dataset import read_provenance, read_unischema
from pipeline.errors import InputError
from tests.test_convert_table import read_all

pytestmark = pytest.mark.spark

ARRAYS = (
    "SELECT id, id * 0.5D AS x, array(CAST(id AS FLOAT), 1.0F) AS fixed, "
    "sequence(0, CAST(id % 3 AS INT)) AS ragged, array(array(id, 1), array(2, id)) AS grid, "
    "named_struct('a', CAST(id AS SMALLINT), 'b', CAST(id AS STRING)) AS st FROM range(6)"
)


def jobs_of(spark, fn):
    """Run ``fn``; returns (its result, how many Spark jobs started meanwhile).

    Counted by the scheduler's job ids: the conversion sets its own job group.
    """
    scheduler = spark.sparkContext._jsc.sc().dagScheduler()

    def next_id() -> int:
        value = scheduler.nextJobId()  # an AtomicInteger, or its value on newer Spark
        return int(value if isinstance(value, int) else value.get())

    before = next_id()
    out = fn()
    return out, next_id() - before


def test_spark_writes_in_one_job_and_measures_shapes_in_it(spark, tmp_path):
    df = spark.sql(ARRAYS).repartition(3)

    summary, jobs = jobs_of(spark, lambda: pipeline.convert_dataframe(df, str(tmp_path / "j"), float32=True))
    assert summary["extra"]["written_by"] == "jvm" and summary["rows"] == 6
    assert 1 <= jobs <= 2  # the write (plus the repartition's shuffle stage job on some versions)
    fields = read_unischema(summary["output"]).fields
    assert (fields["fixed"].shape, fields["ragged"].shape, fields["grid"].shape) == ((2,), (None,), (2, 2))
    got = read_all(summary["output"])
    by_id = sorted(range(6), key=lambda r: got["id"][r].item())
    assert [got["x"][r].item() for r in by_id] == [i * 0.5 for i in range(6)]
    assert got["x"].numpy().dtype.name == "float32" and got["st_a"].numpy().dtype.name == "int16"
    assert [got["ragged_lengths"][r].item() for r in by_id] == [i % 3 + 1 for i in range(6)]
    assert [got["grid"][r].tolist() for r in by_id] == [[[i, 1], [2, i]] for i in range(6)]
    assert [got["st_b"][r] for r in by_id] == [str(i) for i in range(6)]
    assert sorted(p.name for p in (tmp_path / "j").iterdir()) == [
        "_common_metadata",
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    assert read_provenance(summary["output"])["counts"]["files"] == 3
    # floats are written without a dictionary (parquet-java's attempt costs a sixth of the write
    # on continuous values), other columns keep it
    two = spark.range(100).selectExpr("id % 2 AS k", "CAST(id % 2 AS DOUBLE) AS c", "array(0.5F) AS a")
    out = pipeline.convert_dataframe(two.coalesce(1), str(tmp_path / "e"))["output"]
    footer = pq.read_metadata(out.removeprefix("file://") + "/part-00000.parquet").row_group(0)
    encodings = {footer.column(j).path_in_schema: " ".join(footer.column(j).encodings) for j in range(3)}
    assert "DICTIONARY" in encodings["k"], encodings
    assert "DICTIONARY" not in encodings["c"] + encodings["a.list.element"], encodings


def test_rows_a_field_cannot_store_go_through_python(spark, tmp_path):
    df = spark.sql(
        "SELECT * FROM VALUES (1, array(1.0D, 2.0D)), (2, array(3.0D, NULL)), (3, array(4.0D, 5.0D)) "
        "AS t(id, a)"
    ).coalesce(1)
    with pytest.raises(InputError, match=r"partition 0 row 1.*holds a null inside the array"):
        pipeline.convert_dataframe(df, str(tmp_path / "f"))
    assert not (tmp_path / "f").exists()
    summary = pipeline.convert_dataframe(df, str(tmp_path / "s"), on_error="skip")
    assert summary["extra"]["written_by"] == "python-after-jvm"
    assert (summary["rows"], summary["skipped"]) == (2, 1)
    assert read_unischema(summary["output"]).fields["a"].shape == (2,)
    assert read_all(summary["output"])["a"].tolist() == [[1.0, 2.0], [4.0, 5.0]]
    nan = pipeline.convert_dataframe(
        spark.sql("SELECT CAST(NULL AS DOUBLE) AS x, 1 AS id"), str(tmp_path / "n"), null_floats="nan"
    )
    assert nan["extra"]["written_by"] == "jvm"


def test_jagged_nested_arrays_fail_and_empty_tables_write_nothing(spark, tmp_path):
    jagged = spark.sql("SELECT array(array(1, 2), array(3)) AS g")
    with pytest.raises(InputError, match=r"not rectangular: lengths at depth 2 range from 1 to 2"):
        pipeline.convert_dataframe(jagged, str(tmp_path / "g"))
    with pytest.raises(InputError, match="no rows were converted"):
        pipeline.convert_dataframe(spark.range(0), str(tmp_path / "e"))
    assert not (tmp_path / "g").exists() and not (tmp_path / "e").exists()
    assert not [p for p in tmp_path.iterdir() if ".staging-" in p.name]


def test_petastorm_reads_what_spark_wrote(spark, tmp_path):
    make_reader = pytest.importorskip("petastorm").make_reader
    summary = pipeline.convert_dataframe(spark.sql(ARRAYS).drop("ragged", "grid"), str(tmp_path / "p"))
    assert summary["extra"]["written_by"] == "jvm"
    with make_reader(summary["output"], num_epochs=1, shuffle_row_groups=False, workers_count=1) as reader:
        rows = sorted(reader, key=lambda r: r.id)
    assert [r.id for r in rows] == list(range(6)) and rows[2].fixed.tolist() == [2.0, 1.0]
    assert [r.st_b for r in rows] == [str(i) for i in range(6)]


EMPTIES = (
    "SELECT * FROM VALUES (1, 1.0D, array(1.0F, 2.0F)), (2, 2.0D, array()), (3, 3.0D, array(5.0F)) "
    "AS t(id, x, a)"
)


def nullable(df):
    """``df`` with every column nullable in the schema (the values stay): the nulls are checked."""
    return df.selectExpr(*[f"IF(id > 0, {c}, NULL) AS {c}" for c in df.columns])


def test_nulls_come_from_the_written_footers_and_empty_arrays_are_not_nulls(spark, tmp_path):
    # a list column's footer null count also counts empty arrays: they are measured apart
    good = nullable(spark.sql(EMPTIES)).coalesce(1)
    assert all(f.nullable for f in good.schema.fields)
    summary, jobs = jobs_of(spark, lambda: pipeline.convert_dataframe(good, str(tmp_path / "g")))
    assert summary["extra"]["written_by"] == "jvm" and jobs == 1  # the write: no check job
    assert read_all(summary["output"])["a_lengths"].tolist() == [2, 0, 1]
    # one empty array and one null array: the footers' two nulls less one empty array
    null_array = spark.sql(EMPTIES + " UNION ALL SELECT 4, 4.0D, CAST(NULL AS ARRAY<FLOAT>)").coalesce(1)
    with pytest.raises(InputError, match=r"column 'a' \(array<float>\) is null"):
        pipeline.convert_dataframe(null_array, str(tmp_path / "n"))
    inside = spark.sql(EMPTIES + " UNION ALL SELECT 4, 4.0D, array(CAST(NULL AS FLOAT))").coalesce(1)
    skipped = pipeline.convert_dataframe(inside, str(tmp_path / "i"), on_error="skip")
    assert (skipped["extra"]["written_by"], skipped["rows"], skipped["skipped"]) == ("python-after-jvm", 3, 1)
    scalar = spark.sql(EMPTIES + " UNION ALL SELECT 4, CAST(NULL AS DOUBLE), array(1.0F)").coalesce(1)
    with pytest.raises(InputError, match=r"column 'x' \(double\) is null"):
        pipeline.convert_dataframe(scalar, str(tmp_path / "s"))
    assert not [p for p in tmp_path.iterdir() if p.name in ("n", "s")]


def test_footers_without_null_counts_are_checked_in_one_more_job(spark, tmp_path):
    hadoop = spark.sparkContext._jsc.hadoopConfiguration()
    hadoop.set("parquet.column.statistics.enabled", "false")
    try:
        good = nullable(spark.sql(EMPTIES)).coalesce(1)
        summary, jobs = jobs_of(spark, lambda: pipeline.convert_dataframe(good, str(tmp_path / "g")))
        assert summary["extra"]["written_by"] == "jvm" and jobs > 1  # the write, then the count
        inside = spark.sql(EMPTIES + " UNION ALL SELECT 4, 4.0D, array(CAST(NULL AS FLOAT))").coalesce(1)
        with pytest.raises(InputError, match=r"partition 0 row 3.*holds a null inside the array"):
            pipeline.convert_dataframe(inside, str(tmp_path / "i"))
    finally:
        hadoop.unset("parquet.column.statistics.enabled")
