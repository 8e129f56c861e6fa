"""Image conversion throughput: this job vs the textbook petastorm job vs a raw pyarrow copy.

    .venv/bin/python benchmarks/bench_convert.py                 # 20,000 64x64 JPEGs, local[2]
    .venv/bin/python benchmarks/bench_convert.py --images 2000 --master 'local[4]'

Converts the same folder of small JPEGs (generated once, deterministic, 10 class folders) four
ways in one run and prints images/s and the ratio to the textbook job:

* ``pipeline pass-through`` -- ``convert_images`` with JPEG sources stored as JPEG: bytes kept.
* ``pipeline resize``       -- ``convert_images --size HxW``: decode, resize, re-encode.
* ``textbook petastorm``    -- the pattern of petastorm's examples: an RDD of
  ``dict_to_spark_row`` rows, each image decoded to a numpy array and re-encoded by the codec,
  inside ``materialize_dataset``. petastorm 0.12.1 cannot import on the default stack, so this
  variant runs in the petastorm env (``.venv-petastorm/bin/python``, pyarrow 14 / pyspark 4.0) in
  the same run, with its own SparkSession of the same master, after ours has stopped.
* ``pyarrow copy (ceiling)`` -- one process reads every file's bytes and writes one Parquet file.

Besides images/s (wall clock) it prints images per CPU-second of the whole process tree (driver,
JVM, Python workers): on a shared, busy machine that figure is the fairer comparison.

Our Spark variants share one SparkSession that is already running; every variant is warmed up
once on a small folder first, so Python worker start-up is not charged to either; every timed run
includes its own Spark jobs and the metadata step.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def cpu_seconds() -> float:
    """CPU time used so far by this process and its descendants (the JVM, Python workers)."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for proc in [me, *me.children(recursive=True)]:
        try:
            t = proc.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def make_jpegs(folder: Path, count: int, side: int, classes: int = 10) -> Path:
    """Write ``count`` ``side x side`` JPEGs (smooth gradients + noise, quality 90) once."""
    from PIL import Image

    done = folder / ".complete"
    if done.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:side, 0:side]
    for i in range(count):
        cls = folder / f"class{i % classes:02d}"
        cls.mkdir(parents=True, exist_ok=True)
        base = (np.stack([xx * 3 + i, yy * 2 + i * 7, (xx + yy) + i * 3], axis=2) % 256).astype(np.int16)
        noise = rng.integers(-20, 20, size=base.shape, dtype=np.int16)
        img = np.clip(base + noise, 0, 255).astype(np.uint8)
        Image.fromarray(img).save(cls / f"img{i:06d}.jpg", quality=90)
    done.touch()
    return folder


def textbook_petastorm(spark, src: Path, dest: Path, side: int, partitions: int) -> int:
    """The textbook job: RDD of dict_to_spark_row rows, decode + re-encode every image."""
    from petastorm.codecs import CompressedImageCodec, ScalarCodec
    from petastorm.etl.dataset_metadata import materialize_dataset
    from petastorm.unischema import Unischema, UnischemaField, dict_to_spark_row
    from pyspark.sql.types import LongType

    schema = Unischema(
        "Textbook",
        [
            UnischemaField("image", np.uint8, (side, side, 3), CompressedImageCodec("jpeg"), False),
            UnischemaField("label", np.int64, (), ScalarCodec(LongType()), False),
        ],
    )
    classes = sorted(p.name for p in src.iterdir() if p.is_dir())
    paths = [(str(p), classes.index(p.parent.name)) for p in sorted(src.glob("*/*.jpg"))]

    def row(item):
        from PIL import Image

        path, label = item
        image = np.asarray(Image.open(path).convert("RGB"))
        return dict_to_spark_row(schema, {"image": image, "label": label})

    url = "file://" + str(dest)
    with materialize_dataset(spark, url, schema, 16):
        rdd = spark.sparkContext.parallelize(paths, partitions).map(row)
        spark.createDataFrame(rdd, schema.as_spark_schema()).write.mode("overwrite").parquet(url)
    return len(paths)


def textbook_in_this_env(args: argparse.Namespace) -> int:
    """``--textbook-only``: the textbook job timed here (the petastorm env); one JSON line out."""
    import warnings

    from pipeline.spark import SparkConfig, spark_session

    warnings.filterwarnings("ignore", module=r"petastorm(\.|$)")
    src, warm, out = (Path(p) for p in args.textbook_only)
    rates, per_cpu = [], []
    with spark_session(
        SparkConfig(master=args.master, app_name="bench-convert-petastorm", ui=False)
    ) as spark:
        partitions = spark.sparkContext.defaultParallelism
        textbook_petastorm(spark, warm, out / "warm3", args.side, partitions)
        for _ in range(args.repeat):
            cpu0, start = cpu_seconds(), time.perf_counter()
            rows = textbook_petastorm(spark, src, out / "textbook", args.side, partitions)
            seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu0
            rates.append(rows / seconds)
            per_cpu.append(rows / cpu)
    print(json.dumps({"images_per_s": max(rates), "images_per_cpu_s": max(per_cpu), "rows": rows}))
    return 0


def textbook_in_petastorm_env(
    args: argparse.Namespace, src: Path, warm: Path, out: Path
) -> tuple[float, float]:
    """Run the textbook job in the petastorm env: ``(images/s, images/CPU-s)``, best of ``--repeat``."""
    python = Path(args.petastorm_python)
    if not python.exists():
        raise SystemExit(f"{python} does not exist: `make petastorm-venv` builds the petastorm env")
    command = [
        str(python), __file__, "--textbook-only", str(src), str(warm), str(out),
        "--side", str(args.side), "--master", args.master, "--repeat", str(args.repeat),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYSPARK_PYTHON": str(python)}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"the textbook job failed in {python}:\n{done.stderr[-3000:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    return figures["images_per_s"], figures["images_per_cpu_s"]


def pyarrow_copy(src: Path, dest: Path) -> int:
    """The ceiling: one process, raw bytes into one Parquet file, no Spark, no decode."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    classes = sorted(p.name for p in src.iterdir() if p.is_dir())
    paths = sorted(src.glob("*/*.jpg"))
    images = [p.read_bytes() for p in paths]
    labels = [classes.index(p.parent.name) for p in paths]
    dest.mkdir(parents=True)
    table = pa.table({"image": pa.array(images, pa.binary()), "label": pa.array(labels, pa.int64())})
    pq.write_table(table, dest / "part-0.parquet", row_group_size=8192)
    return len(paths)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20000, help="number of JPEGs (default 20000)")
    parser.add_argument("--side", type=int, default=64, help="JPEG width and height (default 64)")
    parser.add_argument("--resize", default="32x32", help="size for the resize variant (default 32x32)")
    parser.add_argument("--master", default="local[2]", help="Spark master (default local[2])")
    parser.add_argument("--workdir", default=None, help="folder for images and outputs (default: temp dir)")
    parser.add_argument("--repeat", type=int, default=2, help="timed runs per variant, best kept (default 2)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON line at the end")
    parser.add_argument(
        "--petastorm-python",
        default=str(ROOT / ".venv-petastorm" / "bin" / "python"),
        help="the petastorm env's Python, for the textbook job (default .venv-petastorm/bin/python)",
    )
    parser.add_argument("--textbook-only", nargs=3, metavar=("SRC", "WARM", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.textbook_only:
        return textbook_in_this_env(args)

    from pipeline.convert.common import ConvertConfig, parse_size
    from pipeline.convert.images import ImageOptions, convert_images
    from pipeline.spark import SparkConfig, spark_session

    work = Path(args.workdir or Path(tempfile.gettempdir()) / "pipeline-bench-convert")
    src = make_jpegs(work / f"jpegs-{args.images}-{args.side}", args.images, args.side)
    warm = make_jpegs(work / f"jpegs-warmup-{args.side}", 200, args.side)
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    settings = ConvertConfig(overwrite=True)
    size = parse_size(args.resize)
    results: dict[str, float] = {}

    per_cpu: dict[str, float] = {}

    def timed(name: str, fn) -> None:
        cpu0, start = cpu_seconds(), time.perf_counter()
        rows = fn()
        seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu0
        results[name] = max(results.get(name, 0.0), rows / seconds)
        per_cpu[name] = max(per_cpu.get(name, 0.0), rows / cpu)
        print(
            f"{name:<24} {rows:>7,} images in {seconds:6.2f} s = {rows / seconds:9,.0f} images/s "
            f"({cpu:5.2f} CPU-s, {rows / cpu:7,.0f} images/CPU-s)",
            flush=True,
        )

    with spark_session(SparkConfig(master=args.master, app_name="bench-convert", ui=False)) as spark:

        def ours(source: Path, dest: str, options: ImageOptions) -> int:
            return convert_images(spark, str(source), str(out / dest), options, settings=settings).rows

        passthrough = ImageOptions(encoding="jpeg")
        resized = ImageOptions(encoding="jpeg", size=size)
        # Warm-up (untimed): Python workers started and modules imported for every variant.
        ours(warm, "warm1", passthrough)
        ours(warm, "warm2", resized)

        for _ in range(args.repeat):  # interleaved, so that load on the machine hits both variants
            timed("pipeline pass-through", lambda: ours(src, "passthrough", passthrough))
            timed(f"pipeline resize {args.resize}", lambda: ours(src, "resize", resized))
    rate, cpu_rate = textbook_in_petastorm_env(args, src, warm, out)
    results["textbook petastorm"], per_cpu["textbook petastorm"] = rate, cpu_rate
    print(f"{'textbook petastorm':<24} {rate:9,.0f} images/s ({cpu_rate:7,.0f} images/CPU-s; petastorm env)")
    for _ in range(args.repeat):
        shutil.rmtree(out / "copy", ignore_errors=True)
        timed("pyarrow copy (ceiling)", lambda: pyarrow_copy(src, out / "copy"))

    base = results["textbook petastorm"]
    print(
        f"\nbest of {args.repeat}; ratios to the textbook petastorm job ({args.images:,} {args.side}x{args.side} JPEGs, {args.master}):"
    )
    base_cpu = per_cpu["textbook petastorm"]
    for name, rate in results.items():
        print(
            f"  {name:<24} {rate / base:5.2f}x wall clock   {per_cpu[name] / base_cpu:5.2f}x per CPU-second"
        )
    if args.json:
        figures = {
            "images_per_s": {k: round(v, 1) for k, v in results.items()},
            "images_per_cpu_s": {k: round(v, 1) for k, v in per_cpu.items()},
            "master": args.master,
        }
        print(json.dumps(figures))
    shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
