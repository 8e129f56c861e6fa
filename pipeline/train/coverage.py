"""How much of the training set one epoch uses, said up front by every training job.

Each rank reads ``rows_per_rank`` rows per epoch (:func:`pipeline.reader.plan.rows_per_rank`):
the reader pads the shards by wrapping around (``drop_last=False``), so every rank gets
``ceil(rows / world)`` rows and the same number of batches -- the last one partial -- and every
sample is used (a few twice when ``rows`` is not a multiple of ``world``); or it drops the uneven
tail and each rank's last partial batch (``drop_last=True``), so ``rows - world * full_batches *
batch_size`` samples are skipped each epoch (a different set each epoch, since the order is
reshuffled). :func:`epoch_coverage` computes both; :func:`log_epoch_coverage` logs it on rank 0
before the first epoch, as a warning when samples are skipped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

__all__ = ["EpochCoverage", "dataset_rows", "epoch_coverage", "log_epoch_coverage"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpochCoverage:
    """What one epoch reads, for ``rows`` rows on ``world_size`` ranks."""

    rows: int
    world_size: int
    batch_size: int
    drop_last: bool
    rows_per_rank: int
    """Rows each rank reads (padded or trimmed shard)."""
    batches_per_rank: int
    """Optimizer steps per epoch, the same on every rank."""
    used: int
    """Distinct samples trained on per epoch."""
    skipped: int
    """Samples not trained on this epoch (``rows - used``)."""
    repeated: int
    """Padding rows: samples read twice in the epoch to even out the shards."""

    def describe(self) -> str:
        """One sentence for the log."""
        head = (
            f"each epoch: {self.rows:,} samples on {self.world_size} rank(s), {self.rows_per_rank:,} per "
            f"rank in {self.batches_per_rank} batch(es) of up to {self.batch_size}"
        )
        if self.skipped:
            return (
                f"{head}; drop_last skips {self.skipped:,} of them ({self.used:,} used): the uneven shard "
                f"tail and each rank's last partial batch, a different set each epoch"
            )
        extra = f" ({self.repeated} read twice to even out the shards)" if self.repeated else ""
        return f"{head}, the last one partial if need be: every sample is used{extra}"


def epoch_coverage(rows: int, world_size: int, batch_size: int, *, drop_last: bool) -> EpochCoverage:
    """Samples used and skipped per epoch (see the module doc).

    Raises:
        ValueError: ``rows`` < 0, or ``world_size`` or ``batch_size`` < 1.
    """
    if rows < 0 or world_size < 1 or batch_size < 1:
        raise ValueError(
            f"need rows >= 0, world_size >= 1, batch_size >= 1; got {rows}, {world_size}, {batch_size}"
        )
    if drop_last:
        per_rank = rows // world_size
        batches = per_rank // batch_size
        used = world_size * batches * batch_size
        return EpochCoverage(rows, world_size, batch_size, True, per_rank, batches, used, rows - used, 0)
    per_rank = -(-rows // world_size)
    batches = -(-per_rank // batch_size)
    return EpochCoverage(
        rows, world_size, batch_size, False, per_rank, batches, rows, 0, per_rank * world_size - rows
    )


def dataset_rows(url: str) -> int:
    """Rows of the dataset at ``url`` from its Parquet footers (no data read)."""
    import pyarrow.parquet as pq

    from pipeline.dataset import list_dataset_files

    files = list_dataset_files(url)
    total = 0
    for path in files.files:
        with files.filesystem.open_input_file(path) as handle:
            total += pq.ParquetFile(handle).metadata.num_rows
    return total


def log_epoch_coverage(url: str, world_size: int, batch_size: int, *, drop_last: bool) -> EpochCoverage:
    """Compute :func:`epoch_coverage` for the dataset at ``url`` and log it (warning if it skips)."""
    coverage = epoch_coverage(dataset_rows(url), world_size, batch_size, drop_last=drop_last)
    (log.warning if coverage.skipped else log.info)("%s", coverage.describe())
    return coverage
