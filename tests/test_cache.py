"""Row-group caches: the stream LRU's bound (measured in Arrow's pool), the disk cache's bound,
locks shared by processes, corrupt entries, and the loading modes of the stream reader."""

from __future__ import annotations

import gc
import multiprocessing
import os
import time

import numpy as np
import pyarrow as pa
import pytest

from pipeline.access import DiskCache, open_dataset
from pipeline.access.source import CachedSource, open_source
from pipeline.errors import ConfigError
from pipeline.reader.config import ReaderConfig, ReadOptions
from pipeline.reader.reader import Reader
from tests.access_data import assert_row, write_uneven

BIG = [[40, 25, 40], [30, 45], [20, 40, 35]]  # 275 rows of 32x32 pixels: ~10 KiB per 10 rows


@pytest.fixture
def big_url(tmp_path):
    return write_uneven(tmp_path / "big", BIG, image=32)


def entries_on_disk(directory) -> list[str]:
    found = []
    for root, _, files in os.walk(directory):
        if os.path.basename(root) not in ("locks", "listings"):
            found.extend(os.path.join(root, f) for f in files)
    return found


def test_stream_lru_stays_within_its_bound_measured_in_arrows_pool(big_url):
    """Arrow memory held between accesses (the LRU's tables) stays under cache_limit, while the
    dataset's row groups together are 4x larger; reading a row group adds transient buffers."""
    limit = 64 * 1024
    ds = open_dataset(big_url, cache_limit=limit)
    gc.collect()
    baseline = pa.total_allocated_bytes()
    held = []
    for k, i in enumerate(np.random.default_rng(0).permutation(len(ds))[:150]):
        assert int(ds[int(i)]["id"]) == i
        if k % 15 == 0:  # pyarrow's reader leaves some buffers to the garbage collector
            gc.collect()
            held.append(pa.total_allocated_bytes() - baseline)
    info = ds.cache_info()
    total = sum(ds._state().rows.read_table(p).nbytes for p in range(len(ds.index.sizes)))
    assert info["misses"] > 8 and info["peak_bytes"] <= limit
    assert max(held) <= limit + 1024, max(held)  # + 64-byte buffer padding
    assert total > 4 * limit


def test_disk_cache_stays_within_its_bound(big_url, tmp_path):
    limit = 120 * 1024
    ds = open_dataset(big_url, cache="disk", cache_dir=tmp_path / "c", cache_limit=limit)
    for i in np.random.default_rng(1).permutation(len(ds))[:120]:
        assert int(ds[int(i)]["id"]) == i
    on_disk = sum(os.path.getsize(p) for p in entries_on_disk(tmp_path / "c"))
    stats = ds.cache_info()["disk"]
    assert stats["evicted"] > 0 and 0 < on_disk <= limit
    assert not [p for p in entries_on_disk(tmp_path / "c") if ".tmp-" in p]


def _read_all(url, cache_dir, queue):
    ds = open_dataset(url, cache="disk", cache_dir=cache_dir, cache_limit=None)
    ids = ds[:]["id"].tolist()
    stats = ds._state().source.options.filesystem.handler.cache.stats
    queue.put((ids, stats.hits, stats.misses, stats.corrupt))


def test_disk_cache_shared_by_concurrent_processes(big_url, tmp_path):
    """Four processes read the same dataset through one cache folder at once: each byte range
    is fetched from the store exactly once (stripe locks), all read the same rows."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_read_all, args=(big_url, tmp_path / "c", queue)) for _ in range(4)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert all(ids == list(range(275)) for ids, *_ in results)
    misses = sum(r[2] for r in results)
    assert misses == len(entries_on_disk(tmp_path / "c")) > 0
    assert sum(r[3] for r in results) == 0 and sum(r[1] for r in results) > 0


def test_corrupt_or_partial_entries_are_read_again_never_served(big_url, tmp_path):
    first = open_dataset(big_url, cache="disk", cache_dir=tmp_path / "c")
    want = first[:]
    paths = sorted(entries_on_disk(tmp_path / "c"), key=os.path.getsize)[-3:]
    with open(paths[0], "r+b") as fh:  # flipped byte
        fh.seek(5)
        byte = fh.read(1)
        fh.seek(5)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with open(paths[1], "r+b") as fh:  # partial write
        fh.truncate(os.path.getsize(paths[1]) // 2)
    with open(paths[2], "wb") as fh:  # empty
        pass
    again = open_dataset(big_url, cache="disk", cache_dir=tmp_path / "c")
    got = again[:]
    for name in want:
        for a, b in zip(want[name], got[name], strict=True):
            np.testing.assert_array_equal(a, b)
    stats = again.cache_info()["disk"]
    assert stats["corrupt"] == 3 and stats["misses"] == 3
    third = open_dataset(big_url, cache="disk", cache_dir=tmp_path / "c")
    third[:]
    assert third.cache_info()["disk"]["corrupt"] == 0 and third.cache_info()["disk"]["misses"] == 0


def test_rewritten_file_is_not_served_from_the_cache(tmp_path):
    url = write_uneven(tmp_path / "ds", [[4, 4]])
    assert_row(open_dataset(url, cache="disk", cache_dir=tmp_path / "c")[5], 5)
    write_uneven(tmp_path / "ds", [[2, 6]])  # same rows, other row groups: other bytes
    os.utime(tmp_path / "ds" / "part-000.parquet", ns=(1, 1))
    ds = open_dataset(url, cache="disk", cache_dir=tmp_path / "c")
    assert ds.index.sizes.tolist() == [2, 6]
    assert_row(ds[5], 5)


def test_disk_cache_unit(tmp_path):
    cache = DiskCache(tmp_path / "c", limit=100)
    assert cache.get("ab" * 20, 3, lambda: b"xyz") == b"xyz"
    assert cache.get("ab" * 20, 3, lambda: b"bad") == b"xyz"  # served from disk
    assert cache.stats.hits == 1 and cache.stats.misses == 1
    with pytest.raises(OSError, match="2 bytes of a 3-byte range"):
        cache.get("cd" * 20, 3, lambda: b"xy")
    assert cache.get("ef" * 20, 200, lambda: b"z" * 200) == b"z" * 200  # larger than the limit: not kept
    assert len(entries_on_disk(tmp_path / "c")) == 1
    with pytest.raises(ConfigError):
        DiskCache(tmp_path / "c", limit=-1)


def test_a_checked_entry_written_in_place_later_is_checked_again(tmp_path):
    """A process checksums an entry once and trusts it while the file is unchanged; a write
    into it afterwards (same size) is seen, and the entry is read again from the store."""
    cache = DiskCache(tmp_path / "c")
    key = "ab" * 20
    assert cache.get(key, 4, lambda: b"good") == b"good"
    time.sleep(1.1)  # the entry settles: its checksum is remembered at the next hit
    assert cache.get(key, 4, lambda: b"miss") == b"good"
    assert cache.get(key, 4, lambda: b"miss") == b"good"
    path = cache.entry_path(key)
    with open(path, "r+b") as fh:  # same size, payload changed in place
        fh.write(b"evil")
    assert cache.get(key, 4, lambda: b"new!") == b"new!"
    assert cache.stats.corrupt == 1 and cache.stats.misses == 2


def _disk_dir(mode, tmp_path):
    return tmp_path / "c" if mode == "disk" else None  # a cache_dir turns "stream" into "disk"


def _stream(source, epochs=2):
    reader = Reader(
        source,
        ReaderConfig(num_epochs=epochs, workers=2, seed=3),
        batch_size=16,
        drop_last=False,
        rank=0,
        world_size=1,
    )
    return np.concatenate([sel.columns["id"][sel.positions].copy() for sel in reader.batches()])


def test_loading_modes_of_the_stream_reader_give_the_same_batches(big_url, tmp_path):
    options = ReadOptions(fields=("id", "image"))
    ids = {
        mode: _stream(open_source(big_url, options, cache=mode, cache_dir=_disk_dir(mode, tmp_path)))
        for mode in ("stream", "memory", "disk")
    }
    assert len(ids["stream"]) == 2 * 275
    assert all(np.array_equal(ids["stream"], v) for v in ids.values())
    assert not entries_on_disk(tmp_path / "implied")
    _stream(open_source(big_url, options, cache_dir=tmp_path / "implied"), epochs=1)  # cache_dir alone: disk
    assert entries_on_disk(tmp_path / "implied")
    assert open_dataset(big_url, cache_dir=tmp_path / "c").cache == "disk"
    memory = open_source(big_url, options, cache="memory")
    assert isinstance(memory, CachedSource)
    _stream(memory, epochs=1)
    assert memory.store.complete
    with pytest.raises(ConfigError, match="memory"):
        open_source(big_url, options, cache="memory", cache_limit=1000)


@pytest.mark.parametrize("mode", ["stream", "memory", "disk"])
def test_mode_results_equal(big_url, tmp_path, mode):
    reference = open_dataset(big_url)[:]
    ds = open_dataset(big_url, cache=mode, cache_dir=_disk_dir(mode, tmp_path))
    order = np.random.default_rng(2).permutation(len(ds))[:60]
    got = ds[order]
    for name in reference:
        for k, i in enumerate(order):
            np.testing.assert_array_equal(got[name][k], reference[name][i])
            np.testing.assert_array_equal(ds[int(i)][name], reference[name][i])


def test_a_partly_warm_cache_sizes_the_reader_from_its_misses(tmp_path):
    """Mostly misses: the shortest miss (the store's latency), not a hit among them; mostly
    hits: what a hit costs."""
    import pyarrow.fs as pafs

    from pipeline.access.cachedfs import CachingHandler

    handler = CachingHandler(pafs.LocalFileSystem(), DiskCache(tmp_path / "c"))
    for seconds in [0.020, 0.025, 0.030, 0.022, 0.028, 0.00007, 0.00008, 0.00006]:
        handler.note_read(seconds)
    assert handler.observed_latency() == 0.020
    for seconds in [0.00007] * 8:
        handler.note_read(seconds)
    assert handler.observed_latency() == 0.00007


@pytest.mark.parametrize("workers_type", ["thread", "process"])
def test_a_loader_on_a_kept_listing_checks_it_before_len_state_and_batches(tmp_path, workers_type):
    """The listing a disk cache kept opens the next loader at once; whatever the loader tells
    first -- its length, its state, a batch -- waits for the store's listing, and a changed
    dataset is opened anew with the same options (a resume point of the old one is refused)."""
    import pyarrow.fs as pafs

    import pipeline
    from pipeline.access.cachedfs import cached_filesystem

    url = write_uneven(tmp_path / "ds", [[8, 8], [8]])
    fs, path = cached_filesystem(url, filesystem=pafs.LocalFileSystem(), cache_dir=tmp_path / "c")
    opts = dict(filesystem=fs, batch_size=4, shuffle=False, workers=2, workers_type=workers_type, config=None)

    def ids(loader):
        return [int(i) for b in loader for i in b["id"]]

    with pipeline.open_loader(path, **opts) as loader:
        assert ids(loader) == list(range(24))
        state = loader.state_dict()
    first = pipeline.open_loader(path, **opts)
    assert first.reader.source.speculative  # opened on the kept listing
    saved = first.state_dict()  # confirmed first: unchanged, the same reader goes on
    assert not first.reader.source.speculative and saved["dataset"] == state["dataset"]
    with first:
        for _ in zip(range(2), first, strict=False):
            pass
        resume = first.state_dict()

    write_uneven(tmp_path / "ds", [[8, 8], [8, 8]])  # rewritten: another file, 8 rows more
    loader = pipeline.open_loader(path, **opts)
    assert loader.reader.source.speculative
    assert len(loader) == 8  # 32 rows, not the kept listing's 24
    assert not loader.reader.source.speculative
    with loader:
        assert ids(loader) == list(range(32))

    write_uneven(tmp_path / "ds", [[8, 8], [8, 8], [8]])
    loader = pipeline.open_loader(path, **opts)
    with pytest.raises(ConfigError, match="dataset"):  # a resume point of another dataset: refused
        loader.load_state_dict(resume)
    loader.close()

    (tmp_path / "ds" / "part-002.parquet").unlink()  # back to the 32 rows
    os.utime(tmp_path / "ds" / "part-001.parquet", ns=(1, 1))  # same bytes, other mtime: changed
    loader = pipeline.open_loader(path, **opts)
    assert loader.reader.source.speculative
    with loader:  # the workers start reading, the listing is checked, then the dataset reopened
        assert loader.reader.workers_type == workers_type
        assert ids(loader) == list(range(32))


def test_a_cache_dir_that_cannot_hold_a_cache_is_a_config_error(tmp_path):
    (tmp_path / "a-file").write_text("in the way")
    with pytest.raises(ConfigError, match="cannot hold a cache") as info:
        DiskCache(tmp_path / "a-file")
    assert "folder this process may write to" in str(info.value)
