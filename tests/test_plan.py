"""The shuffle/shard plan: a pure function, checked over many seeds x world sizes x layouts."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.reader.plan import epoch_order, epoch_plan, rows_per_rank


def global_rows(sizes):
    """(piece, row) -> global row id in stored order."""
    starts = np.concatenate([[0], np.cumsum(sizes)])
    return lambda piece, row: int(starts[piece]) + row


def rank_rows(sizes, rank, world, **kw):
    gid = global_rows(sizes)
    return [
        gid(it.piece, r)
        for it in epoch_plan(sizes, rank=rank, world_size=world, **kw)
        for r in range(it.start, it.stop)
    ]


@settings(max_examples=600, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 40), min_size=1, max_size=25),
    world=st.integers(1, 9),
    seed=st.integers(0, 2**32 - 1),
    epoch=st.integers(0, 50),
    shuffle=st.booleans(),
    drop_last=st.booleans(),
)
def test_every_row_once_per_epoch_across_ranks(sizes, world, seed, epoch, shuffle, drop_last):
    total = sum(sizes)
    k = rows_per_rank(total, world, drop_last)
    per_rank = [
        rank_rows(sizes, r, world, seed=seed, epoch=epoch, shuffle=shuffle, drop_last=drop_last)
        for r in range(world)
    ]
    # Equal work on every rank: DDP never waits for a short rank.
    assert [len(rows) for rows in per_rank] == [k] * world
    for rows in per_rank:  # no row twice within a rank
        assert len(set(rows)) == len(rows)
    counts = Counter(row for rows in per_rank for row in rows)
    assert set(counts) <= set(range(total))
    if drop_last:
        assert max(counts.values(), default=1) == 1  # disjoint ranks
        assert total - len(counts) == total - k * world < world  # at most world-1 rows dropped
    else:
        assert len(counts) == total  # every row covered
        padding = k * world - total
        assert 0 <= padding < world
        assert sum(counts.values()) - total == padding  # only the documented padding repeats
        if padding == 0:
            assert max(counts.values(), default=1) == 1


def test_rank_ranges_are_contiguous_slices_of_one_global_order():
    sizes = [7, 0, 13, 5, 9, 11]
    whole = rank_rows(sizes, 0, 1, seed=3, epoch=1)
    parts = [rank_rows(sizes, r, 3, seed=3, epoch=1, drop_last=True) for r in range(3)]
    assert [row for part in parts for row in part] == whole[: 3 * (sum(sizes) // 3)]


def test_epochs_and_seeds_give_different_orders():
    sizes = [10] * 20
    base = rank_rows(sizes, 0, 1, seed=0, epoch=0)
    assert rank_rows(sizes, 0, 1, seed=0, epoch=0) == base  # pure: same inputs, same plan
    assert rank_rows(sizes, 0, 1, seed=0, epoch=1) != base
    assert rank_rows(sizes, 0, 1, seed=1, epoch=0) != base
    # seed + epoch would collide here; (seed, epoch) as a sequence does not.
    assert list(epoch_order(20, seed=1, epoch=2, shuffle=True)) != list(
        epoch_order(20, seed=2, epoch=1, shuffle=True)
    )


def test_no_shuffle_is_the_stored_order():
    sizes = [4, 6, 3]
    assert rank_rows(sizes, 0, 1, seed=5, epoch=3, shuffle=False) == list(range(13))
    assert rank_rows(sizes, 1, 2, seed=5, epoch=3, shuffle=False, drop_last=True) == list(range(6, 12))


def test_padding_wraps_to_the_start_of_the_epoch_stream():
    # 10 rows, 4 ranks: 3 rows each, the last rank reads rows 9, 0, 1 (stored order).
    assert rank_rows([10], 3, 4, seed=0, epoch=0, shuffle=False) == [9, 0, 1]
    # fewer rows than ranks: every rank still gets one row
    assert [rank_rows([2], r, 3, seed=0, epoch=0, shuffle=False) for r in range(3)] == [[0], [1], [0]]


def test_empty_dataset_and_bad_rank():
    assert epoch_plan([0, 0], seed=0, epoch=0) == []
    with pytest.raises(ValueError, match="rank must be in"):
        epoch_plan([3], seed=0, epoch=0, rank=2, world_size=2)


class _FakeSource:
    """A dataset of ``sizes`` row groups whose rows hold their global row id (no files)."""

    url = "memory://fake"

    def __init__(self, sizes):
        from pipeline.reader.decode import FieldSpec

        self.sizes = list(sizes)
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self.specs = {"id": FieldSpec("id", "fixed", np.dtype(np.int64), ())}

    def describe(self, item):
        return f"piece {item.piece}"

    def read_into(self, item, out, rows, cancel=None):
        base = self.starts[item.piece]
        out["id"][rows] = np.arange(base + item.start, base + item.stop)


@settings(max_examples=150, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 30), min_size=1, max_size=12),
    world=st.integers(1, 5),
    seed=st.integers(0, 1000),
    batch=st.integers(1, 9),
    buffer=st.integers(0, 40),
    workers=st.sampled_from([0, 1, 3]),
    drop_last=st.booleans(),
)
def test_reader_batches_cover_every_row_once_per_epoch(sizes, world, seed, batch, buffer, workers, drop_last):
    """The whole reader (plan, pool, reorder window, row buffer) over many layouts, 2 epochs."""
    from pipeline.reader import Reader, ReaderConfig

    config = ReaderConfig(seed=seed, num_epochs=2, shuffle_buffer=buffer, workers=workers, read_ahead=1)
    per_rank = []
    for rank in range(world):
        reader = Reader(
            _FakeSource(sizes), config, batch_size=batch, drop_last=drop_last, rank=rank, world_size=world
        )
        epochs = {0: [], 1: []}
        counts = Counter()
        for sel in reader.batches():
            ids = sel.columns["id"][sel.positions].tolist()
            assert len(ids) == batch or not drop_last
            epochs[sel.epoch].append(ids)
            counts[sel.epoch] += 1
        assert counts[0] == counts[1] == reader.batches_per_epoch
        per_rank.append(epochs)
    assert len({len(r[0]) for r in per_rank}) == 1  # equal batch counts on every rank
    total = sum(sizes)
    for epoch in (0, 1):
        rows = Counter(i for r in per_rank for b in r[epoch] for i in b)
        if drop_last:
            assert max(rows.values(), default=1) == 1
            assert total - len(rows) <= (world - 1) + world * (batch - 1)
        else:
            assert set(rows) == set(range(total))
            assert sum(rows.values()) - total == rows_per_rank(total, world, False) * world - total


@pytest.mark.parametrize("max_rows", [1, 7, 1024])
def test_large_row_groups_split_into_items_of_at_most_max_rows_in_the_same_row_order(max_rows):
    sizes = [5000, 3, 0, 1200, 77]
    for rank, world in [(0, 1), (1, 3)]:
        whole = epoch_plan(sizes, seed=4, epoch=2, rank=rank, world_size=world)
        split = epoch_plan(sizes, seed=4, epoch=2, rank=rank, world_size=world, max_item_rows=max_rows)
        assert all(1 <= it.rows <= max_rows for it in split)
        rows = lambda items: [(it.piece, r) for it in items for r in range(it.start, it.stop)]  # noqa: E731
        assert rows(split) == rows(whole)
    with pytest.raises(ValueError, match="max_item_rows"):
        epoch_plan(sizes, seed=0, epoch=0, max_item_rows=0)
