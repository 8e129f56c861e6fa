"""open_loader: reproducible, sharded, multi-epoch torch batches with a clean lifecycle."""

from __future__ import annotations

import dataclasses
import threading
import traceback
from collections import Counter

import numpy as np
import pytest
import torch
import yaml

import pipeline
from pipeline.errors import ConfigError, DatasetError, PipelineError
from pipeline.loader.collate import collate_batch
from pipeline.reader.config import LoaderConfig, ReaderConfig
from tests.conftest import REPO
from tests.datasets import write_parquet_dataset, write_petastorm_dataset

ROWS = 101


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    return write_parquet_dataset(
        tmp_path_factory.mktemp("plain") / "ds", rows=ROWS, files=4, row_group_rows=7
    )


@pytest.fixture(scope="module")
def petastorm_url(spark, tmp_path_factory):
    return write_petastorm_dataset(spark, tmp_path_factory.mktemp("ps") / "tiny", rows=80, files=4)


def ids(url, **kw):
    kw.setdefault("batch_size", 8)
    kw.setdefault("shuffle_buffer", 16)
    with pipeline.open_loader(url, config=None, **kw) as loader:
        return [(loader.epoch, batch["id"].tolist()) for batch in loader]


def reader_threads():
    return [t.name for t in threading.enumerate() if t.name.startswith("pipeline-")]


def test_same_batches_whatever_the_number_of_workers(url):
    reference = ids(url, workers=1, seed=3, num_epochs=2)
    for workers in (1, 2, 4):
        for _ in range(5):
            assert ids(url, workers=workers, seed=3, num_epochs=2) == reference
    assert ids(url, workers=0, seed=3, num_epochs=2) == reference  # inline reading too


@pytest.mark.spark
def test_same_image_batches_whatever_the_number_of_workers(petastorm_url):
    def digest(workers):
        with pipeline.open_loader(
            petastorm_url, batch_size=16, workers=workers, seed=1, shuffle_buffer=30
        ) as loader:
            return [(b["id"].tolist(), b["image"].sum().item(), b["name"]) for b in loader]

    first = digest(1)
    assert [digest(w) for w in (2, 4)] == [first, first]
    with pipeline.open_loader(petastorm_url, batch_size=5, num_epochs=1, workers=1) as loader:
        batch = next(loader)
    assert batch["image"].shape == (5, 8, 8, 3) and batch["image"].dtype == torch.uint8
    assert batch["label"].dtype == torch.int32 and batch["vector"].shape == (5, 4)


def test_rows_mix_across_row_groups_and_epochs_seeds_differ(url):
    first = ids(url, seed=0, num_epochs=2)
    epoch0 = [i for e, b in first if e == 0 for i in b]
    epoch1 = [i for e, b in first if e == 1 for i in b]
    assert sorted(epoch0) == sorted(epoch1) == list(range(ROWS))
    assert epoch0 != epoch1
    assert [i for _, b in ids(url, seed=1) for i in b] != epoch0
    # the first batch draws from several row groups (7 rows each), not from one
    assert len({i // 7 for i in first[0][1]}) > 2


def test_no_shuffle_gives_the_stored_order(url):
    assert [i for _, b in ids(url, shuffle=False) for i in b] == list(range(ROWS))


@pytest.mark.parametrize(("world", "drop_last"), [(1, False), (3, False), (3, True), (4, True), (5, False)])
def test_ranks_are_disjoint_equal_and_cover_the_epoch(url, world, drop_last):
    per_rank = []
    for rank in range(world):
        with pipeline.open_loader(
            url, batch_size=6, rank=rank, world_size=world, drop_last=drop_last, seed=9, config=None
        ) as loader:
            batches = [b["id"].tolist() for b in loader]
            assert len(batches) == len(loader)
            per_rank.append(batches)
    assert len({len(b) for b in per_rank}) == 1  # the same number of batches on every rank
    counts = Counter(i for batches in per_rank for b in batches for i in b)
    if drop_last:
        assert max(counts.values()) == 1 and ROWS - len(counts) < world + 6 * world
        assert all(len(b) == 6 for batches in per_rank for b in batches)
    else:
        assert set(counts) == set(range(ROWS))
        assert sum(counts.values()) - ROWS == -(-ROWS // world) * world - ROWS  # the documented padding


def test_endless_mode_crosses_epoch_boundaries(url):
    with pipeline.open_loader(url, batch_size=10, num_epochs=None, seed=2, config=None) as loader:
        per_epoch = len(loader)
        seen: dict[int, list[int]] = {}
        for step, batch in enumerate(loader):
            seen.setdefault(loader.epoch, []).extend(batch["id"].tolist())
            if step + 1 == 3 * per_epoch + 2:
                break
    assert sorted(seen) == [0, 1, 2, 3]
    for epoch in (0, 1, 2):
        assert sorted(seen[epoch]) == list(range(ROWS))
    assert seen[0] != seen[1] != seen[2]


def test_no_rows_gives_no_batches_or_a_clear_error_when_endless(url):
    from pipeline.predicates import in_lambda

    nothing = in_lambda(["id"], lambda i: i < 0)
    with pipeline.open_loader(url, predicate=nothing, config=None) as loader:
        assert len(loader) == 0 and list(loader) == []
    with pytest.raises(DatasetError, match="no rows"):
        pipeline.open_loader(url, predicate=nothing, num_epochs=None, config=None)


def test_ragged_fields_are_padded_and_strings_stay_lists(url):
    with pipeline.open_loader(url, batch_size=9, pad_value=-1, shuffle=False, config=None) as loader:
        batch = next(loader)
    assert batch["name"] == [f"row-{i}" for i in range(9)]
    lengths = [i % 7 + 1 for i in range(9)]
    assert batch["tokens_lengths"].tolist() == lengths
    assert batch["tokens"].shape == (9, 7)
    for row, n in zip(batch["tokens"].tolist(), lengths, strict=True):
        assert row == list(range(n)) + [-1] * (7 - n)


def test_variable_shape_images_get_a_hint():
    images = [np.zeros((4, 4, 3), np.uint8), np.zeros((5, 4, 3), np.uint8)]
    with pytest.raises(PipelineError, match="--size"):
        collate_batch({"image": images}, pad_value=0)


def test_batch_callable_and_transform_spec(url):
    from pipeline.format import TransformSpec

    def crop(batch):
        batch["double"] = batch["id"] * 2
        return batch

    with pipeline.open_loader(
        url, batch_size=5, transform=crop, shuffle=False, fields=["id"], config=None
    ) as loader:
        batch = next(loader)
    assert batch["double"].tolist() == [0, 2, 4, 6, 8] and set(batch) == {"id", "double"}
    spec = TransformSpec(removed_fields=["tokens", "name"])
    with pipeline.open_loader(url, batch_size=5, transform=spec, config=None) as loader:
        assert set(next(loader)) == {"id", "x"}


def test_early_break_stops_every_thread(url):
    with pipeline.open_loader(url, batch_size=4, num_epochs=None, workers=3, config=None) as loader:
        for step, _ in enumerate(loader):
            if step == 2:
                break
        assert reader_threads()
    assert reader_threads() == []


def test_keyboard_interrupt_inside_the_loop_stops_every_thread(url):
    loader = pipeline.open_loader(url, batch_size=4, num_epochs=None, workers=2, config=None)
    with pytest.raises(KeyboardInterrupt), loader:
        for _ in loader:
            raise KeyboardInterrupt
    assert reader_threads() == []


def test_failing_transform_reaches_the_loop_with_traceback_and_row_group(url):
    from pipeline.format import TransformSpec

    def explode(frame):
        if frame["id"].max() > 50:
            raise ValueError("boom in transform")
        return frame

    with (
        pytest.raises(ValueError, match="boom in transform") as info,
        pipeline.open_loader(
            url, transform=TransformSpec(explode), workers=2, batch_size=4, config=None
        ) as loader,
    ):
        for _ in loader:
            pass
    assert any("row group" in note and ".parquet" in note for note in info.value.__notes__)
    frames = [f.name for f in traceback.extract_tb(info.value.__traceback__)]
    # threads: the frames themselves; worker processes (auto, for a TransformSpec func): the
    # worker's traceback as the exception's __cause__, printed above the loop's frames
    assert "explode" in frames or "explode" in str(info.value.__cause__)
    assert reader_threads() == []


def test_failing_batch_callable_reaches_the_loop(url):
    def broken(batch):
        raise KeyError("no such column")

    loader = pipeline.open_loader(url, transform=broken, batch_size=4, config=None)
    with pytest.raises(KeyError, match="no such column") as info, loader:
        next(loader)
    assert any("batch transform" in note for note in info.value.__notes__)
    assert reader_threads() == []


def test_bad_options_name_the_argument(url):
    with pytest.raises(ConfigError, match="batch_size must be >= 1, got 0"):
        pipeline.open_loader(url, batch_size=0)
    with pytest.raises(ConfigError, match="shuffle_buffer must be >= 0"):
        pipeline.open_loader(url, shuffle_buffer=-3)
    with pytest.raises(ConfigError, match="rank must be in"):
        pipeline.open_loader(url, rank=2, world_size=2)
    with pytest.raises(ConfigError, match="key 'batch_size' must be int, got '64'"):
        pipeline.open_loader(url, batch_size="64")
    with pytest.raises(ConfigError, match="pass both"):
        pipeline.open_loader(url, rank=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error(url):
    with pytest.raises(ConfigError, match="sees no CUDA GPU"):
        pipeline.open_loader(url, device="cuda")


def test_cpu_device_gives_unpinned_cpu_tensors(url):
    with pipeline.open_loader(url, device=torch.device("cpu"), batch_size=4, config=None) as loader:
        batch = next(loader)
    assert batch["id"].device.type == "cpu"


def test_reader_yaml_matches_the_dataclass_defaults():
    data = yaml.safe_load((REPO / "conf" / "reader.yaml").read_text())
    assert data["reader"] == dataclasses.asdict(ReaderConfig())
    assert data["loader"] == dataclasses.asdict(LoaderConfig())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_equal_cpu_batches_and_reuse_pinned_buffers(url):
    def run(device):
        with pipeline.open_loader(
            url, batch_size=8, num_epochs=3, device=device, seed=4, pad_value=-1
        ) as loader:
            out = []
            for batch in loader:
                assert batch["id"].device.type == ("cuda" if device else "cpu")
                out.append(
                    {k: v.cpu().clone() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                )
            return out, loader

    cpu, _ = run(None)
    gpu, loader = run("cuda")
    assert len(cpu) == len(gpu)
    for a, b in zip(cpu, gpu, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]) if isinstance(a[key], torch.Tensor) else a[key] == b[key]
    assert loader._slots is not None and reader_threads() == []


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_survive_work_on_the_consumer_stream(url):
    with pipeline.open_loader(url, batch_size=16, num_epochs=4, device="cuda:0", seed=0) as loader:
        total = 0
        for batch in loader:
            x = batch["x"].float()
            for _ in range(20):  # keep the consumer stream busy while the next copy runs
                x = torch.sin(x) + x
            total += int(batch["id"].sum().item())
    assert total == 4 * sum(range(ROWS))


def test_rank_and_world_size_come_from_torch_distributed(url, tmp_path):
    import torch.distributed as dist

    from pipeline.loader import resolve_shard

    assert resolve_shard(None, None) == (0, 1)
    dist.init_process_group("gloo", init_method=(tmp_path / "store").as_uri(), rank=0, world_size=1)
    try:
        assert resolve_shard(None, None) == (0, 1)
        assert resolve_shard(None, 1) == (0, 1)  # the rank is filled in from the process group
        with pipeline.open_loader(url, batch_size=50, config=None) as loader:
            assert len(loader) == 3 and loader.reader.world_size == 1
    finally:
        dist.destroy_process_group()


def test_negative_seed_is_refused_up_front(url):
    with pytest.raises(ConfigError, match="seed must be >= 0, got -1"):
        pipeline.open_loader(url, config=None, seed=-1)


def test_one_field_name_as_a_string(url):
    with pipeline.open_loader(url, config=None, fields="id", batch_size=5, shuffle=False) as loader:
        batch = next(iter(loader))
    assert list(batch) == ["id"]
    assert batch["id"].tolist() == [0, 1, 2, 3, 4]


def test_batch_callable_outputs_collate_by_kind():
    batch = collate_batch(
        {
            "names": np.array(["a", "bb"]),  # numpy strings stay a list, as strings do
            "mixed": [np.array([1], np.int32), np.array([2**40], np.int64)],  # widest dtype wins
            "floats": [1, 2.5],
        },
        pad_value=0,
    )
    assert batch["names"] == ["a", "bb"]
    assert batch["mixed"].dtype == torch.int64 and batch["mixed"].tolist() == [[1], [2**40]]
    assert batch["floats"].tolist() == [1.0, 2.5]


def test_variable_shape_multi_dim_field_is_flagged_at_open_and_fails_when_shapes_mix(tmp_path, caplog):
    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp_path.joinpath("ds").mkdir()
    grids = [[[1, 2], [3, 4]], [[1, 2, 3]], [[5]]]  # 2-D rows of different shapes
    pq.write_table(pa.table({"grid": grids, "id": [0, 1, 2]}), tmp_path / "ds" / "part-0.parquet")
    with caplog.at_level("WARNING", logger="pipeline.loader.loader"):
        loader = pipeline.open_loader(tmp_path / "ds", config=None, shuffle=False)
    assert "field 'grid' has a variable shape (?, ?)" in caplog.text and "--size" in caplog.text
    with loader, pytest.raises(PipelineError, match="--size"):
        next(iter(loader))
    with pipeline.open_loader(tmp_path / "ds", config=None, fields=["id"], shuffle=False) as loader:
        assert next(iter(loader))["id"].tolist() == [0, 1, 2]
    crop = lambda b: {**b, "grid": [np.asarray(g)[:1, :1] for g in b["grid"]]}  # noqa: E731
    with pipeline.open_loader(tmp_path / "ds", config=None, transform=crop, shuffle=False) as loader:
        assert next(iter(loader))["grid"].tolist() == [[[1]], [[1]], [[5]]]


def test_batches_the_loop_holds_are_never_overwritten_and_dropped_ones_are_recycled(url):
    """CPU batches reuse the memory of batches nobody refers to any more (no new pages to
    fault in), never of one still held -- whole, as a view, or as a numpy array."""
    from pipeline.loader.collate import RecyclingAllocator

    held, copies = [], []
    with pipeline.open_loader(url, batch_size=8, shuffle_buffer=16, seed=5, num_epochs=4) as loader:
        for i, batch in enumerate(loader):
            ids_ = batch["id"]
            if i % 3 == 0:  # hold some: as they are, as a view, as numpy
                held.append([ids_, ids_[2:], ids_.numpy()][i % 9 // 3])
                copies.append(held[-1].clone() if isinstance(held[-1], torch.Tensor) else held[-1].copy())
            del batch, ids_
    assert len(held) > 10
    for kept, copy in zip(held, copies, strict=True):
        assert (kept == copy).all()  # nothing written over what the loop kept

    alloc = RecyclingAllocator(keep=2)
    first = alloc("x", (64, 3), np.float32)
    address = first.data_ptr()
    view = first[1:]
    del first
    assert alloc("x", (64, 3), np.float32).data_ptr() != address  # a view still refers to it
    del view
    assert alloc("x", (64, 3), np.float32).data_ptr() == address  # nobody does: written again
    assert alloc("x", (63, 3), np.float32).shape == (63, 3)  # another shape: a fresh array
