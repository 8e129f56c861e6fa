"""Seeded, sharded, multi-epoch reading of Petastorm and Parquet datasets into numpy rows.

The stages, one per module: ``config`` (typed options), ``plan`` (pure shuffle/shard plan),
``source`` + ``decode`` + ``transform`` (reading and decoding one row group), ``shuffle``
(seeded shuffle buffer) and ``reader`` (thread pool, reorder window, batches of rows).
"""

from __future__ import annotations

from pipeline.reader.config import LoaderConfig, ReaderConfig, ReadOptions
from pipeline.reader.plan import WorkItem, epoch_plan, rows_per_rank
from pipeline.reader.reader import Reader, Selection
from pipeline.reader.source import Chunk, DatasetSource

__all__ = [
    "Chunk",
    "DatasetSource",
    "LoaderConfig",
    "ReadOptions",
    "Reader",
    "ReaderConfig",
    "Selection",
    "WorkItem",
    "epoch_plan",
    "rows_per_rank",
]
