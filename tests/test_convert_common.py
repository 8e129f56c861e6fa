"""The conversion framework: settings, listing, balanced partitions, staging, headers, writer."""

from __future__ import annotations

import argparse
import functools
import io
import itertools
import json
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from pipeline.cli import build_parser
from pipeline.cli.convert import settings_from_args as load_settings
from pipeline.config import load_config, load_options
from pipeline.convert.common import ConvertConfig, RecordErrors, parse_size
from pipeline.convert.headers import image_header
from pipeline.convert.images import ImageOptions
from pipeline.convert.listing import choose_partitions, list_source_files, split_by_bytes
from pipeline.convert.staging import StagedOutput, check_destination
from pipeline.dataset import read_provenance
from pipeline.errors import ConfigError, DatasetError, InputError
from tests.conftest import REPO


@pytest.mark.parametrize(
    ("cls", "name"), [(ConvertConfig, "convert.yaml"), (ImageOptions, "convert_images.yaml")]
)
def test_yaml_defaults_agree_with_the_dataclass(cls, name):
    data = yaml.safe_load((REPO / "conf" / name).read_text())
    assert set(data) == {f.name for f in fields(cls)}
    assert load_config(cls, REPO / "conf" / name) == cls()


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["convert", "images", "src", "dest", *argv])


def test_flags_beat_the_config_file_which_beats_conf(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("convert: {row_group_mb: 64, compression: zstd}\nimages: {jpeg_quality: 80}\n")
    got = load_settings(parse("--config", str(cfg), "--row-group-mb", "8", "--on-error", "skip"))
    assert got == ConvertConfig(row_group_mb=8, compression="zstd", on_error="skip")
    assert load_settings(parse()) == ConvertConfig()
    images = load_options(ImageOptions, "convert_images.yaml", config_path=cfg, section="images")
    assert images.jpeg_quality == 80
    cfg.write_text("convert: {row_group_mb: big}\n")
    with pytest.raises(ConfigError, match=r"run\.yaml: section 'convert'.*row_group_mb"):
        load_settings(parse("--config", str(cfg)))
    with pytest.raises(ConfigError, match="row_group_mb must be >= 1"):
        ConvertConfig(row_group_mb=0)


def test_parse_size():
    assert parse_size("224x160") == (224, 160)
    assert parse_size("64") == (64, 64)
    for bad in ("0x4", "ax4", "1x2x3", ""):
        with pytest.raises(ConfigError, match="HxW"):
            parse_size(bad)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 10_000), min_size=1, max_size=60), st.integers(1, 80))
def test_split_by_bytes_is_contiguous_complete_and_balanced(sizes, parts):
    ranges = split_by_bytes(sizes, parts)
    assert len(ranges) == min(parts, len(sizes))
    assert ranges[0][0] == 0 and ranges[-1][1] == len(sizes)
    assert all(a < b for a, b in ranges)
    assert all(prev[1] == nxt[0] for prev, nxt in itertools.pairwise(ranges))
    weights = [max(1, s) for s in sizes]
    ideal = sum(weights) / len(ranges)
    assert max(sum(weights[a:b]) for a, b in ranges) <= ideal + max(weights)


def test_partition_count_follows_bytes_parallelism_and_items():
    mb = 1024 * 1024
    assert choose_partitions(10 * mb, 1000, file_mb=256, parallelism=2, fixed=None) == 2
    assert choose_partitions(1000 * mb, 1000, file_mb=256, parallelism=2, fixed=None) == 4
    assert choose_partitions(10 * mb, 1, file_mb=256, parallelism=8, fixed=None) == 1
    assert choose_partitions(10 * mb, 100, file_mb=256, parallelism=2, fixed=7) == 7


def test_listing_skips_hidden_files_and_other_suffixes(tmp_path):
    (tmp_path / "a" / ".git").mkdir(parents=True)
    for rel in ("a/x.TXT", "a/y.txt", "a/.hidden.txt", "a/.git/z.txt", "a/readme.md", "b.txt"):
        (tmp_path / rel).write_text("12345")
    files = list_source_files(tmp_path, extensions=(".txt",))
    assert [Path(f.path).relative_to(tmp_path).as_posix() for f in files] == ["a/x.TXT", "a/y.txt", "b.txt"]
    assert {f.size for f in files} == {5}
    assert [Path(f.path).name for f in list_source_files(str(tmp_path / "a" / "*.txt"))] == ["y.txt"]
    (tmp_path / "a" / "loop").symlink_to(tmp_path / "a")  # a link loop is listed once
    assert len(list_source_files(tmp_path, extensions=(".txt",))) == 3
    with pytest.raises(InputError, match="does not exist"):
        list_source_files(tmp_path / "nope")
    with pytest.raises(InputError, match=r"no images ending in \.png"):
        list_source_files(tmp_path, extensions=(".png",), what="images")


def test_staging_commits_atomically_and_cleans_up(tmp_path):
    dest = tmp_path / "ds"
    with StagedOutput(dest) as stage:
        stage.data_dir.mkdir()
        (stage.data_dir / "part.parquet").write_text("x")
        (stage.data_dir / "_common_metadata").write_text("m")  # what makes it a dataset
        assert not dest.exists()
        stage.commit()
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]
    with pytest.raises(DatasetError, match="already exists"):
        check_destination(dest, overwrite=False)
    with pytest.raises(RuntimeError), StagedOutput(dest, overwrite=True) as stage:
        stage.data_dir.mkdir()
        raise RuntimeError("job failed")
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]
    assert (dest / "part.parquet").read_text() == "x"  # untouched by the failed run


def test_staging_of_a_killed_run_is_removed_by_the_next_run(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(proc.stdout)
    import socket

    stale = tmp_path / f".ds.staging-{socket.gethostname()}-{dead_pid}-abcd1234"
    (stale / "data").mkdir(parents=True)
    alive = tmp_path / f".ds.staging-{socket.gethostname()}-{os.getpid()}-live0000"
    alive.mkdir()
    with StagedOutput(tmp_path / "ds") as stage:
        assert not stale.exists() and alive.exists()
        assert stage.root.exists()
    assert not stage.root.exists()


def _jpeg(orientation: int | None = None, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    Image.new(mode, (12, 7)).save(buf, "JPEG", exif=exif.tobytes())
    return buf.getvalue()


def test_image_headers_are_read_without_decoding():
    head = image_header(_jpeg())
    assert (head.format, head.height, head.width, head.channels, head.bits) == ("JPEG", 7, 12, 3, 8)
    assert head.orientation == 1 and head.complete
    assert image_header(_jpeg(6)).orientation == 6
    assert image_header(_jpeg(mode="L")).channels == 1
    assert image_header(_jpeg(mode="CMYK")).channels == 4
    assert not image_header(_jpeg()[:-2]).complete
    png = io.BytesIO()
    Image.new("RGB", (5, 9)).save(png, "PNG")
    head = image_header(png.getvalue())
    assert (head.format, head.height, head.width, head.channels, head.complete) == ("PNG", 9, 5, 3, True)
    assert not image_header(png.getvalue()[:-12]).complete
    rgba = io.BytesIO()
    Image.new("RGBA", (5, 9)).save(rgba, "PNG")
    assert image_header(rgba.getvalue()).channels == 4
    assert image_header(b"GIF89a....") is None
    assert image_header(b"\xff\xd8\xff\xe0\x00") is None


# A toy kind: integers become rows; multiples of 5 are "bad".
def toy_schema():
    from pyspark.sql.types import LongType

    from pipeline.format import NdarrayCodec, ScalarCodec, Unischema, UnischemaField

    return Unischema(
        "Toy",
        [
            UnischemaField("id", np.int64, (), ScalarCodec(LongType()), False),
            UnischemaField("vec", np.float32, (3,), NdarrayCodec(), False),
        ],
    )


def toy_process(items, errors: RecordErrors, *, schema):
    field = schema.fields["vec"]
    ids, vecs = [], []
    for i in items:
        if i % 5 == 0:
            errors.bad(f"toy://{i // 10}", "multiple of five", record=i)
            continue
        ids.append(i)
        vecs.append(field.codec.encode(field, np.full(3, i, np.float32)))
        if len(ids) == 4:
            yield {"id": ids, "vec": vecs}
            ids, vecs = [], []
    if ids:
        yield {"id": ids, "vec": vecs}


def write_toy(spark, dest: Path, n: int, start: int = 1, **kw):
    from pipeline.convert.writer import plan_partitions, write_petastorm

    schema = toy_schema()
    cfg = ConvertConfig(**kw)
    items = list(range(start, start + n))
    return write_petastorm(
        spark,
        kind="toy",
        source="toy://",
        dest=str(dest),
        schema=schema,
        plan=plan_partitions(spark, items, [1] * n, cfg),
        process=functools.partial(toy_process, schema=schema),
        settings=cfg,
        input_bytes=n,
        extra={"note": "hello"},
    )


@pytest.mark.spark
def test_writer_makes_a_petastorm_dataset_with_provenance_and_a_skip_report(spark, tmp_path):
    from tests.datasets import make_reader

    result = write_toy(spark, tmp_path / "ds", 23, on_error="skip", partitions=3, row_group_mb=1)
    assert (result.rows, result.skipped, result.files) == (19, 4, 3)
    assert result.row_groups >= 3 and result.output_bytes > 0
    with make_reader(result.output, workers_count=1, shuffle_row_groups=False) as reader:
        rows = {int(r.id): r.vec for r in reader}
    assert sorted(rows) == [i for i in range(1, 24) if i % 5]
    np.testing.assert_array_equal(rows[7], np.full(3, 7, np.float32))
    ids = [i for f in sorted((tmp_path / "ds").glob("*.parquet")) for i in pq.read_table(f)["id"].to_pylist()]
    assert ids == sorted(rows)  # plan order is kept across files
    from pipeline.format import ROW_GROUPS_PER_FILE_KEY

    index = json.loads(pq.read_schema(tmp_path / "ds" / "_common_metadata").metadata[ROW_GROUPS_PER_FILE_KEY])
    data_files = sorted((tmp_path / "ds").glob("*.parquet"))
    assert index == {f.name: pq.read_metadata(f).num_row_groups for f in data_files}
    assert not (tmp_path / "ds" / "_metadata").exists()
    assert pq.read_metadata(data_files[0]).row_group(0).column(0).compression == "SNAPPY"  # auto
    report = (tmp_path / "ds" / "_skipped.jsonl").read_text().splitlines()
    assert len(report) == 4 and '"record": 10' in "".join(report)
    meta = read_provenance(result.output)
    assert meta["counts"] == {"rows": 19, "skipped": 4, "input_bytes": 23, "files": 3}
    assert meta["note"] == "hello" and meta["kind"] == "toy" and "pyarrow" in meta["versions"]
    assert set(result.to_dict()) >= {
        "rows",
        "skipped",
        "output",
        "seconds",
        "rows_per_s",
        "files",
        "row_groups",
    }


def toy_task(tmp_path: Path, on_error: str):
    from pyspark.sql.pandas.types import to_arrow_schema

    from pipeline.convert.tasks import PartitionTask

    schema = toy_schema()
    return PartitionTask(
        [],
        functools.partial(toy_process, schema=schema),
        to_arrow_schema(schema.as_spark_schema()),
        on_error=on_error,
        data_dir=str(tmp_path),
        compression="none",
        row_group_bytes=1 << 20,
    )


def test_a_task_returns_its_skipped_records_and_fails_with_the_record_in_its_error(tmp_path):
    """No side channel: skipped records travel in the task's result row; under on_error=fail the
    task's exception carries the record, which the driver finds again in Spark's error text."""
    import traceback

    from pipeline.convert.task_failures import task_failure
    from pipeline.convert.tasks import TaskFailure

    (row,) = toy_task(tmp_path, "skip").run_parts([(2, [4, 5, 6, 10])])
    assert (row["partition"], row["rows"]) == (2, 2)
    assert [json.loads(r) for r in row["skipped"]] == [
        {"source": "toy://0", "reason": "multiple of five", "record": 5},
        {"source": "toy://1", "reason": "multiple of five", "record": 10},
    ]
    assert os.listdir(tmp_path) == ["part-00002.parquet"]

    with pytest.raises(TaskFailure) as info:
        list(toy_task(tmp_path, "fail").run_parts([(3, [1, 2, 3, 4, 6, 7, 8, 9, 15])]))
    assert os.listdir(tmp_path) == ["part-00002.parquet"]  # the failed task left no file behind
    # what the driver's collect() raises: the Python traceback inside Spark's own message
    trace = "".join(traceback.format_exception(info.value))
    spark_error = (
        "An error occurred while calling o81.collectAndServe.\n: org.apache.spark.SparkException: Job "
        "aborted due to stage failure: Task 3 in stage 7.0 failed 1 times, most recent failure: Lost "
        f"task 3.0 (TID 9): org.apache.spark.api.python.PythonException: {trace}\n\tat org.apache..."
    )
    error = task_failure(RuntimeError(spark_error))
    assert isinstance(error, InputError)
    assert error.message == "bad input: toy://1 (record 15): multiple of five"
    assert "--on-error skip" in error.hint

    lost = "org.apache.spark.SparkException: Job aborted: executor 3 lost"
    other = task_failure(RuntimeError(f"{lost}\n\tat x"))
    assert not isinstance(other, InputError)
    assert other.message == f"the conversion failed in Spark: {lost}"


_RETRYING_MASTER = """
import json, os, sys, time
import numpy as np
from pyspark.sql import SparkSession
from pyspark.sql.types import LongType
from pipeline.convert.common import ConvertConfig
from pipeline.convert.writer import write_petastorm
from pipeline.errors import InputError
from pipeline.format import ScalarCodec, Unischema, UnischemaField

dest, marks = sys.argv[1], sys.argv[2]
spark = (SparkSession.builder.master("local[2,3]")  # as on a cluster: 3 attempts per task
         .config("spark.ui.enabled", "false").config("spark.driver.host", "127.0.0.1").getOrCreate())
schema = Unischema("N", [UnischemaField("x", np.int64, (), ScalarCodec(LongType()), False)])

def process(items, errors):
    from pyspark import TaskContext
    for i in items:
        if i == 5:
            attempt = TaskContext.get().attemptNumber()
            time.sleep(20 if attempt else 0)  # a retry is still here when the job is cancelled
            open(os.path.join(marks, f"attempt-{attempt}"), "w").close()
            errors.bad("numbers://", "five", record=i)
        yield {"x": [i]}

try:
    write_petastorm(spark, kind="numbers", source="numbers://", dest=dest, schema=schema,
                    plan=[[1, 2], [4, 5], [7, 8]], process=process, settings=ConvertConfig(), input_bytes=6)
except InputError as exc:
    print(json.dumps({"error": str(exc)}))
spark.stop()
"""


@pytest.mark.spark
def test_bad_input_is_not_retried_where_spark_retries_failed_tasks(tmp_path):
    """Bad input fails every attempt the same way: the job stops at the first one (a master that
    retries failed tasks, as clusters do), with the same error as in local mode."""
    marks = tmp_path / "attempts"
    marks.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", _RETRYING_MASTER, str(tmp_path / "ds"), str(marks)],
        cwd=REPO,
        env=dict(os.environ, SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=sys.executable),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    error = json.loads(proc.stdout.strip().splitlines()[-1])["error"]
    assert error.startswith("bad input: numbers:// (record 5): five -- HINT:")
    assert sorted(p.name for p in marks.iterdir()) == ["attempt-0"]  # no second attempt got there
    assert sorted(p.name for p in tmp_path.iterdir()) == ["attempts"]  # no DEST, no staging left
    assert "Traceback" not in proc.stderr


@pytest.mark.spark
def test_writer_fail_mode_raises_one_input_error_and_writes_nothing(spark, tmp_path):
    with pytest.raises(InputError) as info:
        write_toy(spark, tmp_path / "ds", 23, partitions=3)
    assert "bad input: toy://" in str(info.value) and "multiple of five" in str(info.value)
    assert "--on-error skip" in str(info.value)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InputError, match="all 1 inputs were bad"):
        write_toy(spark, tmp_path / "ds", 1, start=5, on_error="skip", partitions=1)
    assert list(tmp_path.iterdir()) == []
    # The shared SparkContext's Parquet settings are restored after the failures.
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    assert conf.get("parquet.block.size") is None


def test_dest_may_not_hold_the_source_or_replace_a_non_dataset(tmp_path):
    src = tmp_path / "data" / "images"
    src.mkdir(parents=True)
    (src / "a.png").write_bytes(b"x")
    for dest in (src, tmp_path / "data"):
        with pytest.raises(DatasetError, match="would replace the inputs"):
            check_destination(dest, overwrite=True, source=src)
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="is not a dataset"):
        check_destination(other, overwrite=True, source=src)
    assert (other / "todo.txt").read_text() == "keep me"
    with pytest.raises(DatasetError, match="'#'"):
        check_destination(tmp_path / "a#b" / "out", overwrite=False)
    assert check_destination(tmp_path / "out", overwrite=False, source=src) == (tmp_path / "out").resolve()


def test_file_urls_name_no_host_and_are_unquoted(tmp_path):
    from pipeline.convert.listing import local_path

    assert local_path(f"file://{tmp_path}/my%20dir") == tmp_path / "my dir"
    assert local_path(f"file://localhost{tmp_path}") == tmp_path
    with pytest.raises(InputError, match="three slashes"):
        local_path("file://out/ds")


def test_pass_through_check_rejects_damaged_pngs_and_unusual_jpeg_frames():
    png, jpeg = io.BytesIO(), io.BytesIO()
    pixels = np.random.default_rng(3).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(png, "PNG")
    Image.fromarray(pixels).save(jpeg, "JPEG")
    assert image_header(png.getvalue()).complete
    damaged = bytearray(png.getvalue())
    damaged[png.getvalue().index(b"IDAT") + 8] ^= 0xFF
    assert image_header(bytes(damaged)) is None
    assert image_header(jpeg.getvalue()).format == "JPEG"
    lossless = bytearray(jpeg.getvalue())
    lossless[jpeg.getvalue().index(b"\xff\xc0") + 1] = 0xC3
    assert image_header(bytes(lossless)) is None


def test_manifest_that_is_not_utf8_is_bad_input(tmp_path):
    from pipeline.convert.image_sources import find_images

    manifest = tmp_path / "m.csv"
    manifest.write_bytes(b"path,label\ncat/c1.png,caf\xe9\n")
    with pytest.raises(InputError, match="not UTF-8"):
        find_images(str(manifest))
