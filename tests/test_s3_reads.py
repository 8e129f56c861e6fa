"""Round trips of reading a dataset from S3, counted in the log of the latency proxy.

Against moto's S3 server on 127.0.0.1 (``tests/s3_server.py``), through ``tests/s3_proxy.py``
with ``$PIPELINE_S3_PROXY_LOG``: a warm open through the disk cache sends no request per file;
concurrent opens of one file send one ``HEAD``; a file rewritten on the store is read anew,
never from the old entries; the reader's thread count follows what reads cost (store or cache).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.storage import resolve
from tests.s3_server import s3_env, s3_server, start_latency_proxy, stop

_FIXTURES = (s3_env, s3_server)  # used by name as test arguments


def requests(log: Path, since: float) -> list[str]:
    """``"METHOD /bucket/key"`` of each request the proxy saw after ``since`` (time.time())."""
    time.sleep(0.1)  # the proxy's last lines
    out = []
    for line in log.read_text().splitlines():
        rec = json.loads(line)
        if "req" in rec and rec["t"] >= since:
            out.append(rec["req"].split("?")[0] if rec["req"].startswith("HEAD") else rec["req"])
    return out


@pytest.fixture
def slow_s3(s3_server: str, s3_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``(bucket URL, proxy log)``: the AWS variables point at a proxy (20 ms) that logs requests."""
    log = tmp_path / "proxy.log"
    monkeypatch.setenv("PIPELINE_S3_PROXY_LOG", str(log))
    proxy, endpoint = start_latency_proxy(s3_server, 20)  # a miss >= 20 ms: far from a hit, even under load
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    try:
        yield s3_env, log
    finally:
        stop(proxy)


def write_files(url: str, values: list[range]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, root = resolve(url)
    for i, ids in enumerate(values):
        table = pa.table({"x": pa.array(list(ids), pa.int64())})
        with fs.open_output_stream(f"{root}/part-{i:05d}.parquet") as out:
            pq.write_table(table, out, row_group_size=16)
    with fs.open_output_stream(f"{root}/_common_metadata") as out:
        pq.write_metadata(pa.schema([("x", pa.int64())]), out)


def read_source(source: Any) -> list[int]:
    from pipeline.reader.plan import WorkItem

    return [
        int(v) for p, n in enumerate(source.sizes) for v in source.read(WorkItem(0, p, 0, n)).columns["x"]
    ]


def test_warm_open_through_the_disk_cache_sends_no_request_per_file(slow_s3: Any, tmp_path: Path) -> None:
    from pipeline.access.cachedfs import cached_filesystem
    from pipeline.reader.config import ReadOptions
    from pipeline.reader.source import DatasetSource

    bucket, log = slow_s3
    url = f"{bucket}/ds"
    write_files(url, [range(0, 40), range(40, 80), range(80, 100)])
    cache = tmp_path / "cache"

    fs, path = cached_filesystem(url, cache_dir=cache)
    since = time.time()
    assert read_source(DatasetSource(path, ReadOptions(filesystem=fs))) == list(range(100))
    cold = requests(log, since)
    heads = [r for r in cold if r.startswith("HEAD") and r.endswith(".parquet")]
    assert sorted(heads) == sorted(set(heads)) and len(heads) == 3, cold  # one HEAD per data file
    assert any(r.startswith("GET") and "part-00000" in r for r in cold)

    fs, path = cached_filesystem(url, cache_dir=cache)  # a new handler, as in a new process
    since = time.time()
    assert read_source(DatasetSource(path, ReadOptions(filesystem=fs))) == list(range(100))
    warm = requests(log, since)
    assert not [r for r in warm if "part-" in r or "_common_metadata" in r], warm  # sizes from the listing
    assert len(warm) == 1 and "list-type=2" in warm[0], warm  # the listing, nothing else


def test_a_rewritten_file_is_read_anew_never_from_the_old_entries(slow_s3: Any, tmp_path: Path) -> None:
    from pipeline.access.cachedfs import cached_filesystem
    from pipeline.reader.config import ReadOptions
    from pipeline.reader.source import DatasetSource

    bucket, _ = slow_s3
    url = f"{bucket}/rw"
    write_files(url, [range(0, 32)])
    fs, path = cached_filesystem(url, cache_dir=tmp_path / "cache")
    assert read_source(DatasetSource(path, ReadOptions(filesystem=fs))) == list(range(32))
    time.sleep(1.1)  # S3 mtimes have whole seconds
    write_files(url, [range(100, 132)])  # same size, other bytes
    assert read_source(DatasetSource(path, ReadOptions(filesystem=fs))) == list(range(100, 132))
    write_files(url, [range(200, 248)])  # another size
    assert read_source(DatasetSource(path, ReadOptions(filesystem=fs))) == list(range(200, 248))


def test_concurrent_opens_of_one_file_send_one_head(slow_s3: Any) -> None:
    from pipeline.storage import RemoteReads

    bucket, log = slow_s3
    write_files(f"{bucket}/one", [range(0, 64)])
    fs, root = resolve(f"{bucket}/one")
    reads = RemoteReads(fs)
    barrier = threading.Barrier(8)
    sizes = []

    def open_it() -> None:
        barrier.wait()
        with reads.open(f"{root}/part-00000.parquet") as fh:
            sizes.append(fh.size())

    since = time.time()
    threads = [threading.Thread(target=open_it) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(sizes)) == 1 and len(sizes) == 8
    assert [r for r in requests(log, since) if r.startswith("HEAD")] == [f"HEAD /{root}/part-00000.parquet"]
    reads.close()


def test_reader_threads_follow_what_reads_cost(
    slow_s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the disk cache: many threads while reads go to the store, the CPU cores once
    they are hits, however long a hit took (the footers of an open are read by many threads
    at once: waiting for the GIL stretched hits past 1 ms, and the warm reader got cores + 1
    threads, 10-17% more CPU per row); no latency probe when the open made requests already."""
    from pipeline.access.cachedfs import cached_filesystem
    from pipeline.access.disk import DiskCache
    from pipeline.reader.config import ReadOptions
    from pipeline.reader.source import DatasetSource
    from pipeline.storage import StorageConfig, read_threads

    bucket, log = slow_s3
    url = f"{bucket}/thr"
    write_files(url, [range(0, 64), range(64, 128)])
    config = StorageConfig()
    counts = []
    slow_hit = DiskCache._load

    def slowed(self: Any, key: str, length: int) -> Any:
        time.sleep(0.003)
        return slow_hit(self, key, length)

    for state in ("cold", "warm"):
        if state == "warm":
            monkeypatch.setattr(DiskCache, "_load", slowed)  # as hits waiting for the GIL
        fs, path = cached_filesystem(url, cache_dir=tmp_path / "cache")
        handler = fs.handler
        handler._read_times.clear()
        DatasetSource(path, ReadOptions(filesystem=fs))
        latency = handler.observed_latency()
        assert latency is not None
        since = time.time()
        counts.append((read_threads(fs, path, cpu_threads=2, config=config), latency))
        assert requests(log, since) == []  # no probe
    (cold, cold_latency), (warm, warm_latency) = counts
    assert warm_latency < cold_latency and warm <= cold, counts
    assert cold > 2 and warm == 2 and warm_latency == 0, counts
    assert np.isfinite(cold_latency)


def test_a_missing_dataset_on_a_given_filesystem_is_a_clean_error(slow_s3: Any, tmp_path: Path) -> None:
    import pyarrow.fs as pafs

    from pipeline.access.cachedfs import cached_filesystem
    from pipeline.errors import DatasetError
    from pipeline.reader.config import ReadOptions
    from pipeline.reader.source import DatasetSource

    bucket, _ = slow_s3
    fs, root = resolve(f"{bucket}/nothing-here")
    cached, _ = cached_filesystem(root, filesystem=fs, cache_dir=tmp_path / "cache")
    local = str(tmp_path / "nothing-here")
    for filesystem, path, url in (
        (fs, root, f"{bucket}/nothing-here"),
        (cached, root, f"{bucket}/nothing-here"),  # named by its store's URL, through the cache too
        (pafs.LocalFileSystem(), local, f"file://{local}"),
    ):
        with pytest.raises(DatasetError, match=f"^{url} does not exist"):
            DatasetSource(path, ReadOptions(filesystem=filesystem))


def test_a_cold_open_reads_common_metadata_once(slow_s3: Any) -> None:
    """The commit check (which files _common_metadata lists) and the Unischema read share one read:
    two round trips less per open than reading it for each."""
    from pipeline.reader.config import ReadOptions
    from pipeline.reader.source import DatasetSource

    bucket, log = slow_s3
    url = f"{bucket}/once"
    write_files(url, [range(0, 20), range(20, 40)])
    for open_ in (
        lambda: DatasetSource(url, ReadOptions()),  # by URL: list_dataset_files
        lambda: DatasetSource(resolve(url)[1], ReadOptions(filesystem=resolve(url)[0])),  # a given filesystem
    ):
        since = time.time()
        source = open_()  # lists, checks what _common_metadata commits, reads the Unischema
        seen = [r for r in requests(log, since) if r.startswith("GET") and r.endswith("_common_metadata")]
        assert len(seen) <= 1, requests(log, since)
        assert read_source(source) == list(range(40))


def test_an_s3_url_open_lists_first_with_no_existence_check_before(slow_s3: Any) -> None:
    """``s3://bucket/prefix`` (resolved by the dataset listing, not a path on a filesystem):
    the listing is the first request -- no ``HEAD`` and one-key listing of the folder before
    it (2 round trips) -- and a missing prefix is still a clean error."""
    from pipeline.errors import DatasetError
    from pipeline.reader.config import ReadOptions
    from pipeline.reader.source import DatasetSource

    bucket, log = slow_s3
    url = f"{bucket}/listed"
    write_files(url, [range(0, 40), range(40, 80)])
    since = time.time()
    source = DatasetSource(url, ReadOptions())
    assert read_source(source) == list(range(80))
    sent = requests(log, since)
    assert sent[0].startswith("GET /") and "list-type=2" in sent[0], sent
    assert not any(r.startswith("HEAD") and r.rstrip("/").endswith("/listed") for r in sent), sent
    assert sum("list-type=2" in r for r in sent) == 1, sent
    with pytest.raises(DatasetError, match="does not exist"):
        DatasetSource(f"{bucket}/not-there", ReadOptions())
    single = DatasetSource(f"{bucket}/listed/part-00000.parquet", ReadOptions())  # a file URL: HEAD first
    assert read_source(single) == list(range(40))


def test_listed_files_are_read_without_a_head(slow_s3: Any) -> None:
    """The listing gives every file's size: ``_common_metadata``, the footers and the row groups
    are ranged GETs, with no ``HEAD`` before them (one round trip less per file at open), whether
    the dataset is opened by URL, on a given filesystem, or for random access."""
    from pipeline.access import open_dataset
    from pipeline.reader.config import ReadOptions
    from pipeline.reader.source import DatasetSource

    bucket, log = slow_s3
    url = f"{bucket}/nohead"
    write_files(url, [range(0, 40), range(40, 80), range(80, 96)])
    fs, path = resolve(url)
    for open_ in (
        lambda: DatasetSource(url, ReadOptions()),
        lambda: DatasetSource(path, ReadOptions(filesystem=fs)),
    ):
        since = time.time()
        source = open_()
        opened = requests(log, since)
        assert read_source(source) == list(range(96))
        sent = requests(log, since)
        assert not [r for r in sent if r.startswith("HEAD")], sent
        footers = [r for r in opened if r.startswith("GET") and ".parquet" in r]
        assert sorted(footers) == sorted(set(footers)) and len(footers) == 3, opened  # one GET per footer
        assert len(sent) - len(opened) == 7, sent  # one GET per row group (16 rows each: 3 + 3 + 1)
    since = time.time()
    dataset = open_dataset(url)
    assert [int(dataset[i]["x"]) for i in (0, 41, 95)] == [0, 41, 95]
    assert not [r for r in requests(log, since) if r.startswith("HEAD")], requests(log, since)


def test_process_workers_read_a_store_as_threads_do(slow_s3: Any) -> None:
    """Worker processes get the listed sizes with the source: they read footers and row groups
    as GETs, no HEAD, and give the threads' batches."""
    import pipeline

    bucket, log = slow_s3
    url = f"{bucket}/procs"
    write_files(url, [range(0, 40), range(40, 80)])

    def batches(kind: str) -> list[list[int]]:
        with pipeline.open_loader(
            url, batch_size=16, shuffle=False, num_epochs=1, workers=2, workers_type=kind
        ) as loader:
            return [b["x"].tolist() for b in loader]

    threads = batches("thread")
    since = time.time()
    assert batches("process") == threads and [v for b in threads for v in b] == list(range(80))
    assert not [r for r in requests(log, since) if r.startswith("HEAD")], requests(log, since)


def test_a_dataset_on_a_given_filesystem_is_named_by_its_store(slow_s3: Any, tmp_path: Path) -> None:
    """Logs, errors and the loader's state name ``s3://bucket/prefix``, through the disk cache too
    (they said ``file://<cwd>/bucket/prefix``); a local folder keeps its ``file://`` URL."""
    import pyarrow.fs as pafs

    from pipeline.access.cachedfs import cached_filesystem
    from pipeline.reader.config import ReadOptions
    from pipeline.reader.source import DatasetSource

    bucket, _ = slow_s3
    url = f"{bucket}/named"
    write_files(url, [range(0, 8)])
    fs, path = resolve(url)
    assert DatasetSource(path, ReadOptions(filesystem=fs)).url == url
    cached, path = cached_filesystem(url, cache_dir=tmp_path / "cache")
    assert DatasetSource(path, ReadOptions(filesystem=cached)).url == url
    local = tmp_path / "local"
    local.mkdir()
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"x": [1, 2]}), local / "part-0.parquet")
    assert DatasetSource(str(local), ReadOptions(filesystem=pafs.LocalFileSystem())).url == local.as_uri()


def test_total_bytes_comes_from_the_listing(slow_s3: Any) -> None:
    """``pipeline inspect`` and ``pipeline bench`` sum the data files' sizes from the listing:
    no HEAD per file (a dataset of thousands of files asked for each one)."""
    from pipeline.dataset import list_dataset_files

    bucket, log = slow_s3
    url = f"{bucket}/sized"
    write_files(url, [range(0, 10), range(10, 30)])
    fs, _ = resolve(url)
    since = time.time()
    files = list_dataset_files(url)
    total = files.total_bytes
    assert not [r for r in requests(log, since) if r.startswith("HEAD")], requests(log, since)
    assert total == sum(fs.get_file_info(f).size for f in files.files) > 0


def test_a_cold_open_reads_footers_in_the_round_trip_of_common_metadata(slow_s3: Any) -> None:
    """The footers of the listed files are requested with ``_common_metadata``, not after its
    answer (2 sequential round trips after the listing, not 3), and the partial file of an
    interrupted attempt beside a committed dataset is not read from: its footer's failure is
    ignored, its rows are not read."""
    import json as json_module

    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.reader.config import ReadOptions
    from pipeline.reader.source import DatasetSource
    from pipeline.storage.commit import INDEX_KEY

    bucket, log = slow_s3
    url = f"{bucket}/early"
    write_files(url, [range(0, 20), range(20, 40)])
    fs, root = resolve(url)
    index = {f"part-{i:05d}.parquet": 2 for i in range(2)}
    with fs.open_output_stream(f"{root}/_common_metadata") as out:
        pq.write_metadata(pa.schema([("x", pa.int64())], metadata={INDEX_KEY: json_module.dumps(index)}), out)
    with fs.open_output_stream(f"{root}/part-00002-0123456789ab.parquet") as out:
        out.write(b"PAR1 cut short by SIGKILL")  # an interrupted attempt's file, not committed
    since = time.time()
    source = DatasetSource(url, ReadOptions())
    time.sleep(0.1)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    records = [r for r in records if r["t"] >= since]
    sent = [r for r in records if "req" in r]
    common = next(r for r in sent if r["req"].endswith("_common_metadata"))
    answered = min(
        r["t"] for r in records if r["conn"] == common["conn"] and "bytes" in r and r["t"] > common["t"]
    )
    footers = [r["t"] for r in sent if r["req"].startswith("GET") and ".parquet" in r["req"]]
    assert len(footers) == 3 and max(footers) < answered, sent  # before its answer: the same round trip
    assert read_source(source) == list(range(40))


def test_a_warm_loader_reads_while_the_store_is_listed_and_never_serves_a_changed_dataset(
    slow_s3: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Through the disk cache, a loader starts on the listing its cache kept while the store is
    listed again (its only request), and checks that listing before the first batch: a dataset
    rewritten or deleted on the store since is opened anew (or fails), never read from old entries."""
    import logging

    import pyarrow.fs as pafs

    import pipeline
    from pipeline.errors import DatasetError

    bucket, log = slow_s3
    url = f"{bucket}/spec"
    cache = tmp_path / "cache"
    write_files(url, [range(0, 40), range(40, 80)])

    def read_all(expect_speculative: bool) -> tuple[list[int], int]:
        loader = pipeline.open_loader(url, cache_dir=cache, batch_size=16, shuffle=False, workers=2)
        assert loader.reader.source.speculative is expect_speculative  # until the loader starts
        with loader:
            assert not loader.reader.source.speculative  # checked before anything is handed out
            values = [int(v) for b in loader for v in b["x"]]
            return values, len(loader)

    assert read_all(False) == (list(range(80)), 5)  # cold: no listing kept yet
    since = time.time()
    assert read_all(True) == (list(range(80)), 5)  # warm: opened at once on the kept listing
    warm = requests(log, since)
    assert len(warm) == 1 and "list-type=2" in warm[0], warm  # the listing: sent, and nothing else

    time.sleep(1.1)  # S3 mtimes have whole seconds
    write_files(url, [range(100, 140), range(140, 180), range(180, 200)])  # rewritten, one file more
    caplog.set_level(logging.INFO, logger="pipeline.access.cachedfs")
    assert read_all(True) == (list(range(100, 200)), 7)
    assert "changed on the store since it was last listed" in caplog.text
    assert read_all(True) == (list(range(100, 200)), 7)  # and kept: the next open goes straight on

    fs, root = resolve(url)
    fs.delete_dir_contents(root)
    assert fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True)) == []
    loader = pipeline.open_loader(url, cache_dir=cache, batch_size=16, shuffle=False)
    with pytest.raises(DatasetError), loader:  # not the cached rows of a dataset that is gone
        list(loader)


def test_open_loader_with_a_cache_dir_sizes_a_warm_reader_for_the_disk(slow_s3: Any, tmp_path: Path) -> None:
    """``open_loader(url, cache_dir=...)`` sizes its threads from what the cache's reads cost: many
    while they go to the store, the CPU count once they are hits (it took the store's latency
    from the listing, and a warm reader got 15-17 threads on 2 cores, reading 15-25% slower)."""
    import pipeline
    from pipeline.reader.workers_cores import usable_cores

    bucket, _ = slow_s3
    url = f"{bucket}/sized"
    write_files(url, [range(0, 64), range(64, 128)])
    threads = []
    for _ in ("cold", "warm"):
        with pipeline.open_loader(url, cache_dir=tmp_path / "cache", batch_size=32, shuffle=False) as loader:
            assert sorted(int(v) for b in loader for v in b["x"]) == list(range(128))
            threads.append(loader.reader.workers)
    cold, warm = threads
    assert cold > usable_cores().cores and warm == usable_cores().cores, threads
