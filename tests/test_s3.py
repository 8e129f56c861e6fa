"""Object storage end to end against a real S3 API server (moto) on 127.0.0.1.

Conversions S3 -> S3 (images, text, HDF5), read back with open_loader; the commit protocol
under SIGKILL; clean errors for a missing bucket and refused credentials; read-ahead through a
latency-adding proxy.
"""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.convert.common import ConvertConfig
from pipeline.errors import DatasetError, InputError, PipelineError
from pipeline.storage import StorageConfig, list_files, resolve
from tests.conftest import REPO
from tests.s3_server import s3_env, s3_server, start_latency_proxy, start_moto, stop

_FIXTURES = (s3_env, s3_server)  # used by name as test arguments


def put(url: str, data: bytes) -> None:
    fs, path = resolve(url)
    with fs.open_output_stream(path) as out:
        out.write(data)


def names(url: str) -> list[str]:
    fs, root = resolve(url)
    return sorted(e.path[len(root) + 1 :] for e in list_files(fs, root, url=url))


def jpeg(seed: int, size: int = 24) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def read_all(url: str, **kwargs: object) -> dict[str, np.ndarray]:
    import pipeline

    out: dict[str, list[np.ndarray]] = {}
    with pipeline.open_loader(url, batch_size=4, shuffle=False, num_epochs=1, workers=2, **kwargs) as loader:
        for batch in loader:
            for k, v in batch.items():
                out.setdefault(k, []).append(v.numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


SETTINGS = ConvertConfig(partitions=2, row_group_mb=1)


@pytest.mark.spark
def test_images_s3_to_s3_and_back(
    spark: object, s3_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    from pipeline.convert.images import convert_images

    for i in range(6):
        put(f"{s3_env}/imgs/{'cat' if i % 2 else 'dog'}/{i}.jpg", jpeg(i))
    put(f"{s3_env}/imgs/.hidden/x.jpg", jpeg(9))
    driver_tmp = tmp_path / "driver-tmp"  # where a local staging folder would go: never made
    with monkeypatch.context() as patch:
        patch.setattr(tempfile, "tempdir", str(driver_tmp))
        result = convert_images(spark, f"{s3_env}/imgs", f"{s3_env}/out", settings=SETTINGS)
    assert not driver_tmp.exists()  # the tasks wrote to the store, the driver only the metadata
    assert result.output == f"{s3_env}/out"
    assert result.rows == 6 and result.extra["class_names"] == ["cat", "dog"]
    stored = names(f"{s3_env}/out")
    assert "_common_metadata" in stored
    assert all(n.startswith("part-") and len(n.split("-")) == 3 for n in stored if n.endswith(".parquet"))
    batch = read_all(f"{s3_env}/out", fields=["image", "label"])
    assert batch["image"].shape == (6, 24, 24, 3)
    assert sorted(batch["label"].tolist()) == [0, 0, 0, 1, 1, 1]

    with pytest.raises(DatasetError, match="already exists"):
        convert_images(spark, f"{s3_env}/imgs", f"{s3_env}/out", settings=SETTINGS)
    put(f"{s3_env}/imgs/dog/extra.jpg", jpeg(7))
    again = convert_images(
        spark, f"{s3_env}/imgs", f"{s3_env}/out", settings=ConvertConfig(partitions=1, overwrite=True)
    )
    assert again.rows == 7
    after = names(f"{s3_env}/out")
    assert not set(n for n in stored if n.endswith(".parquet")) & set(after)  # old files are gone
    assert len(read_all(f"{s3_env}/out", fields=["label"])["label"]) == 7


@pytest.mark.spark
def test_text_s3_to_s3(spark: object, s3_env: str) -> None:
    from pipeline.convert.text import TextOptions, convert_text

    put(f"{s3_env}/txt/a.txt", b"hello world\n\nsecond doc\n")
    put(f"{s3_env}/txt/sub/b.txt", b"third document here\n")
    result = convert_text(spark, f"{s3_env}/txt", f"{s3_env}/tok", TextOptions(seq_len=8), settings=SETTINGS)
    assert result.rows > 0 and result.output == f"{s3_env}/tok"
    tokens = read_all(f"{s3_env}/tok")["tokens"]
    assert tokens.shape == (result.rows, 8)
    assert bytes(tokens[tokens < 256].astype(np.uint8)).startswith(b"hello world")


@pytest.mark.spark
def test_hdf5_s3_to_s3(spark: object, s3_env: str, tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    from pipeline.convert.hdf5 import convert_hdf5

    local = tmp_path / "x.h5"
    with h5py.File(local, "w") as h5:
        h5["features"] = np.arange(40, dtype=np.float32).reshape(10, 4)
        h5["label"] = np.arange(10, dtype=np.int64)
    put(f"{s3_env}/h5/x.h5", local.read_bytes())
    result = convert_hdf5(spark, f"{s3_env}/h5", f"{s3_env}/h5out", settings=SETTINGS)
    assert result.rows == 10
    batch = read_all(f"{s3_env}/h5out")
    np.testing.assert_array_equal(batch["features"], np.arange(40, dtype=np.float32).reshape(10, 4))
    np.testing.assert_array_equal(batch["label"], np.arange(10))


def _numbers(items, errors):
    for i in items:
        if i < 0:
            errors.bad("numbers://", "negative", record=i)
        yield {"x": [i]}  # one batch per item: a failing item comes after written rows


def test_a_task_writes_its_file_straight_to_the_store_under_a_name_of_its_own(
    s3_env: str, tmp_path: Path
) -> None:
    """No driver disk: the task opens DEST's store from plain settings and writes there; a retried
    attempt writes a second file of another name (the driver commits the one it collected); a
    failed attempt removes its own file."""
    import pickle

    import pyarrow as pa
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    from pipeline.convert.tasks import PartitionTask, TaskFailure
    from pipeline.storage.commit import is_attempt_file

    dest = f"{s3_env}/direct"
    local = tmp_path / "driver-staging"  # never created: the task must not need it
    task = PartitionTask(
        [],
        _numbers,
        pa.schema([("x", pa.int64())]),
        on_error="fail",
        data_dir=str(local),
        compression="none",
        row_group_bytes=1,  # a row group per batch: the failing attempt below has begun its file
        store_url=dest,
    )
    shipped = pickle.dumps(task)
    assert len(shipped) < 4096 and not any(isinstance(v, pafs.FileSystem) for v in vars(task).values())
    (first,) = pickle.loads(shipped).run_parts([(3, [5, 6, 7])])
    (again,) = pickle.loads(shipped).run_parts([(3, [5, 6, 7])])  # the same partition, retried
    assert first["file"] != again["file"]
    assert all(f["file"].startswith("part-00003-") and is_attempt_file(f["file"]) for f in (first, again))
    assert names(dest) == sorted([first["file"], again["file"]])
    fs, root = resolve(dest)
    with fs.open_input_file(f"{root}/{first['file']}") as fh:
        assert fh.size() == first["file_bytes"]
        assert pq.read_table(fh).column("x").to_pylist() == [5, 6, 7]
    assert (first["rows"], first["row_groups"], first["skipped"]) == (3, 3, [])

    with pytest.raises(TaskFailure, match="negative"):
        list(pickle.loads(shipped).run_parts([(4, [1, 2, -3])]))
    assert names(dest) == sorted([first["file"], again["file"]])  # the failed attempt left nothing
    assert not local.exists()


_KILLED_COMMIT = """
import json, os, signal, sys
import pyarrow as pa, pyarrow.parquet as pq
from pipeline.convert.staging import StagedOutput
from pipeline.format.metadata import ROW_GROUPS_PER_FILE_KEY
from pipeline.storage.commit import attempt_name, new_attempt
stage = StagedOutput(sys.argv[1], overwrite=sys.argv[2] == "1")
stage.__enter__()
remote = stage.remote
table = pa.table({"x": pa.array(range(int(sys.argv[3])), pa.int64())})
name = attempt_name("part-00000.parquet", new_attempt())
with remote.fs.open_output_stream(f"{remote.prefix}/{name}") as out:  # as a task writes it
    pq.write_table(table, out)
if sys.argv[4] == "kill":
    os.kill(os.getpid(), signal.SIGKILL)   # the data file is in the store, _common_metadata is not
meta = {ROW_GROUPS_PER_FILE_KEY: json.dumps({name: 1}).encode()}
sink = pa.BufferOutputStream()
pq.write_metadata(table.schema.with_metadata(meta), sink)
stage.publish(sink.getvalue().to_pybytes(), [name])
stage.__exit__(None, None, None)
"""


def _commit(dest: str, rows: int, mode: str, overwrite: bool = False) -> int:
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_COMMIT, dest, "1" if overwrite else "0", str(rows), mode],
        cwd=REPO,
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode in (0, -signal.SIGKILL), proc.stderr.decode()[-2000:]
    return proc.returncode


def test_killed_commit_leaves_no_dataset_and_rerun_succeeds(s3_env: str) -> None:
    import pipeline

    dest = f"{s3_env}/killed"
    assert _commit(dest, 5, "kill") == -signal.SIGKILL
    assert any(n.endswith(".parquet") for n in names(dest)) and "_common_metadata" not in names(dest)
    with pytest.raises(DatasetError, match="unfinished conversion"):
        pipeline.open_loader(dest, batch_size=2)
    assert _commit(dest, 5, "commit") == 0  # no --overwrite needed: leftovers are not a dataset
    assert len(read_all(dest)["x"]) == 5
    assert len([n for n in names(dest) if n.endswith(".parquet")]) == 1

    # an --overwrite killed before its commit point: readers still see the old dataset only
    assert _commit(dest, 9, "kill", overwrite=True) == -signal.SIGKILL
    assert len([n for n in names(dest) if n.endswith(".parquet")]) == 2
    assert len(read_all(dest)["x"]) == 5
    assert _commit(dest, 9, "commit", overwrite=True) == 0
    assert len(read_all(dest)["x"]) == 9
    assert len([n for n in names(dest) if n.endswith(".parquet")]) == 1


@pytest.mark.spark
def test_fail_mode_leaves_nothing_in_the_store(spark: object, s3_env: str) -> None:
    from pipeline.convert.images import convert_images

    for i in range(5):
        put(f"{s3_env}/imgs/a/{i}.jpg", jpeg(i))
    put(f"{s3_env}/imgs/b/broken.jpg", b"\xff\xd8 not a jpeg")
    with pytest.raises(InputError, match=r"bad input: s3://.*/imgs/b/broken\.jpg"):
        convert_images(spark, f"{s3_env}/imgs", f"{s3_env}/out", settings=ConvertConfig(partitions=3))
    assert names(f"{s3_env}/out") == []  # the files of the tasks that succeeded are gone too


def read_paths(url: str) -> list[str]:
    import pipeline

    out: list[str] = []
    with pipeline.open_loader(url, batch_size=8, shuffle=False, num_epochs=1, fields=["path"]) as loader:
        for batch in loader:
            out.extend(batch["path"])
    return out


@pytest.mark.spark
def test_split_to_s3_one_dataset_per_split_refused_then_replaced(
    spark: object, s3_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--split to s3://: DEST/<split> are datasets, _splits.json last; existing DEST refused; --overwrite."""
    import json

    from pipeline.cli import main as cli_main

    src, dest = f"{s3_env}/photos", f"{s3_env}/data"
    for i in range(24):
        put(f"{src}/{'cat' if i % 3 else 'dog'}/{i:02d}.jpg", jpeg(i, 12))
    argv = ["convert", "images", src, dest, "--size", "8x8", "--partitions", "2"]
    assert cli_main([*argv, "--split", "train=0.75,heldout=0.25", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["output"] == dest and out["rows"] == 24
    assert {k: (v["rows"], v["output"]) for k, v in out["splits"].items()} == {
        "train": (18, f"{dest}/train"),
        "heldout": (6, f"{dest}/heldout"),
    }
    train, heldout = read_paths(f"{dest}/train"), read_paths(f"{dest}/heldout")
    assert len(train) == 18 and len(heldout) == 6 and not set(train) & set(heldout)
    assert sorted(train + heldout) == sorted(f"{'cat' if i % 3 else 'dog'}/{i:02d}.jpg" for i in range(24))
    fs, root = resolve(dest)
    with fs.open_input_stream(f"{root}/_splits.json") as fh:
        assert json.loads(fh.read())["rows"] == {"train": 18, "heldout": 6}
    stored = names(dest)
    assert {n.split("/")[0] for n in stored} == {"_splits.json", "train", "heldout"}

    # without --overwrite: refused before any work, as a local DEST is
    assert cli_main([*argv, "--split", "train=0.5,heldout=0.5"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert names(dest) == stored

    # --overwrite with other splits: each named split replaced, the one no longer named is gone
    assert cli_main([*argv, "--split", "train=0.5,val=0.5", "--overwrite", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {k: v["output"] for k, v in out["splits"].items()} == {
        "train": f"{dest}/train",
        "val": f"{dest}/val",
    }
    after = names(dest)
    assert {n.split("/")[0] for n in after} == {"_splits.json", "train", "val"}
    assert not set(stored) & {n for n in after if n.endswith(".parquet")}  # old train files replaced
    train, val = read_paths(f"{dest}/train"), read_paths(f"{dest}/val")
    assert len(train) == len(val) == 12 and not set(train) & set(val)
    with fs.open_input_stream(f"{root}/_splits.json") as fh:
        assert json.loads(fh.read())["split"] == "train=0.5,val=0.5"


def test_check_destination_knows_split_dests_on_s3(s3_env: str) -> None:
    from pipeline.convert.staging import check_destination

    dest = f"{s3_env}/d"
    put(f"{dest}/train/part-00000-0123456789ab.parquet", b"x")  # leftovers of a killed split run only
    assert str(check_destination(dest, overwrite=False)) == dest[len("s3://") :]
    put(f"{dest}/train/_common_metadata", b"x")  # a committed split, no _splits.json yet
    with pytest.raises(DatasetError, match="already exists"):
        check_destination(dest, overwrite=False)
    put(f"{dest}/_splits.json", b"{}")
    with pytest.raises(DatasetError, match="already exists"):
        check_destination(dest, overwrite=False)
    check_destination(dest, overwrite=True)
    put(f"{dest}/notes.txt", b"mine")  # not what --split writes: never replaced
    with pytest.raises(DatasetError, match="is not a dataset"):
        check_destination(dest, overwrite=True)


@pytest.mark.spark
def test_failed_split_run_to_an_empty_s3_dest_leaves_nothing(spark: object, s3_env: str) -> None:
    from pipeline.convert.images import ImageOptions, convert_images

    for i in range(6):
        put(f"{s3_env}/imgs/a/{i}.jpg", jpeg(i, 12))
    put(f"{s3_env}/imgs/b/broken.jpg", b"\xff\xd8 not a jpeg")  # its own class: in the larger split, b
    options = ImageOptions(split="a=0.4,b=0.6")
    with pytest.raises(InputError, match=r"broken\.jpg"):
        convert_images(spark, f"{s3_env}/imgs", f"{s3_env}/out", options, settings=SETTINGS)
    assert names(f"{s3_env}/out") == []  # split a was committed first, then removed


@pytest.mark.spark
def test_table_to_s3_through_spark_and_through_the_python_tasks(spark: object, s3_env: str) -> None:
    """convert table: Spark's own writer (files made on the driver, uploaded under attempt names)
    and the Python tasks (files written to the store by the tasks, skipped rows in their results)."""
    import pipeline

    numbers = spark.createDataFrame([(i, float(i)) for i in range(10)], "id long, x double")  # type: ignore[attr-defined]
    jvm = pipeline.convert_dataframe(numbers.coalesce(2), f"{s3_env}/t-jvm")
    assert jvm["rows"] == 10 and jvm["output"] == f"{s3_env}/t-jvm"
    assert sorted(read_all(f"{s3_env}/t-jvm")["id"].tolist()) == list(range(10))
    nulls = spark.sql("SELECT * FROM VALUES (1, 1.0D), (2, NULL), (3, 3.0D) AS t(id, x)")  # type: ignore[attr-defined]
    python = pipeline.convert_dataframe(nulls.coalesce(1), f"{s3_env}/t-py", on_error="skip")
    assert (python["rows"], python["skipped"]) == (2, 1)
    assert python["skipped_report"] == f"{s3_env}/t-py/_skipped.jsonl"
    stored = names(f"{s3_env}/t-py")
    assert stored == sorted(
        ["_common_metadata", "_skipped.jsonl", *[n for n in stored if n.endswith(".parquet")]]
    )
    assert sorted(read_all(f"{s3_env}/t-py")["id"].tolist()) == [1, 3]
    for dest in ("t-jvm", "t-py"):
        assert all(len(n.split("-")) == 3 for n in names(f"{s3_env}/{dest}") if n.endswith(".parquet"))


_RETRIED = """
import json, sys
import numpy as np
from pyspark import TaskContext
from pyspark.sql import SparkSession
from pyspark.sql.types import LongType
from pipeline.convert.common import ConvertConfig
from pipeline.convert.writer import write_petastorm
from pipeline.format import ScalarCodec, Unischema, UnischemaField
from pipeline.storage import write_bytes, resolve

dest, witness = sys.argv[1], sys.argv[2]
spark = (SparkSession.builder.master("local[1,2]")  # a failed task is retried once
         .config("spark.ui.enabled", "false").config("spark.driver.host", "127.0.0.1").getOrCreate())
schema = Unischema("N", [UnischemaField("x", np.int64, (), ScalarCodec(LongType()), False)])

def process(items, errors):
    yield {"x": list(items)}

def frame_for(task):
    def run(parts):
        parts = list(parts)
        out = list(task.run_parts(parts))
        if parts[0][0] == 1 and TaskContext.get().attemptNumber() == 0:
            fs, root = resolve(witness)  # this attempt's file is complete in DEST; the attempt is lost
            write_bytes(fs, root + "/" + out[0]["file"], b"", url=witness)
            raise RuntimeError("executor lost after the file was written")
        return iter(out)
    parts = [(i, [3 * i, 3 * i + 1, 3 * i + 2]) for i in range(3)]
    return spark.sparkContext.parallelize(parts, 3).mapPartitions(run)

result = write_petastorm(spark, kind="numbers", source="numbers://", dest=dest, schema=schema,
                         plan=[[0]] * 3, process=process, settings=ConvertConfig(), input_bytes=9,
                         frame_for=frame_for)
print(json.dumps({"rows": result.rows, "files": result.files}))
spark.stop()
"""


@pytest.mark.spark
def test_a_retried_task_leaves_no_second_copy(s3_env: str) -> None:
    """A task attempt that wrote its file and was then lost: its retry writes another file; the
    committed metadata lists the retry's only and the lost attempt's file is deleted."""
    import json
    import os

    from pipeline.storage.commit import read_index

    dest, witness = f"{s3_env}/retried", f"{s3_env}/witness"
    env = dict(os.environ, SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=sys.executable)
    proc = subprocess.run(
        [sys.executable, "-c", _RETRIED, dest, witness],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"rows": 9, "files": 3}
    (lost,) = names(witness)  # the lost attempt did write its file
    assert lost.startswith("part-00001-")
    fs, root = resolve(dest)
    index = read_index(fs, f"{root}/_common_metadata")
    assert sorted(index) == [n for n in names(dest) if n.endswith(".parquet")] and len(index) == 3
    assert lost not in names(dest)
    assert sorted(read_all(dest)["x"].tolist()) == list(range(9))  # every row once


@pytest.mark.spark
def test_sigkill_mid_conversion_leaves_no_dataset_and_the_rerun_succeeds(
    spark: object, s3_env: str, tmp_path: Path
) -> None:
    """``pipeline convert`` killed (the whole process group) once some tasks wrote their files
    to DEST: nothing opens as a dataset; the next run removes the leftovers and succeeds."""
    import os

    import pipeline
    from pipeline.convert.images import convert_images

    for i in range(24):
        put(f"{s3_env}/imgs/{'cat' if i % 2 else 'dog'}/{i:02d}.jpg", jpeg(i, size=48))
    dest = f"{s3_env}/killed-mid"
    cmd = [sys.executable, "-m", "pipeline.cli", "convert", "images", f"{s3_env}/imgs", dest,
           "--master", "local[1]", "--partitions", "12", "--size", "32x32"]  # fmt: skip
    env = dict(os.environ, SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=sys.executable)
    log = tmp_path / "convert.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=out, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not any(n.endswith(".parquet") for n in names(dest)):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    left = names(dest)
    assert "_common_metadata" not in left, "the conversion finished before it was killed"
    assert any(n.endswith(".parquet") for n in left)
    with pytest.raises(DatasetError, match="unfinished conversion"):
        pipeline.open_loader(dest, batch_size=2)
    result = convert_images(spark, f"{s3_env}/imgs", dest, settings=ConvertConfig(partitions=3))
    assert result.rows == 24  # no --overwrite needed: leftovers are not a dataset
    assert len([n for n in names(dest) if n.endswith(".parquet")]) == 3
    assert len(read_all(dest, fields=["label"])["label"]) == 24


def test_missing_bucket_and_missing_prefix(s3_env: str) -> None:
    import pipeline
    from pipeline.convert.listing import list_source_files

    with pytest.raises(DatasetError, match="bucket 'no-such-bucket' does not exist") as err:
        pipeline.open_loader("s3://no-such-bucket/data", batch_size=2)
    assert "HINT" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(InputError, match="does not exist"):
        list_source_files("s3://no-such-bucket/imgs")
    with pytest.raises(InputError, match="does not exist or is empty"):
        list_source_files(f"{s3_env}/nothing-here")


def test_access_denied_is_clean_and_not_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline

    proc, endpoint = start_moto({"INITIAL_NO_AUTH_ACTION_COUNT": "0"})  # every request is authenticated
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG1")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        started = time.monotonic()
        with pytest.raises(PipelineError, match="access denied") as err:
            pipeline.open_loader("s3://some-bucket/data", batch_size=2)
        assert time.monotonic() - started < 5  # not retried with back-off
        assert "HINT: check the credentials" in str(err.value)
    finally:
        stop(proc)


def test_unreachable_endpoint_is_clean(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.storage.resolve import s3_filesystem

    config = StorageConfig(endpoint_url="http://127.0.0.1:9", connect_timeout_s=0.5, retries=1)
    fs = s3_filesystem(config)
    with pytest.raises(PipelineError, match=r"cannot be reached|cannot list"):
        list_files(fs, "bucket/x", url="s3://bucket/x", config=config)


def test_read_ahead_hides_latency(s3_server: str, s3_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through a proxy adding 20 ms per request, the latency-sized thread count (and shared,
    pre-buffered reads) read 64 row groups >= 2x faster than one request at a time (the server's
    own CPU time per request, on a shared 2-core machine, bounds the gain below the ideal)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    import pipeline
    from pipeline.storage import read_threads

    fs, root = resolve(f"{s3_env}/lat")
    table = pa.table({"x": pa.array(np.arange(64 * 256), pa.int64()), "y": pa.array(np.ones(64 * 256))})
    with fs.open_output_stream(f"{root}/part-00000.parquet") as out:
        pq.write_table(table, out, row_group_size=256)  # 64 row groups, 2 columns each
    with fs.open_output_stream(f"{root}/_common_metadata") as out:
        pq.write_metadata(table.schema, out)
    proxy, slow = start_latency_proxy(s3_server, 20)
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", slow)
        slow_fs, _ = resolve(f"{s3_env}/lat")
        threads = read_threads(slow_fs, root, cpu_threads=2)
        assert 10 <= threads <= 64  # 2 cores + >= 20 ms / 2 ms
        seconds = {}
        for workers in ("warm-up", 1, None):  # the first run pays for imports and connections
            started = time.perf_counter()
            with pipeline.open_loader(
                f"{s3_env}/lat",
                batch_size=256,
                shuffle=False,
                workers=4 if workers == "warm-up" else workers,
                read_ahead=1,
            ) as loader:
                total = sum(len(b["x"]) for b in loader)
            seconds[workers] = time.perf_counter() - started
            assert total == 64 * 256
        assert seconds[1] > 64 * 0.02  # one request at a time: at least 20 ms per row group
        assert seconds[None] * 2 < seconds[1], seconds
    finally:
        stop(proxy)


def test_open_loader_takes_the_disk_cache_over_s3(s3_env: str, tmp_path: Path) -> None:
    """``open_loader(url, cache_dir=, cache_limit=)``: the rows come through the disk cache,
    which holds the row groups' bytes afterwards within its limit (docs/storage.md)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, root = resolve(f"{s3_env}/loader-cache")
    table = pa.table({"x": pa.array(np.arange(256), pa.int64())})
    with fs.open_output_stream(f"{root}/part-00000.parquet") as out:
        pq.write_table(table, out, row_group_size=64)
    with fs.open_output_stream(f"{root}/_common_metadata") as out:
        pq.write_metadata(table.schema, out)
    cache = tmp_path / "cache"
    for _ in range(2):  # the second pass reads what the first one cached
        got = read_all(f"{s3_env}/loader-cache", cache_dir=str(cache), cache_limit=1 << 20)
        assert got["x"].tolist() == list(range(256))
    entries = [p for p in cache.rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert entries and sum(p.stat().st_size for p in entries) <= 1 << 20


def test_disk_cache_over_s3_survives_ranks_and_corruption(s3_env: str, tmp_path: Path) -> None:
    """The access helper's disk cache in front of S3: two ranks filling it at once in separate
    processes read the right rows; a corrupted entry is re-read, never served."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, root = resolve(f"{s3_env}/cached")
    for f in range(2):
        table = pa.table({"x": pa.array(np.arange(f * 512, (f + 1) * 512), pa.int64())})
        with fs.open_output_stream(f"{root}/part-{f:05d}.parquet") as out:
            pq.write_table(table, out, row_group_size=64)
    cache = tmp_path / "cache"
    script = (  # one rank: read row groups rank::2 through the shared cache (no torch import)
        "import sys, json\n"
        "from pipeline.access.cachedfs import cached_filesystem\n"
        "from pipeline.reader.config import ReadOptions\n"
        "from pipeline.reader.plan import WorkItem\n"
        "from pipeline.reader.source import DatasetSource\n"
        "fs, path = cached_filesystem(sys.argv[1], cache_dir=sys.argv[2], cache_limit=1 << 20)\n"
        "src = DatasetSource(path, ReadOptions(filesystem=fs))\n"
        "rank = int(sys.argv[3])\n"
        "xs = [int(v) for p, n in enumerate(src.sizes) if p % 2 == rank"
        " for v in src.read(WorkItem(0, p, 0, n)).columns['x']]\n"
        "print(json.dumps({'x': sorted(xs), 'corrupt': fs.handler.cache.stats.corrupt}), flush=True)\n"
        "del src, fs  # S3 clients alive at exit can abort pyarrow 14's S3 finalization\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, f"{s3_env}/cached", str(cache), str(rank)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-2000:] for _, e in outs]
    import json

    seen = [json.loads(o.strip().splitlines()[-1])["x"] for o, _ in outs]
    assert sorted(seen[0] + seen[1]) == list(range(1024)) and not set(seen[0]) & set(seen[1])
    entries = [
        p for p in cache.rglob("*") if p.is_file() and not p.name.startswith(".") and p.stat().st_size > 16
    ]
    assert entries and sum(p.stat().st_size for p in entries) <= 1 << 20
    for victim in entries:  # same size, wrong bytes
        victim.write_bytes(b"\0" * victim.stat().st_size)
    again = subprocess.run(
        [sys.executable, "-c", script, f"{s3_env}/cached", str(cache), "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    result = json.loads(again.stdout.strip().splitlines()[-1])
    assert result["x"] == seen[0] and result["corrupt"] >= 1


@pytest.mark.spark
@pytest.mark.cluster
@pytest.mark.slow
def test_s3_to_s3_on_a_standalone_cluster_uses_no_driver_disk(
    s3_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """spark-submit on a standalone cluster whose executors have their own temporary folder: the
    executors (separate JVMs and Python workers) open the store from the shipped settings and
    write the files; the driver's temporary folder receives nothing of the conversion."""
    import json

    from tests.cluster import cluster_env, spark_bin, standalone_cluster

    for i in range(6):
        put(f"{s3_env}/imgs/{'cat' if i % 2 else 'dog'}/{i}.jpg", jpeg(i))
    driver_tmp, executor_tmp = tmp_path / "driver-tmp", tmp_path / "executor-tmp"
    driver_tmp.mkdir()
    executor_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(executor_tmp))  # inherited by the workers and their executors
    with standalone_cluster(tmp_path / "cluster", workers=1, cores_per_worker=2) as master:
        cmd = [spark_bin("spark-submit"), "--master", master, "--conf", "spark.driver.host=127.0.0.1",
               "jobs/convert_images.py", f"{s3_env}/imgs", f"{s3_env}/out", "--partitions", "3", "--json"]  # fmt: skip
        env = cluster_env({"TMPDIR": str(driver_tmp)})
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (result["rows"], result["files"], result["output"]) == (6, 3, f"{s3_env}/out")
    assert not (driver_tmp / "pipeline-staging").exists()
    parts = [n for n in names(f"{s3_env}/out") if n.endswith(".parquet")]
    assert len(parts) == 3 and len({n.rsplit("-", 1)[1] for n in parts}) == 3  # one attempt id per task
    assert sorted(read_all(f"{s3_env}/out", fields=["label"])["label"].tolist()) == [0, 0, 0, 1, 1, 1]
