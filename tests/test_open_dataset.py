"""open_dataset: ds[i] in stored order over uneven row groups, slices, pickling, torch DataLoader."""

from __future__ import annotations

import pickle

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

import pipeline
from pipeline.access import RowGroupIndex, open_dataset
from pipeline.errors import ConfigError, DatasetError
from tests.access_data import UNEVEN, assert_row, expected, write_uneven

MODES = ["stream", "memory", "disk"]


@pytest.fixture
def url(tmp_path):
    return write_uneven(tmp_path / "ds")


def open_mode(url, mode, tmp_path, **kwargs):
    cache_dir = tmp_path / "cache" if mode == "disk" else None  # a cache_dir turns "stream" into "disk"
    return open_dataset(url, cache=mode, cache_dir=cache_dir, **kwargs)


def stored_rows(url):
    """Every row in stored order, read file by file and row group by row group with pyarrow."""
    from pathlib import Path

    rows = []
    for path in sorted(Path(url).glob("*.parquet")):
        parquet = pq.ParquetFile(path)
        for g in range(parquet.num_row_groups):
            rows.extend(parquet.read_row_group(g).to_pylist())
    return rows


def test_exported_from_pipeline():
    assert pipeline.open_dataset is open_dataset


def test_index_bisects_uneven_row_groups():
    index = RowGroupIndex.from_sizes([3, 0, 1, 7])
    pieces, local = index.locate(np.arange(11))
    assert pieces.tolist() == [0, 0, 0, 2, 3, 3, 3, 3, 3, 3, 3]
    assert local.tolist() == [0, 1, 2, 0, 0, 1, 2, 3, 4, 5, 6]
    groups = index.groups(np.array([10, 0, 3, 1]))
    assert [(p, loc.tolist(), pos.tolist()) for p, loc, pos in groups] == [
        (0, [0, 1], [1, 3]),
        (2, [0], [2]),
        (3, [6], [0]),
    ]


@pytest.mark.parametrize("mode", MODES)
def test_every_index_is_the_row_in_stored_order(url, tmp_path, mode):
    stored = stored_rows(url)
    assert [pq.ParquetFile(p).metadata.num_row_groups for p in sorted((tmp_path / "ds").iterdir())] == [
        len(g) for g in UNEVEN
    ]
    ds = open_mode(url, mode, tmp_path)
    assert len(ds) == len(stored) == sum(map(sum, UNEVEN))
    for i in range(len(ds)):
        row = ds[i]
        assert_row(row, i)
        assert int(row["id"]) == stored[i]["id"]
    assert isinstance(ds[0]["x"], np.ndarray) and ds[0]["x"].dtype == np.float32
    assert ds[0]["x"].flags.writeable and ds[4]["tokens"].flags.writeable


@pytest.mark.parametrize("mode", MODES)
def test_slices_and_index_lists_read_each_row_group_once(url, tmp_path, mode):
    ds = open_mode(url, mode, tmp_path)
    n = len(ds)
    batch = ds[2:20:3]
    assert batch["id"].tolist() == list(range(2, 20, 3))
    assert batch["x"].shape == (6, 2) and batch["x"].dtype == np.float32
    assert ds[::-1]["id"].tolist() == list(range(n))[::-1]
    assert ds[5:5]["id"].shape == (0,)
    picked = ds[[5, 0, 5, -1, 30]]
    assert picked["id"].tolist() == [5, 0, 5, n - 1, 30]
    assert picked["name"].tolist() == [expected(i)["name"] for i in [5, 0, 5, n - 1, 30]]
    for k, i in enumerate([5, 0, 5, n - 1, 30]):
        np.testing.assert_array_equal(picked["tokens"][k], expected(i)["tokens"])
    assert ds[np.array([3, 4], dtype=np.int32)]["id"].tolist() == [3, 4]
    assert ds[np.arange(n) % 7 == 0]["id"].tolist() == list(range(0, n, 7))
    if mode != "memory":  # three row groups touched, each read once
        before = ds.cache_info()["misses"]
        ds2 = open_mode(url, mode, tmp_path)
        ds2[[0, 1, 2, 12, 13, 31, 30]]
        assert ds2.cache_info()["misses"] == 3, before


def test_negative_and_out_of_range_indices(url, tmp_path):
    ds = open_dataset(url)
    n = len(ds)
    assert int(ds[-1]["id"]) == n - 1 and int(ds[-n]["id"]) == 0
    assert int(ds[np.int64(3)]["id"]) == 3
    for bad in (n, -n - 1, 10**9):
        with pytest.raises(IndexError, match="out of range"):
            ds[bad]
    with pytest.raises(IndexError):
        ds[[0, n]]
    with pytest.raises(TypeError):
        ds["id"]
    with pytest.raises(TypeError):
        ds[1.5]


@pytest.mark.parametrize("mode", MODES)
def test_pickles_without_open_state(url, tmp_path, mode):
    ds = open_mode(url, mode, tmp_path)
    size_before = len(pickle.dumps(ds))
    ds[:]  # fills the caches of this process
    data = pickle.dumps(ds)
    assert len(data) == size_before < 4000
    copy = pickle.loads(data)
    assert copy._opened is None
    assert_row(copy[9], 9)
    assert copy[:]["id"].tolist() == list(range(len(ds)))


@pytest.fixture(scope="module")
def resource_tracker():
    """Spawn starts multiprocessing's resource tracker for the rest of the run: start it before
    the leak check's snapshot (a module fixture is set up before the function ones)."""
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataloader_worker_processes(url, tmp_path, context, resource_tracker):
    ds = open_mode(url, "disk" if context == "spawn" else "stream", tmp_path, fields=["id", "x"])
    loader = DataLoader(ds, batch_size=4, num_workers=2, multiprocessing_context=context)
    batches = list(loader)
    assert isinstance(batches[0]["id"], torch.Tensor) and batches[0]["x"].shape == (4, 2)
    assert torch.cat([b["id"] for b in batches]).tolist() == list(range(len(ds)))


@pytest.mark.parametrize("world", [1, 3])
def test_distributed_sampler_covers_every_row(url, world):
    ds = open_dataset(url, fields="id")
    seen = []
    for rank in range(world):
        sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=5)
        ids = torch.cat([b["id"] for b in DataLoader(ds, batch_size=5, sampler=sampler)]).tolist()
        assert len(ids) == -(-len(ds) // world)
        seen.extend(ids)
    assert set(seen) == set(range(len(ds)))
    assert len(seen) - len(ds) < world  # DistributedSampler pads by at most world - 1 rows


def test_memory_estimate_skips_empty_row_groups(tmp_path):
    url = write_uneven(tmp_path / "e", [[0, 4], [4]])
    with pytest.raises(ConfigError, match="memory"):  # tokens and names count: about 100 bytes a row
        open_dataset(url, cache="memory", fields=["name", "tokens"], cache_limit=400)
    assert (
        open_dataset(url, cache="memory", fields=["name", "tokens"], cache_limit=4000)[7]["name"] == "row-7"
    )


def test_memory_limit_refusal(url):
    with pytest.raises(ConfigError, match=r'cache="memory" needs about .* HINT: use cache="stream"'):
        open_dataset(url, cache="memory", cache_limit=100)
    ds = open_dataset(url, cache="memory", cache_limit=10**6, preload=True)
    info = ds.cache_info()
    assert info["complete"] and 0 < info["bytes"] <= 10**6


@pytest.mark.parametrize("mode", ["stream", "memory"])
def test_transforms(url, mode):
    from pipeline.reader.transform import transformed_specs  # noqa: F401  (the reader's semantics)

    def double(row):
        return {"id": row["id"], "twice": row["x"] * 2}

    ds = open_dataset(url, cache=mode, transform=double)
    assert ds[3]["twice"].tolist() == [1.5, 1.5]
    batch = ds[[3, 4]]
    assert batch["twice"].shape == (2, 2) and batch["id"].tolist() == [3, 4]

    spec = _transform_spec(lambda frame: frame.assign(id=frame["id"] * 10))
    ds = open_dataset(url, cache=mode, fields=["id", "x"], transform=spec)
    assert ds[[1, 30]]["id"].tolist() == [10, 300] and int(ds[7]["id"]) == 70


def _transform_spec(func):
    try:
        from pipeline.format import TransformSpec
    except ImportError:
        from petastorm import TransformSpec
    return TransformSpec(func)


def test_options_are_checked(url, tmp_path):
    with pytest.raises(ConfigError, match="cache must be one of"):
        open_dataset(url, cache="ram")
    with pytest.raises(ConfigError, match="cache_limit"):
        open_dataset(url, cache_limit=-1)
    with pytest.raises(ConfigError, match="preload"):
        open_dataset(url, preload=True)
    with pytest.raises(DatasetError, match="does not exist"):
        open_dataset(tmp_path / "missing")
    with pytest.raises(DatasetError, match="nope"):
        open_dataset(url, fields=["nope"])


@pytest.mark.spark
def test_petastorm_dataset_rows_equal_the_stream(spark, tmp_path):
    from pipeline.reader.config import ReaderConfig, ReadOptions
    from pipeline.reader.reader import Reader
    from pipeline.reader.source import DatasetSource
    from tests.datasets import write_petastorm_dataset

    url = write_petastorm_dataset(spark, tmp_path / "pt", rows=40, files=3)
    source = DatasetSource(url, ReadOptions())
    reader = Reader(
        source, ReaderConfig(shuffle=False, workers=0), batch_size=7, drop_last=False, rank=0, world_size=1
    )
    stream = {name: [] for name in source.specs}
    for sel in reader.batches():
        for name in stream:
            stream[name].extend(sel.columns[name][sel.positions])
    for mode in MODES:
        ds = open_mode(url, mode, tmp_path)
        assert len(ds) == 40
        whole = ds[:]
        for i in range(40):
            row = ds[i]
            for name in stream:
                np.testing.assert_array_equal(row[name], stream[name][i])
                np.testing.assert_array_equal(whole[name][i], stream[name][i])
        assert ds[5]["image"].shape == (8, 8, 3) and ds[5]["image"].dtype == np.uint8
