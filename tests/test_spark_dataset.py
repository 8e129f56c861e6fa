"""``pipeline.spark_dataset``: reuse without a Spark job, invalidation, concurrent processes, ``pipeline cache``."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from contextlib import redirect_stdout
from pathlib import Path

import pytest

import pipeline
from pipeline.convert.handle import cache_key
from tests.conftest import REPO
from tests.test_convert_table import no_jobs, read_all

pytestmark = pytest.mark.spark

# What a restarted notebook runs: a new process, its own SparkSession, the same table.
CELL = textwrap.dedent(
    """
    import json, sys, time
    import pipeline
    from pipeline.spark import SparkConfig, spark_session

    table, cache, start_at = sys.argv[1], sys.argv[2], float(sys.argv[3])
    with spark_session(SparkConfig(master="local[1]", app_name="cell")) as spark:
        df = spark.read.parquet(table).where("id % 2 = 0").selectExpr("id", "x * 2 AS x")
        while time.time() < start_at:  # both processes call spark_dataset at the same moment
            time.sleep(0.01)
        sc = spark.sparkContext
        sc.setJobGroup("cell", "cell")
        ds = pipeline.spark_dataset(df, cache_dir=cache, float32=True)
        jobs = list(sc.statusTracker().getJobIdsForGroup("cell"))
        print(json.dumps({"url": ds.url, "rows": ds.rows, "converted": ds.converted, "jobs": len(jobs)}))
    """
)


def _table(spark, path: Path, n: int = 40) -> None:
    spark.range(n).selectExpr("id", "id * 0.5 AS x").coalesce(2).write.mode("overwrite").parquet(str(path))


@pytest.mark.slow
def test_two_new_processes_convert_once_and_the_handle_reuses_it(spark, tmp_path):
    import time

    table, cache = tmp_path / "table", tmp_path / "cache"
    _table(spark, table)
    script = tmp_path / "cell.py"
    script.write_text(CELL)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start_at = str(time.time() + 25)  # after both Spark sessions have started
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(table), str(cache), start_at],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-3000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(o["converted"] for o in outs) == [False, True]
    assert outs[0]["url"] == outs[1]["url"] and outs[0]["rows"] == outs[1]["rows"] == 20
    assert [o["jobs"] for o in outs if not o["converted"]] == [0]  # the loser ran no Spark job
    assert len([p for p in cache.iterdir() if not p.name.startswith(".")]) == 1
    assert not [p for p in cache.iterdir() if ".staging-" in p.name]

    # this process (another session, same query) reuses it without a Spark job
    df = spark.read.parquet(str(table)).where("id % 2 = 0").selectExpr("id", "x * 2 AS x")
    ds, jobs = no_jobs(spark, lambda: pipeline.spark_dataset(df, cache_dir=str(cache), float32=True))
    assert (ds.converted, jobs, ds.url, ds.rows) == (False, [], outs[0]["url"], 20)
    with ds.open_loader(batch_size=100, shuffle=False, num_epochs=1) as loader:
        batch = next(iter(loader))
    rows = sorted(
        zip(batch["id"].tolist(), batch["x"].tolist(), strict=True)
    )  # Spark reads bigger files first
    assert rows == [(i, float(i)) for i in range(0, 40, 2)]


def test_changes_give_a_new_dataset_and_delete_converts_again(spark, tmp_path):
    table, cache = tmp_path / "table", str(tmp_path / "cache")
    _table(spark, table, 10)
    first = pipeline.spark_dataset(spark.read.parquet(str(table)), cache_dir=cache)
    assert first.converted and first.rows == 10
    again = pipeline.spark_dataset(spark.read.parquet(str(table)), cache_dir=cache)
    assert (again.converted, again.url) == (False, first.url)

    df = spark.read.parquet(str(table))
    keys = {cache_key(df, {})[0], cache_key(df.where("id > 2"), {})[0], cache_key(df, {"float32": True})[0]}
    keys |= {cache_key(df.selectExpr("id AS other", "x"), {})[0], cache_key(df, {"row_group_mb": 1})[0]}
    assert first.key in keys and len(keys) == 5

    _table(spark, table, 12)  # the table is rewritten: new files
    changed = pipeline.spark_dataset(spark.read.parquet(str(table)), cache_dir=cache)
    assert changed.converted and changed.rows == 12 and changed.key != first.key
    assert sorted(read_all(changed.url)["id"].tolist()) == list(range(12))

    changed.delete()
    assert not changed.path.exists()
    assert pipeline.spark_dataset(spark.read.parquet(str(table)), cache_dir=cache).converted

    spark.conf.set("spark.pipeline.cacheDir", str(tmp_path / "from_conf"))
    try:
        via_conf = pipeline.spark_dataset(spark.range(3))
    finally:
        spark.conf.unset("spark.pipeline.cacheDir")
    assert via_conf.path.parent == tmp_path / "from_conf" and via_conf.rows == 3


def test_pipeline_cache_list_and_clear(spark, tmp_path):
    from pipeline.cli import main

    cache = str(tmp_path / "cache")
    a = pipeline.spark_dataset(spark.range(4), cache_dir=cache)
    b = pipeline.spark_dataset(spark.range(5), cache_dir=cache)

    def run(*argv: str) -> dict:
        out = io.StringIO()
        with redirect_stdout(out):
            assert main(["cache", *argv, "--cache-dir", cache, "--json"]) == 0
        return json.loads(out.getvalue().strip().splitlines()[-1])

    listed = run("list")
    assert sorted((e["key"], e["rows"]) for e in listed["entries"]) == sorted([(a.key, 4), (b.key, 5)])
    assert all(e["bytes"] > 0 for e in listed["entries"])
    assert run("clear", a.key)["removed"] == [a.key]
    assert [e["key"] for e in run("list")["entries"]] == [b.key]
    assert run("clear")["removed"] == [b.key] and run("list")["entries"] == []


CONNECT = textwrap.dedent(
    """
    import json, sys
    from pyspark.sql import SparkSession
    import pipeline
    from pipeline.errors import PipelineError

    spark = SparkSession.builder.remote("local[1]").getOrCreate()
    df = spark.range(5).selectExpr("id", "id * 0.5 AS x")
    out = {"module": type(df).__module__}
    for name, call in [
        ("convert", lambda: pipeline.convert_dataframe(df, sys.argv[1])),
        ("handle", lambda: pipeline.spark_dataset(df, cache_dir=sys.argv[2])),
    ]:
        try:
            call()
            out[name] = "converted"
        except PipelineError as exc:
            out[name] = str(exc)
    spark.stop()
    print(json.dumps(out))
    """
)


@pytest.mark.slow
def test_a_spark_connect_dataframe_is_refused_before_any_work(tmp_path):
    # needs pyspark's connect extra (grpcio, grpcio-status, googleapis-common-protos, zstandard)
    pytest.importorskip("grpc_status", reason="pyspark[connect] is not installed")
    pytest.importorskip("zstandard", reason="pyspark[connect] is not installed")
    proc = subprocess.run(
        [sys.executable, "-c", CONNECT, str(tmp_path / "d"), str(tmp_path / "cache")],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["module"].startswith("pyspark.sql.connect")
    for name in ("convert", "handle"):
        assert "needs a classic SparkSession" in out[name] and "Spark Connect" in out[name]
    assert not (tmp_path / "d").exists() and not (tmp_path / "cache").exists()
