"""DataFrame -> training batches: ``pipeline.spark_dataset`` vs petastorm's ``make_spark_converter``.

    .venv/bin/python benchmarks/bench_table.py                       # 1,000,000 rows, local[2]
    .venv/bin/python benchmarks/bench_table.py --rows 20000 --json   # a quick check

One generated table (written once as Parquet under ``--work``): ``id``, an int ``label``,
``--features`` float64 columns and an ``array<float>`` column of ``--array-len`` values. Both
sides start from ``spark.read.parquet(table)`` and, in one run, report:

* conversion seconds: ``spark_dataset(df)`` (a cold cache) vs ``make_spark_converter(df)``
  (petastorm's default: doubles cast to float32; ours is run with ``float32=True`` to match),
  each after a warm-up conversion of 1,000 rows in its own Spark session; each side with its
  defaults (ours: snappy, 16 MB row groups; petastorm's: uncompressed, 32 MB), and each side's
  PySpark (petastorm's environment pins an older one);
* the executor CPU seconds of each conversion (Spark's status store), and the CPU seconds of the
  whole local JVM meanwhile (tasks, JIT compilers, GC, driver; ``/proc``): on a loaded machine
  they move much less than the wall time;
* loader samples/s over one epoch at ``--batch-size``: ``handle.open_loader`` vs
  ``converter.make_torch_dataloader(num_epochs=1)``, each reading every column;
* the second, cached ``spark_dataset(df)`` call of a new Python process (a restarted notebook),
  and of the same process.

Petastorm runs in its own environment (``--petastorm-python``, default
``.venv-petastorm/bin/python``, else ``.venv/bin/python``) through a subprocess with the same
Spark master; ``--no-petastorm`` leaves it out.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def jvm_cpu_s(spark) -> float | None:
    """CPU seconds of the whole Spark JVM so far, every thread (tasks, JIT compilers, GC, driver):
    ``/proc/<pid>/stat`` of the local-mode JVM, ``None`` elsewhere. Also run on petastorm's side."""
    import os

    try:
        pid = spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid()
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except Exception:
        return None


def executor_cpu_s(spark) -> float | None:
    """CPU seconds of every Spark task so far (the status store; steadier than wall time on a
    loaded machine), ``None`` where this Spark does not answer. Also run on petastorm's side."""
    try:
        store = spark.sparkContext._jsc.sc().statusStore()
        defaults = [getattr(store, f"stageList$default${k}")() for k in (2, 3, 4, 5)]
        stages = store.stageList(None, *defaults)
        return sum(stages.apply(i).executorCpuTime() for i in range(stages.length())) / 1e9
    except Exception:
        return None


PETASTORM_SIDE = (
    inspect.getsource(jvm_cpu_s)
    + inspect.getsource(executor_cpu_s)
    + textwrap.dedent(
        """
    import json, sys, time
    import pyspark
    from pyspark.sql import SparkSession
    from petastorm.spark import SparkDatasetConverter, make_spark_converter

    table, cache, master, batch_size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    spark = (SparkSession.builder.master(master).config("spark.ui.enabled", "false")
             .config("spark.driver.memory", "4g")
             .config(SparkDatasetConverter.PARENT_CACHE_DIR_URL_CONF, "file://" + cache).getOrCreate())
    make_spark_converter(spark.range(1000).selectExpr("id", "rand() AS x")).delete()  # warm-up, as ours
    df = spark.read.parquet(table)
    cpu, jvm = executor_cpu_s(spark), jvm_cpu_s(spark)
    start = time.perf_counter()
    converter = make_spark_converter(df)
    convert_s = time.perf_counter() - start
    after, jvm_after = executor_cpu_s(spark), jvm_cpu_s(spark)
    cpu_s = None if cpu is None or after is None else after - cpu
    jvm_s = None if jvm is None or jvm_after is None else jvm_after - jvm
    rows = 0
    start = time.perf_counter()
    with converter.make_torch_dataloader(batch_size=batch_size, num_epochs=1) as loader:
        for batch in loader:
            rows += len(batch["id"])
    read_s = time.perf_counter() - start
    converter.delete()
    spark.stop()
    print(json.dumps({"convert_s": convert_s, "rows": rows, "read_s": read_s, "pyspark": pyspark.__version__,
                      "cpu_s": cpu_s, "jvm_cpu_s": jvm_s}))
    """
    )
)

CACHED_CALL = textwrap.dedent(
    """
    import json, sys, time
    sys.path.insert(0, sys.argv[4])
    import pipeline
    from pipeline.spark import SparkConfig, spark_session

    table, cache, master = sys.argv[1], sys.argv[2], sys.argv[3]
    with spark_session(SparkConfig(master=master, app_name="bench-table-cached")) as spark:
        df = spark.read.parquet(table)
        start = time.perf_counter()
        ds = pipeline.spark_dataset(df, cache_dir=cache, float32=True)
        print(json.dumps({"seconds": time.perf_counter() - start, "converted": ds.converted, "rows": ds.rows}))
    """
)


def make_table(spark, path: Path, rows: int, features: int, array_len: int) -> None:
    from pyspark.sql import functions as F

    cols = [F.col("id"), (F.col("id") % 10).cast("int").alias("label")]
    cols += [F.rand(seed=i).alias(f"f{i:02d}") for i in range(features)]
    cols.append(F.array(*[F.rand(seed=1000 + j).cast("float") for j in range(array_len)]).alias("emb"))
    spark.range(rows).select(*cols).write.mode("overwrite").parquet(str(path))


def read_ours(ds, batch_size: int) -> tuple[int, float]:
    rows = 0
    start = time.perf_counter()
    with ds.open_loader(batch_size=batch_size, num_epochs=1, shuffle=False) as loader:
        for batch in loader:
            rows += len(batch["id"])
    return rows, time.perf_counter() - start


def run_json(cmd: list[str], timeout: float) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--features", type=int, default=32, help="float64 feature columns (default 32)")
    p.add_argument("--array-len", type=int, default=16, help="values in the array<float> column (default 16)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--master", default="local[2]")
    p.add_argument("--work", default=None, help="work folder (default: a temporary one, removed)")
    default_py = ROOT / ".venv-petastorm" / "bin" / "python"
    p.add_argument(
        "--petastorm-python", default=str(default_py if default_py.exists() else ROOT / ".venv/bin/python")
    )
    p.add_argument("--no-petastorm", action="store_true")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object (last line)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import pipeline
    from pipeline.spark import SparkConfig, spark_session

    work = Path(args.work or tempfile.mkdtemp(prefix="bench-table-"))
    table, cache = work / "table", work / "cache"
    for stale in (cache, work / "warm"):  # both conversions run, with --work too
        shutil.rmtree(stale, ignore_errors=True)
    out: dict = {"rows": args.rows, "features": args.features, "array_len": args.array_len,
                 "batch_size": args.batch_size, "master": args.master}  # fmt: skip
    out["load_average_1m_before"] = os.getloadavg()[0]
    import pyspark

    out["ours_pyspark"] = pyspark.__version__
    try:
        with spark_session(
            SparkConfig(master=args.master, app_name="bench-table", driver_memory="4g", quick_jvm=False)
        ) as spark:
            if not table.exists():
                make_table(spark, table, args.rows, args.features, args.array_len)
            pipeline.spark_dataset(
                spark.range(1000).selectExpr("id", "rand() AS x"), cache_dir=str(work / "warm")
            )
            df = spark.read.parquet(str(table))
            cpu, jvm = executor_cpu_s(spark), jvm_cpu_s(spark)
            start = time.perf_counter()
            ds = pipeline.spark_dataset(df, cache_dir=str(cache), float32=True)
            out["ours_convert_s"] = time.perf_counter() - start
            after, jvm_after = executor_cpu_s(spark), jvm_cpu_s(spark)
            out["ours_convert_executor_cpu_s"] = None if cpu is None or after is None else after - cpu
            out["ours_convert_jvm_cpu_s"] = None if jvm is None or jvm_after is None else jvm_after - jvm
            start = time.perf_counter()
            again = pipeline.spark_dataset(df, cache_dir=str(cache), float32=True)
            out["ours_cached_same_process_s"] = time.perf_counter() - start
            assert not again.converted
        rows, seconds = read_ours(ds, args.batch_size)
        out["ours_read_rows"], out["ours_samples_per_s"] = rows, rows / seconds
        cached = run_json(
            [sys.executable, "-c", CACHED_CALL, str(table), str(cache), args.master, str(ROOT)], timeout=600
        )
        out["ours_cached_new_process_s"], out["cached_converted"] = cached["seconds"], cached["converted"]
        if not args.no_petastorm:
            theirs = run_json(
                [args.petastorm_python, "-c", PETASTORM_SIDE, str(table), str(work / "petastorm"), args.master,
                 str(args.batch_size)],
                timeout=3600,
            )  # fmt: skip
            out["petastorm_convert_s"] = theirs["convert_s"]
            out["petastorm_pyspark"] = theirs["pyspark"]
            out["petastorm_convert_executor_cpu_s"] = theirs["cpu_s"]
            out["petastorm_convert_jvm_cpu_s"] = theirs["jvm_cpu_s"]
            out["petastorm_read_rows"] = theirs["rows"]
            out["petastorm_samples_per_s"] = theirs["rows"] / theirs["read_s"]
            out["convert_speedup"] = out["petastorm_convert_s"] / out["ours_convert_s"]
            out["read_speedup"] = out["ours_samples_per_s"] / out["petastorm_samples_per_s"]
            if out["ours_convert_executor_cpu_s"] and out["petastorm_convert_executor_cpu_s"]:
                out["convert_cpu_ratio"] = (
                    out["petastorm_convert_executor_cpu_s"] / out["ours_convert_executor_cpu_s"]
                )
            if out["ours_convert_jvm_cpu_s"] and out["petastorm_convert_jvm_cpu_s"]:
                out["convert_jvm_cpu_ratio"] = (
                    out["petastorm_convert_jvm_cpu_s"] / out["ours_convert_jvm_cpu_s"]
                )
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    out["load_average_1m_after"] = os.getloadavg()[0]
    for key, value in out.items():
        print(f"{key:34s} {value:,.2f}" if isinstance(value, float) else f"{key:34s} {value}")
    if args.json:
        print(json.dumps(out, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
