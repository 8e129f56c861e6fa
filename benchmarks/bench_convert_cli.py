"""Whole conversion commands, as users run them: `pipeline convert images` vs the textbook petastorm job.

    .venv/bin/python benchmarks/bench_convert_cli.py                       # 100,000 64x64 + 2,000 photos
    .venv/bin/python benchmarks/bench_convert_cli.py --images 20000 --photos 500 --repeat 2

Two cases, each a fresh process per run (imports, Spark start, listing, the job, metadata, commit
and shutdown all included), timed from process start to exit:

* ``small``: ``--images`` distinct 64x64 JPEGs in 10 class folders, stored as they are:
  ``pipeline convert images SRC DEST``.
* ``photos``: ``--photos`` distinct 1000x750 photo-like JPEGs resized to ``--size`` (center
  crop, bilinear): ``pipeline convert images SRC DEST --size 224x224``, and the same with
  ``--jpeg-draft`` (JPEG DCT-domain downscale before the resize).

Against the textbook petastorm job in the petastorm env (``.venv-petastorm/bin/python``, a fresh
process too): an RDD of ``dict_to_spark_row`` rows (every image decoded with Pillow, resized
with ``ImageOps.fit`` for ``photos``, re-encoded by ``CompressedImageCodec("jpeg")``) written by
Spark inside ``materialize_dataset``. Both use ``local[*]``. The variants run interleaved in each
repeat, so that load from other processes hits all of them; the load average is printed.
Images are generated once under ``--workdir`` (:mod:`convert_data`). A warm-up conversion of
200 images comes first (not timed), every input file is read once (so that the first variant
timed does not read them from disk and the others from memory), and timing waits until the driver JVM's class archive that
the first conversion on a machine leads to is in place (``class_archive`` in ``conf/spark.yaml``):
every run of ours then uses it, as every command after a machine's first does.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))


def textbook(src: str, dest: str, size: str | None, master: str) -> int:
    """The textbook petastorm job (runs in the petastorm env); returns the rows written."""
    import glob

    import numpy as np
    from petastorm.codecs import CompressedImageCodec, ScalarCodec
    from petastorm.etl.dataset_metadata import materialize_dataset
    from petastorm.unischema import Unischema, UnischemaField, dict_to_spark_row
    from pyspark.sql import SparkSession
    from pyspark.sql.types import LongType

    hw = tuple(int(v) for v in size.split("x")) if size else None
    shape = (hw[0], hw[1], 3) if hw else (None, None, 3)
    schema = Unischema(
        "Textbook",
        [
            UnischemaField("image", np.uint8, shape, CompressedImageCodec("jpeg"), False),
            UnischemaField("label", np.int64, (), ScalarCodec(LongType()), False),
        ],
    )
    classes = sorted(p.name for p in Path(src).iterdir() if p.is_dir())
    index = {name: i for i, name in enumerate(classes)}
    paths = [(p, index[Path(p).parent.name]) for p in sorted(glob.glob(os.path.join(src, "*", "*.jpg")))]

    def row(item):
        from PIL import Image, ImageOps

        path, label = item
        image = Image.open(path).convert("RGB")
        if hw is not None:
            image = ImageOps.fit(image, (hw[1], hw[0]), Image.BILINEAR)
        return dict_to_spark_row(schema, {"image": np.asarray(image), "label": label})

    spark = (
        SparkSession.builder.master(master)
        .appName("textbook")
        .config("spark.driver.memory", "4g")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    url = "file://" + dest
    with materialize_dataset(spark, url, schema, 16):
        rdd = spark.sparkContext.parallelize(paths, spark.sparkContext.defaultParallelism).map(row)
        spark.createDataFrame(rdd, schema.as_spark_schema()).write.mode("overwrite").parquet(url)
    spark.stop()
    return len(paths)


def _become_subreaper() -> bool:
    """Make this process adopt its orphaned descendants (Linux ``PR_SET_CHILD_SUBREAPER``): the
    JVM outlives the command that started it by a moment, and its CPU time is counted only if it
    is waited for."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _reap_all() -> None:
    """Wait for every descendant (the command's JVM and Python workers, adopted) to end."""
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def _descendant_cpu(seen: dict[int, float]) -> None:
    """Record the CPU seconds (user + system) so far of every process under this one (``/proc``)."""
    tick = os.sysconf("SC_CLK_TCK")
    parents, cpu = {}, {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(name)] = int(fields[1])
        cpu[int(name)] = (int(fields[11]) + int(fields[12])) / tick
    tree, grew = {os.getpid()}, True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in tree and pid not in tree:
                tree.add(pid)
                grew = True
    for pid in tree - {os.getpid()}:
        seen[pid] = cpu[pid]


def run(command: list[str], env: dict[str, str]) -> tuple[float, str, float]:
    """Run a fresh process; ``(wall seconds, stdout, CPU seconds)``; exits with its stderr on failure.

    The wall time ends when the command exits. The CPU seconds are those of the command and every
    process under it (driver, JVM, Python worker daemon and workers), read from ``/proc`` every
    50 ms until they have all ended (the bench adopts the JVM that outlives its command by a
    moment: ``_become_subreaper``); process accounting alone misses the Python workers, which
    nobody waits for.
    """
    import threading

    seen: dict[int, float] = {}
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            _descendant_cpu(seen)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    _reap_all()
    stop.set()
    sampler.join()
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{done.stderr[-3000:]}")
    return seconds, done.stdout, sum(seen.values())


def warm_up(args: argparse.Namespace, src: Path, out: Path, env: dict[str, str]) -> None:
    """One small conversion (not timed), then wait until the driver JVM's class archive is in place.

    The first conversion on a machine (per Java and Spark install) records the classes its JVM
    loads, and a detached helper makes the archive afterwards (tens of CPU-seconds); every later
    command uses it. Timing starts once it is there, so that no run pays for it or competes with it.
    """
    sample = out / "warm-up-src" / "c0"
    sample.mkdir(parents=True)
    for path in sorted(src.glob("*/*.jpg"))[:200]:
        os.symlink(path, sample / path.name)
    seconds, _, _ = run([args.pipeline, "convert", "images", str(sample.parent), str(out / "warm-up"),
                      "--master", args.master, "--json"], env)  # fmt: skip
    from pipeline.spark import _class_archive, load_spark_config

    config = load_spark_config(master=args.master)
    waited = time.perf_counter()
    while config.class_archive and _class_archive(config, record=False) is None:
        if time.perf_counter() - waited > 900:
            print("warm-up: no JVM class archive after 15 minutes; timing without it", flush=True)
            break
        time.sleep(2)
    print(f"warm-up: {seconds:.1f} s, then {time.perf_counter() - waited:.0f} s waiting for the JVM class archive",
          flush=True)  # fmt: skip


def rows_of(dest: Path) -> int:
    import pyarrow.parquet as pq

    return sum(pq.read_metadata(f).num_rows for f in dest.glob("*.parquet"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000, help="64x64 JPEGs (default 100000; 0 skips)")
    parser.add_argument("--photos", type=int, default=2000, help="1000x750 JPEGs (default 2000; 0 skips)")
    parser.add_argument("--size", default="224x224", help="resize of the photos case (default 224x224)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of every variant (default 1)")
    parser.add_argument("--master", default="local[*]", help="Spark master of both jobs (default local[*])")
    parser.add_argument("--workdir", default=None, help="images and outputs (default: temp dir)")
    parser.add_argument(
        "--pipeline",
        default=str(Path(sys.executable).with_name("pipeline")),
        help="the `pipeline` console script (default: next to this Python)",
    )
    parser.add_argument(
        "--petastorm-python",
        default=str(ROOT / ".venv-petastorm" / "bin" / "python"),
        help="the petastorm env's Python (default .venv-petastorm/bin/python)",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON line at the end")
    parser.add_argument(
        "--no-warm-up",
        action="store_true",
        help="skip the warm-up (one small conversion, then waiting for the JVM class archive to be in place)",
    )
    parser.add_argument("--textbook", nargs=2, metavar=("SRC", "DEST"), help=argparse.SUPPRESS)
    parser.add_argument("--textbook-size", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.textbook:
        print(json.dumps({"rows": textbook(*args.textbook, args.textbook_size, args.master)}))
        return 0

    from convert_data import make_photos, make_small

    work = Path(args.workdir or Path(tempfile.gettempdir()) / "pipeline-bench-convert-cli")
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    tb_env = {**env, "PYSPARK_PYTHON": args.petastorm_python, "PYSPARK_DRIVER_PYTHON": args.petastorm_python}
    cases = []
    if args.images:
        src = make_small(work / f"small-{args.images}", args.images)
        cases.append(("small", src, args.images, [("pipeline convert images", [])], None))
    if args.photos:
        src = make_photos(work / f"photos-{args.photos}", args.photos)
        ours = [(f"pipeline convert images --size {args.size}", ["--size", args.size]),
                (f"pipeline convert images --size {args.size} --jpeg-draft", ["--size", args.size, "--jpeg-draft"])]  # fmt: skip
        cases.append(("photos", src, args.photos, ours, args.size))
    if cases and not args.no_warm_up:
        warm_up(args, cases[0][1], out, env)
        for case, src, *_ in cases:  # every variant then reads its inputs from memory, the first one too
            started, nbytes, files = time.perf_counter(), 0, 0
            for path in src.rglob("*"):
                if path.is_file():
                    nbytes, files = nbytes + len(path.read_bytes()), files + 1
            print(f"warm-up: {case} inputs read once ({files:,} files, {nbytes / 2**20:,.0f} MiB, "
                  f"{time.perf_counter() - started:.1f} s): in the page cache for every variant", flush=True)  # fmt: skip

    times: dict[tuple[str, str], list[float]] = {}
    cpus: dict[tuple[str, str], list[float]] = {}
    counted = _become_subreaper()
    loads = []
    for rep in range(args.repeat):
        for case, src, count, ours, size in cases:
            variants = [(name, [args.pipeline, "convert", "images", str(src), str(out / case), "--overwrite",
                                "--master", args.master, "--json", *flags], env) for name, flags in ours]  # fmt: skip
            tb = [args.petastorm_python, __file__, "--textbook", str(src), str(out / f"{case}-textbook"),
                  "--master", args.master] + (["--textbook-size", size] if size else [])  # fmt: skip
            variants.append(("textbook petastorm (RDD + dict_to_spark_row)", tb, tb_env))
            for name, command, variant_env in variants:
                loads.append(os.getloadavg()[0])
                seconds, stdout, cpu = run(command, variant_env)
                dest = out / (f"{case}-textbook" if "textbook" in name else case)
                rows = json.loads(stdout.strip().splitlines()[-1])["rows"]
                if rows != count or rows_of(dest) != count:
                    raise SystemExit(
                        f"{name}: {rows} rows reported, {rows_of(dest)} written, {count} expected"
                    )
                times.setdefault((case, name), []).append(seconds)
                cpus.setdefault((case, name), []).append(cpu)
                print(f"[{rep + 1}/{args.repeat}] {case:<6} {name:<55} {seconds:7.2f} s "
                      f"({count / seconds:8,.0f} images/s) {cpu:6.1f} CPU-s  load {loads[-1]:.1f}", flush=True)  # fmt: skip

    print(f"\nwhole commands, fresh processes, {args.master}, best of {args.repeat}; "
          f"load average (1 min) at the starts: {min(loads):.1f}..{max(loads):.1f} on {os.cpu_count()} CPUs")  # fmt: skip
    if not counted:
        print("  (CPU seconds may miss the JVM's last moments: this system cannot adopt orphaned processes)")
    figures = {}
    for case, _, count, _, _ in cases:
        textbook_name = "textbook petastorm (RDD + dict_to_spark_row)"
        base, base_cpu = min(times[(case, textbook_name)]), min(cpus[(case, textbook_name)])
        for (c, name), runs in times.items():
            if c != case:
                continue
            best, cpu = min(runs), min(cpus[(c, name)])
            figures[f"{case}: {name}"] = {"seconds": round(best, 2), "median": round(statistics.median(runs), 2),
                                          "images_per_s": round(count / best, 1), "vs_textbook": round(base / best, 2),
                                          "cpu_seconds": round(cpu, 1), "cpu_vs_textbook": round(base_cpu / cpu, 2)}  # fmt: skip
            print(f"  {case:<6} {count:>7,}  {name:<55} {best:7.2f} s  {count / best:8,.0f} images/s  "
                  f"{base / best:5.2f}x   {cpu:6.1f} CPU-s {base_cpu / cpu:5.2f}x")  # fmt: skip
    if args.json:
        print(json.dumps(figures))
    shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
