"""``convert table``'s two writers: Spark writes tables without images (one job, shapes and nulls
measured in it); rows a field cannot store send the table through the Python tasks instead."""

from __future__ import annotations

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


def jobs_of(spark, fn, group: str):
    """Run ``fn`` in its own job group; returns (its result, the Spark job ids it started)."""
    sc = spark.sparkContext
    sc.setJobGroup(group, group)
    try:
        out = fn()
    finally:
        sc._jsc.clearJobGroup()
    return out, list(sc.statusTracker().getJobIdsForGroup(group))


def test_spark_writes_in_one_job_and_measures_shapes_in_it(spark, tmp_path):
    df = spark.sql(ARRAYS).repartition(3)

    summary, jobs = jobs_of(
        spark, lambda: pipeline.convert_dataframe(df, str(tmp_path / "j"), float32=True), "paths-one-job"
    )
    assert summary["extra"]["written_by"] == "jvm" and summary["rows"] == 6
    assert len(jobs) <= 2  # the write (plus the repartition's shuffle stage job on some versions)
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
