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
def test_images_s3_to_s3_and_back(spark: object, s3_env: str) -> None:
    from pipeline.convert.images import convert_images

    for i in range(6):
        put(f"{s3_env}/imgs/{'cat' if i % 2 else 'dog'}/{i}.jpg", jpeg(i))
    put(f"{s3_env}/imgs/.hidden/x.jpg", jpeg(9))
    result = convert_images(spark, f"{s3_env}/imgs", f"{s3_env}/out", settings=SETTINGS)
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


_KILLED_COMMIT = """
import os, signal, sys
from pathlib import Path
import pyarrow as pa, pyarrow.parquet as pq
from pipeline.convert.staging import StagedOutput
from pipeline.format.metadata import ROW_GROUPS_PER_FILE_KEY
stage = StagedOutput(sys.argv[1], overwrite=sys.argv[2] == "1")
stage.__enter__()
stage.data_dir.mkdir()
table = pa.table({"x": pa.array(range(int(sys.argv[3])), pa.int64())})
pq.write_table(table, stage.data_dir / "part-00000.parquet")
meta = {ROW_GROUPS_PER_FILE_KEY: b'{"part-00000.parquet": 1}'}
pq.write_metadata(table.schema.with_metadata(meta), stage.data_dir / "_common_metadata")
if sys.argv[4] == "kill":
    stage.remote.upload_data(stage.data_dir)   # data files are up, _common_metadata is not
    os.kill(os.getpid(), signal.SIGKILL)
stage.commit()
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
