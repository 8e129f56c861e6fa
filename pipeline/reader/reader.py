"""The reader: plan -> thread pool -> reorder window -> shuffle buffer -> batches of rows.

``workers`` threads read and decode work items (slices of row groups) ahead of time, straight
into rows reserved for them in the :class:`~pipeline.reader.shuffle.RowBuffer`; a window of at
most ``workers * read_ahead`` items is in flight and items become live in plan order, whatever
order the threads finish in. Batches are drawn from the buffer with the epoch's seeded
generator; it is drained at the end of each epoch (every row exactly once per epoch) while the
threads are already reading the next epoch.

The sequence of batches is a function of the data, the options and the seed only: the plan
is pure, the window restores plan order, and the buffer's generator is derived from
``(seed, epoch, rank, world_size)``.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from pipeline.errors import DatasetError
from pipeline.reader.config import ReaderConfig
from pipeline.reader.decode import ReadCancelled
from pipeline.reader.plan import WorkItem, epoch_plan, rows_per_rank
from pipeline.reader.shuffle import RowBuffer
from pipeline.reader.source import DatasetSource

__all__ = ["Reader", "Selection"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Selection:
    """The rows of one batch: ``columns[name][positions]``; valid until the next batch is drawn."""

    epoch: int
    columns: dict[str, np.ndarray]
    positions: np.ndarray


@dataclass(frozen=True)
class _EpochEnd:
    epoch: int


class Reader:
    """Batches of rows of one rank's shard, epoch after epoch.

    Args:
        source: The dataset.
        config: Order, epochs and threads.
        batch_size: Rows per batch.
        drop_last: Drop the last incomplete batch of each epoch and the uneven shard tail.
        rank: This process's rank.
        world_size: Number of ranks.
    """

    def __init__(
        self,
        source: DatasetSource,
        config: ReaderConfig,
        *,
        batch_size: int,
        drop_last: bool,
        rank: int,
        world_size: int,
    ) -> None:
        self.source = source
        self.config = config
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self._sizes = source.sizes
        self.rows_per_epoch = rows_per_rank(sum(self._sizes), world_size, drop_last)
        """Rows this rank reads per epoch (the same on every rank)."""
        if self.rows_per_epoch == 0 and config.num_epochs is None:
            raise DatasetError(
                f"{source.url} has no rows for rank {rank} of {world_size} to read, and num_epochs=None "
                "would wait for them forever",
                hint="check the predicate, or use fewer ranks or drop_last=False",
            )

    @property
    def batches_per_epoch(self) -> int:
        full, rest = divmod(self.rows_per_epoch, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def plan(self, epoch: int) -> list[WorkItem]:
        """This rank's work items of ``epoch``."""
        return epoch_plan(
            self._sizes,
            seed=self.config.seed,
            epoch=epoch,
            rank=self.rank,
            world_size=self.world_size,
            shuffle=self.config.shuffle,
            drop_last=self.drop_last,
        )

    def _row_rng(self, epoch: int) -> np.random.Generator | None:
        if not self.config.shuffle:
            return None
        return np.random.default_rng([self.config.seed, epoch, self.rank, self.world_size, 1])

    def _entries(self) -> Iterator[WorkItem | _EpochEnd]:
        epochs = range(self.config.num_epochs) if self.config.num_epochs is not None else itertools.count()
        for epoch in epochs:
            yield from self.plan(epoch)
            yield _EpochEnd(epoch)

    def _read(
        self, item: WorkItem, out: dict[str, np.ndarray], rows: np.ndarray, cancel: threading.Event
    ) -> None:
        try:
            self.source.read_into(item, out, rows, cancel)
        except ReadCancelled:
            raise
        except Exception as exc:
            exc.add_note(f"while reading {self.source.describe(item)}")
            raise

    def _buffer(self, limit: int) -> RowBuffer:
        largest = max(self._sizes, default=0)
        size = self.config.shuffle_buffer
        capacity = max(size, self.batch_size) + (limit + 1) * largest
        return RowBuffer(self.source.specs, capacity, size, self._row_rng(0))

    def filled(self) -> Iterator[tuple[int, RowBuffer, bool]]:
        """Fill a :class:`RowBuffer` item by item in plan order.

        Yields ``(epoch, buffer, False)`` after each work item's rows became live and
        ``(epoch, buffer, True)`` when the epoch's items are all in. Workers read up to
        ``workers * read_ahead`` items ahead into reserved rows of the buffer.
        """
        workers = self.config.worker_threads
        limit = max(1, workers) * self.config.read_ahead
        buffer = self._buffer(limit)
        pool = ThreadPoolExecutor(workers, thread_name_prefix="pipeline-reader") if workers else None
        cancel = threading.Event()
        window: deque[tuple[WorkItem | _EpochEnd, np.ndarray | None, Future[None] | None]] = deque()
        in_flight = 0
        entries = self._entries()
        try:
            while True:
                while in_flight < limit:
                    entry = next(entries, None)
                    if entry is None:
                        break
                    rows = future = None
                    if isinstance(entry, WorkItem):
                        rows = buffer.reserve(entry.rows)
                        if pool is not None:
                            future = pool.submit(self._read, entry, buffer.columns, rows, cancel)
                        in_flight += 1
                    window.append((entry, rows, future))
                if not window:
                    return
                entry, rows, future = window.popleft()
                if isinstance(entry, _EpochEnd):
                    yield entry.epoch, buffer, True
                    continue
                in_flight -= 1
                if future is not None:
                    future.result()
                else:
                    self._read(entry, buffer.columns, rows, cancel)
                buffer.commit(rows)
                yield entry.epoch, buffer, False
        finally:
            cancel.set()  # running decodes stop within a few rows
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    def batches(self) -> Iterator[Selection]:
        """Batches of rows across all epochs; each is valid until the next one is requested."""
        bs = self.batch_size
        for epoch, buffer, epoch_done in self.filled():
            if not epoch_done:
                while buffer.ready(bs):
                    yield from self._draw(buffer, epoch, bs)
                continue
            while len(buffer) >= bs or (len(buffer) and not self.drop_last):
                yield from self._draw(buffer, epoch, bs)
            buffer.select(len(buffer))  # drop_last: the incomplete batch
            buffer.release()
            buffer.set_rng(self._row_rng(epoch + 1))
            log.debug("epoch %d done on rank %d", epoch, self.rank)

    @staticmethod
    def _draw(buffer: RowBuffer, epoch: int, count: int) -> Iterator[Selection]:
        rows = buffer.select(count)
        yield Selection(epoch, buffer.columns, rows)
        buffer.release()
