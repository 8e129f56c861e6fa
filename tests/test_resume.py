"""Loader state: stop anywhere, resume in a new loader, get the same batches value for value."""

from __future__ import annotations

import json

import numpy as np
import pytest

import pipeline
from pipeline.errors import ConfigError
from pipeline.reader.shuffle import LiveOrder, replay_epoch
from tests.datasets import write_parquet_dataset

ROWS = 101  # 15 row groups of 7 rows (the last one 3) in 4 files: uneven on purpose


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    return write_parquet_dataset(
        tmp_path_factory.mktemp("resume") / "ds", rows=ROWS, files=4, row_group_rows=7
    )


def batches(url, *, stop_after=None, state=None, **kw):
    """``(epoch, ids, tokens)`` of each batch, and the state after ``stop_after`` batches."""
    kw.setdefault("batch_size", 8)
    kw.setdefault("shuffle_buffer", 16)
    out, saved = [], None
    with pipeline.open_loader(url, config=None, **kw) as loader:
        if state is not None:
            loader.load_state_dict(json.loads(json.dumps(state)))  # as if read back from a file
        for batch in loader:
            out.append((loader.epoch, batch["id"].tolist(), batch["tokens"].tolist(), batch["name"]))
            if stop_after is not None and len(out) == stop_after:
                saved = loader.state_dict()
                break
    return out, saved


def check_save_load(url, cuts, *, workers=(1, 2, 4), take=None, **kw):
    """For each cut: stop after ``cut`` batches, resume in a new loader: the rest equals the reference."""
    reference, _ = batches(url, workers=2, stop_after=take, **kw)
    for i, cut in enumerate(cuts):
        before, after = workers[i % len(workers)], workers[(i + 1) % len(workers)]
        head, state = batches(url, workers=before, stop_after=cut, **kw)
        assert state is not None and json.loads(json.dumps(state)) == state
        rest, _ = batches(
            url, workers=after, state=state, stop_after=None if take is None else take - cut, **kw
        )
        assert head + rest == reference, f"cut after {cut} batches, workers {before} -> {after}"
    return reference


def test_resume_equals_the_uninterrupted_run_at_every_kind_of_cut(url):
    per_epoch = 13  # ceil(101 / 8)
    cuts = [1, 2, 6, per_epoch - 1, per_epoch, per_epoch + 1, 2 * per_epoch - 1]
    reference = check_save_load(url, cuts, seed=3, num_epochs=2)
    assert len(reference) == 2 * per_epoch


def test_state_after_the_last_batch_of_an_epoch_is_the_next_epochs_start(url):
    _, state = batches(url, seed=1, num_epochs=3, stop_after=13)
    assert (state["epoch"], state["batches"], state["rows"]) == (1, 0, 0)
    _, state = batches(url, seed=1, num_epochs=3, stop_after=15)
    assert (state["epoch"], state["batches"], state["rows"]) == (1, 2, 16)
    _, end = batches(url, seed=1, num_epochs=1, stop_after=13)
    rest, _ = batches(url, seed=1, num_epochs=1, state=end)
    assert rest == []  # a finished run stays finished


@pytest.mark.parametrize(
    "options",
    [
        {"world_size": 3, "rank": 2, "drop_last": False},  # padded shard (wraps around the stream)
        {"world_size": 2, "rank": 1, "drop_last": True},
        {"shuffle": False},
        {"shuffle_buffer": 0, "batch_size": 5},
        {"shuffle_buffer": 200},  # a buffer larger than the epoch: everything drawn while draining
    ],
)
def test_resume_with_shards_drop_last_and_buffer_sizes(url, options):
    check_save_load(url, [1, 3, 4, 5], workers=(1, 4, 2), seed=5, num_epochs=2, **options)


def test_resume_in_endless_mode(url):
    check_save_load(url, [3, 13, 30, 40], seed=2, num_epochs=None, take=45)


def test_a_state_before_the_first_batch_and_resuming_twice(url):
    reference, _ = batches(url, seed=4, num_epochs=2)
    with pipeline.open_loader(
        url, config=None, batch_size=8, shuffle_buffer=16, seed=4, num_epochs=2
    ) as fresh:
        start = fresh.state_dict()
    assert (start["epoch"], start["batches"]) == (0, 0)
    assert batches(url, seed=4, num_epochs=2, state=start)[0] == reference
    head, s1 = batches(url, seed=4, num_epochs=2, stop_after=4)
    mid, s2 = batches(url, seed=4, num_epochs=2, state=s1, stop_after=9, workers=0)
    tail, _ = batches(url, seed=4, num_epochs=2, state=s2, workers=3)
    assert head + mid + tail == reference


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"seed": 4}, r"saved with seed=3, this loader has seed=4"),
        ({"batch_size": 4}, r"saved with batch_size=8, this loader has batch_size=4"),
        ({"shuffle_buffer": 32}, r"saved with shuffle_buffer=16, this loader has shuffle_buffer=32"),
        ({"shuffle": False}, r"saved with shuffle=True, this loader has shuffle=False"),
        ({"drop_last": True}, r"saved with drop_last=False, this loader has drop_last=True"),
        ({"fields": ["id", "name"]}, r"saved with fields=None, this loader has fields=\['id', 'name'\]"),
        ({"world_size": 2, "rank": 0}, r"middle of epoch 0 \(after batch 3\) by rank 0 of world_size=1"),
    ],
)
def test_states_from_other_options_are_refused_naming_the_setting(url, change, message):
    _, state = batches(url, seed=3, stop_after=3)
    options = {"batch_size": 8, "shuffle_buffer": 16, "seed": 3, **change}
    with (
        pipeline.open_loader(url, config=None, **options) as loader,
        pytest.raises(ConfigError, match=message),
    ):
        loader.load_state_dict(state)


def test_states_from_another_dataset_or_not_a_state_are_refused(url, tmp_path):
    other = write_parquet_dataset(tmp_path / "other", rows=ROWS, files=4, row_group_rows=8)
    _, state = batches(url, seed=3, stop_after=3)
    with pipeline.open_loader(other, config=None, batch_size=8, shuffle_buffer=16, seed=3) as loader:
        with pytest.raises(
            ConfigError, match=r"from another dataset: .*/ds \(fingerprint \w+\), this loader reads"
        ):
            loader.load_state_dict(state)
        with pytest.raises(ConfigError, match=r"not a loader state: \{'epoch': 0\}"):
            loader.load_state_dict({"epoch": 0})


def test_load_state_dict_only_before_the_first_batch(url):
    _, state = batches(url, seed=3, stop_after=3)
    with pipeline.open_loader(url, config=None, batch_size=8, shuffle_buffer=16, seed=3) as loader:
        next(loader)
        with pytest.raises(RuntimeError, match="before the first batch"):
            loader.load_state_dict(state)


def test_world_size_policy_epoch_boundary_states_reshard_over_the_new_ranks(url):
    """Mid-epoch states need the same world size (refused above); boundary states re-shard."""
    _, state = batches(url, seed=7, num_epochs=3, world_size=2, rank=1, stop_after=7)  # 7 = a whole epoch
    assert (state["epoch"], state["batches"], state["world_size"]) == (1, 0, 2)
    for rank in range(3):
        resumed, _ = batches(url, seed=7, num_epochs=3, world_size=3, rank=rank, state=state)
        fresh, _ = batches(url, seed=7, num_epochs=3, world_size=3, rank=rank)
        assert resumed == [b for b in fresh if b[0] >= 1]  # epochs 1 and 2 of the 3-rank run


def test_replay_gives_the_buffer_of_a_real_run_at_the_cut():
    """The pure replay and a buffer fed the same commits hold the same rows after each batch."""
    sizes = [7, 0, 5, 9, 3, 11]
    for cut in range(1, 9):
        order = LiveOrder(64, 10, np.random.default_rng(1))
        made, start = 0, 0
        for rows in sizes:
            order.commit(np.arange(start, start + rows))
            start += rows
            while order.ready(4) and made < cut:
                order.select(4)
                order.release()
                made += 1
        while order.num_live and made < cut:
            order.select(4)
            order.release()
            made += 1
        replayed = replay_epoch(
            sizes, size=10, batch=4, rng=np.random.default_rng(1), drop_last=False, batches=cut
        )
        committed = replayed.live.tolist()
        assert committed == order.live[: len(committed)].tolist()  # same rows, same order
        assert replayed.rows_delivered == 4 * cut
    with pytest.raises(ValueError, match="cannot cut after 99"):
        replay_epoch(sizes, size=10, batch=4, rng=None, drop_last=False, batches=99)


def test_unknown_engine_is_a_value_error_naming_the_choices(url):
    with pytest.raises(ValueError, match=r"engine must be one of 'pipeline', 'petastorm', got 'torch'"):
        pipeline.open_loader(url, engine="torch")
