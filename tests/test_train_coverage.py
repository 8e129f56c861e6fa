"""Small data: what one training epoch uses. The reader pads shards (``drop_last=False``) so that
2 ranks reading 240 samples in batches of 32 see every sample with the same number of batches."""

from __future__ import annotations

import logging

import pytest

from pipeline.train.coverage import epoch_coverage, log_epoch_coverage
from tests.datasets import write_parquet_dataset


def test_epoch_coverage_counts() -> None:
    dropped = epoch_coverage(240, 2, 32, drop_last=True)
    per_rank = (dropped.rows_per_rank, dropped.batches_per_rank)
    assert per_rank == (120, 3) and (dropped.used, dropped.skipped) == (192, 48)
    assert "skips 48" in dropped.describe()
    kept = epoch_coverage(240, 2, 32, drop_last=False)
    per_rank = (kept.rows_per_rank, kept.batches_per_rank)
    assert per_rank == (120, 4) and (kept.used, kept.skipped, kept.repeated) == (240, 0, 0)
    assert "every sample is used" in kept.describe()
    odd = epoch_coverage(241, 2, 32, drop_last=False)
    assert (odd.rows_per_rank, odd.batches_per_rank, odd.repeated) == (121, 4, 1)
    assert epoch_coverage(5, 8, 32, drop_last=False).batches_per_rank == 1
    assert epoch_coverage(5, 8, 32, drop_last=True).used == 0
    with pytest.raises(ValueError, match="batch_size"):
        epoch_coverage(10, 1, 0, drop_last=False)


@pytest.mark.parametrize("drop_last", [False, True])
def test_two_ranks_240_samples_every_sample_each_epoch_without_drop_last(tmp_path, drop_last, caplog) -> None:
    import pipeline

    url = write_parquet_dataset(tmp_path / "ds", rows=240, files=3, row_group_rows=16)
    with caplog.at_level(logging.INFO, logger="pipeline.train.coverage"):
        coverage = log_epoch_coverage(url, 2, 32, drop_last=drop_last)
    assert coverage.rows == 240 and coverage.describe() in caplog.text
    for epoch in range(2):
        batches, seen = [], []
        for rank in range(2):
            opts = dict(batch_size=32, seed=epoch, shuffle=True, num_epochs=1, rank=rank, world_size=2)
            with pipeline.open_loader(url, fields=["id"], drop_last=drop_last, **opts) as loader:
                sizes = [len(b["id"]) for b in loader for _ in [seen.extend(b["id"].tolist())]]
            batches.append(sizes)
        assert batches[0] == batches[1] and len(batches[0]) == coverage.batches_per_rank  # DDP: same steps
        assert len(set(seen)) == coverage.used
        if not drop_last:
            assert sorted(seen) == list(range(240)) and batches[0] == [32, 32, 32, 24]
