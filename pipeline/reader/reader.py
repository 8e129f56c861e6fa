"""The reader: plan -> workers -> reorder window -> shuffle buffer -> batches of rows.

``workers`` threads or worker processes (:mod:`pipeline.reader.workers`,
:mod:`pipeline.reader.workers_process`; ``workers_type``) read and decode work items (slices of
row groups) ahead of time, straight into rows reserved for them in the
:class:`~pipeline.reader.shuffle.RowBuffer` (in shared memory for processes); a window of at
most ``workers * read_ahead`` items is in flight and items become live in plan order, whatever
order the threads finish in. Batches are drawn from the buffer with the epoch's seeded
generator; it is drained at the end of each epoch (every row exactly once per epoch) while the
threads are already reading the next epoch.

The sequence of batches is a function of the data, the options and the seed only: the plan
is pure, the window restores plan order, and the buffer's generator is derived from
``(seed, epoch, rank, world_size)``. That is also how a reader starts in the middle of an epoch
(:meth:`Reader.start_at`): it replays the epoch's draws on row numbers
(:func:`~pipeline.reader.shuffle.replay_epoch`, no reading), reads only the work items that still
have rows in the buffer at that batch, and goes on from the first item not yet committed.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.errors import DatasetError
from pipeline.reader.config import ReaderConfig, ReadOptions
from pipeline.reader.decode import fixed_row_bytes
from pipeline.reader.plan import WorkItem, epoch_plan, rows_per_rank
from pipeline.reader.shuffle import RowBuffer, replay_epoch
from pipeline.reader.source import DatasetSource
from pipeline.reader.workers import ThreadWorkers, buffer_capacity, choose_workers_type
from pipeline.reader.workers_cores import available_memory, usable_cores
from pipeline.reader.workers_process import ProcessWorkers, SourceRecipe
from pipeline.units import human_bytes

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
        stats: Where to add the time spent per stage (``add(stage, seconds)``). Defaults to ``None``.
        recipe: How worker processes reopen ``source``. Defaults to ``None`` (its URL and options).
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
        stats: Any = None,
        recipe: SourceRecipe | None = None,
    ) -> None:
        self.source = source
        self.stats = stats
        self.recipe = recipe or SourceRecipe(source.url, getattr(source, "options", None) or ReadOptions())
        """How worker processes open the dataset (``open_loader`` passes its ``cache`` options)."""
        self.start_epoch = 0
        """Epoch the next :meth:`batches` starts in (see :meth:`start_at`)."""
        self.start_batch = 0
        """Batches of ``start_epoch`` already delivered before :meth:`batches` starts."""
        self.in_flight = 0
        """Work items being read right now (a queue depth for monitoring)."""
        self.buffered = 0
        """Live rows in the shuffle buffer right now (a queue depth for monitoring)."""
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
        self.workers = config.worker_threads
        """Workers (threads or processes) that read; ``0`` reads inline."""
        self.workers_type, why = choose_workers_type(config, source, self.recipe, self.workers, batch_size)
        """``"thread"`` or ``"process"``: what ``workers_type="auto"`` resolved to."""
        cores = usable_cores().cores
        if self.workers_type == "thread" and self.workers > cores and hasattr(source, "limit_decoding"):
            source.limit_decoding(cores)  # more threads than cores: the extra ones wait on I/O, not the GIL
        # "auto" wanted processes for a Python transform and could not (shared memory, pickling)
        fallback = self.workers_type == "thread" and why.startswith("a Python TransformSpec func, but")
        log.log(
            logging.WARNING if fallback else logging.INFO,
            "reader on %s: %d worker %s (%s, %s)%s",
            source.url,
            self.workers,
            "processes" if self.workers_type == "process" else "threads",
            f"workers_type={config.workers_type!r}",
            why,
            "" if config.workers is not None else f"; {usable_cores().describe()}",
        )

        self._check_memory()

    def _check_memory(self) -> None:
        """Warn when the row buffer could take most of the memory left (``shuffle_buffer`` is in
        rows: 4,096 rows of a 224x224 float32 image are 2.3 GiB, before the items in flight)."""
        row_bytes = fixed_row_bytes(getattr(self.source, "specs", None) or {})
        capacity = buffer_capacity(self.config, self._sizes, self.workers, self.batch_size)
        in_flight = capacity - max(self.config.shuffle_buffer, self.batch_size)
        # an epoch smaller than the shuffle buffer holds no more (the next one waits for it to drain)
        rows = min(capacity, max(self.rows_per_epoch, self.batch_size) + in_flight)
        ranks = usable_cores().local_ranks  # every rank on the machine has one
        needed = rows * row_bytes * ranks
        free = available_memory()
        if free is None or needed <= free // 2:
            return
        log.warning(
            "the row buffer of %s can hold %s rows of %s (%s with %d rank(s) on this machine), "
            "%.0f%% of the %s of memory left: lower shuffle_buffer (rows), read_ahead or item_rows",
            self.source.url,
            f"{rows:,}",
            human_bytes(row_bytes),
            human_bytes(needed),
            ranks,
            100 * needed / max(free, 1),
            human_bytes(free),
        )

    @property
    def batches_per_epoch(self) -> int:
        full, rest = divmod(self.rows_per_epoch, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def start_at(self, epoch: int, batches: int) -> None:
        """Make the next :meth:`batches` start after ``batches`` batches of ``epoch``.

        Raises:
            ValueError: ``batches`` is not within the epoch.
        """
        if epoch < 0 or not 0 <= batches < max(self.batches_per_epoch, 1):
            raise ValueError(
                f"cannot start at batch {batches} of epoch {epoch}: an epoch has {self.batches_per_epoch} batches"
            )
        self.start_epoch, self.start_batch = epoch, batches

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
            max_item_rows=self.config.item_rows,
        )

    def _row_rng(self, epoch: int) -> np.random.Generator | None:
        if not self.config.shuffle:
            return None
        return np.random.default_rng([self.config.seed, epoch, self.rank, self.world_size, 1])

    def _entries(self, first_item: int) -> Iterator[WorkItem | _EpochEnd]:
        start = self.start_epoch
        end = self.config.num_epochs
        epochs = range(start, end) if end is not None else itertools.count(start)
        for epoch in epochs:
            yield from self.plan(epoch)[first_item if epoch == start else 0 :]
            yield _EpochEnd(epoch)

    def _workers(self) -> ThreadWorkers | ProcessWorkers:
        if self.workers_type == "process":
            return ProcessWorkers(
                self.recipe, self.source, self.workers, self.config.seed, self.config.start_method, self.stats
            )
        return ThreadWorkers(self.source, self.workers, self.config.seed, self.stats)

    def _buffer(self, workers: ThreadWorkers | ProcessWorkers | None = None) -> RowBuffer:
        size = self.config.shuffle_buffer
        capacity = buffer_capacity(self.config, self._sizes, self.workers, self.batch_size)
        rng = self._row_rng(self.start_epoch)
        if workers is None:
            return RowBuffer(self.source.specs, capacity, size, rng)
        return workers.buffer(self.source.specs, capacity, size, rng)

    def _restore(self, buffer: RowBuffer, workers: ThreadWorkers | ProcessWorkers) -> int:
        """Fill ``buffer`` as it was after ``start_batch`` batches; returns the next item's index.

        The epoch's draws are replayed on row numbers; only the items that still have rows in the
        buffer at that batch are read, each once, and only those rows are kept.
        """
        epoch = self.start_epoch
        items = self.plan(epoch)
        t0 = time.perf_counter()
        cut = replay_epoch(
            [item.rows for item in items],
            size=self.config.shuffle_buffer,
            batch=self.batch_size,
            rng=self._row_rng(epoch),
            drop_last=self.drop_last,
            batches=self.start_batch,
        )
        starts = np.concatenate([[0], np.cumsum([item.rows for item in items], dtype=np.int64)])
        owner = np.searchsorted(starts, cut.live, side="right") - 1  # the item of each live row
        slot = np.empty(len(cut.live), dtype=np.int64)
        for index in np.unique(owner):
            item = items[int(index)]
            rows = buffer.reserve(item.rows)
            workers.run(item, buffer, rows)
            keep = np.zeros(item.rows, dtype=bool)
            mine = owner == index
            offsets = cut.live[mine] - starts[index]
            keep[offsets] = True
            slot[mine] = rows[offsets]
            buffer.unreserve(rows[~keep])
        buffer.commit(slot)
        buffer.set_rng(cut.rng)
        log.info(
            "resumed epoch %d after batch %d on rank %d: replayed in %.2f s, read %d work items back",
            epoch,
            self.start_batch,
            self.rank,
            time.perf_counter() - t0,
            len(np.unique(owner)),
        )
        return cut.next_item

    def filled(self) -> Iterator[tuple[int, RowBuffer, bool]]:
        """Fill a :class:`RowBuffer` item by item in plan order.

        Yields ``(epoch, buffer, False)`` after each work item's rows became live and
        ``(epoch, buffer, True)`` when the epoch's items are all in. Workers read up to
        ``workers * read_ahead`` items ahead into reserved rows of the buffer.
        """
        limit = max(1, self.workers) * self.config.read_ahead
        workers = self._workers()
        buffer = None
        window: deque[tuple[WorkItem | _EpochEnd, np.ndarray | None, Any]] = deque()
        in_flight = 0
        try:
            buffer = self._buffer(workers)
            first_item = 0
            if self.start_batch:
                first_item = self._restore(buffer, workers)
                yield self.start_epoch, buffer, False
            entries = self._entries(first_item)
            exhausted = False
            while True:
                while in_flight < limit:
                    entry = next(entries, None)
                    if entry is None:
                        exhausted = True
                        break
                    rows = handle = None
                    if isinstance(entry, WorkItem):
                        rows = buffer.reserve(entry.rows)
                        handle = workers.submit(entry, buffer, rows)
                        in_flight += 1
                    window.append((entry, rows, handle))
                self.in_flight = in_flight
                if not window:
                    return
                entry, rows, handle = window.popleft()
                if isinstance(entry, _EpochEnd):
                    if exhausted and not window:  # the last epoch's items are all in: workers may go
                        workers.wind_down()
                    yield entry.epoch, buffer, True
                    continue
                in_flight -= 1
                assert rows is not None
                workers.finish(handle, entry, buffer, rows)
                buffer.commit(rows)
                self.buffered = len(buffer)
                yield entry.epoch, buffer, False
        finally:
            window.clear()
            if buffer is not None:
                buffer.columns.clear()  # shared-memory views go before their segments are unlinked
            del buffer
            workers.close()  # running decodes stop within a few rows; processes are joined

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

    def _draw(self, buffer: RowBuffer, epoch: int, count: int) -> Iterator[Selection]:
        t0 = time.perf_counter()
        rows = buffer.select(count)
        if self.stats is not None:
            self.stats.add("shuffle", time.perf_counter() - t0)
        yield Selection(epoch, buffer.columns, rows)
        buffer.release()
        self.buffered = len(buffer)
