"""Worker processes that decode and transform work items straight into a shared-memory row buffer.

The parent allocates the row buffer's fixed-shape columns in shared memory
(:mod:`pipeline.reader.shm`) and starts a ``concurrent.futures.ProcessPoolExecutor`` with an
explicit ``multiprocessing`` context (``fork`` by default, as torch's ``DataLoader`` on Linux;
``spawn`` and ``forkserver`` work too). Each ``spawn``/``forkserver`` worker opens the dataset
itself from a picklable :class:`SourceRecipe` on its first item (a ``fork`` worker uses the
parent's source object when the dataset is local),
maps the buffer's segments, and for each work item seeds its generators
(:func:`pipeline.reader.workers.seed_task`), reads, decodes and transforms the rows into the
rows the parent reserved. Only the item, its row numbers, the values of non-fixed fields
(strings, token lists) and two timings cross the pipe; decoded images never are pickled.

Errors: a worker's exception is re-raised by :meth:`ProcessWorkers.finish` in the consumer with
the worker's traceback (``__cause__``) and notes naming the file, row group and the worker's
pid. A worker that dies (killed, out of memory, a crash in native code) breaks the pool: the
next ``finish`` raises :class:`WorkerDied` naming the process, its exit code or signal and the
item. Workers ignore SIGINT: Ctrl-C reaches the training loop only, which closes the loader.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import multiprocessing
import os
import signal
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any

import numpy as np

from pipeline.errors import PipelineError
from pipeline.reader.config import ReadOptions
from pipeline.reader.decode import FieldSpec, ReadCancelled
from pipeline.reader.plan import WorkItem
from pipeline.reader.shm import SharedColumns, attach_columns
from pipeline.reader.shuffle import RowBuffer
from pipeline.reader.workers import read_item

__all__ = ["ProcessWorkers", "SourceRecipe", "WorkerDied"]

log = logging.getLogger(__name__)

_JOIN_S = 10.0
_DIED_S = 3.0


class WorkerDied(PipelineError):
    """A reader worker process ended without finishing its work item."""


@dataclass(frozen=True)
class SourceRecipe:
    """How a worker process opens the dataset (picklable): ``open_source``'s arguments."""

    url: str
    options: ReadOptions
    cache: str = "stream"
    cache_limit: int | None = None
    cache_dir: str | None = None
    inherited: Any = dataclasses.field(default=None, compare=False)
    """The parent's open source, used as it is by ``fork`` workers (set by :class:`ProcessWorkers`)."""

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "inherited": None}  # spawn/forkserver workers open their own

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def open(self) -> Any:
        if self.inherited is not None:
            # a copy without the parent's stats wrapper, whose lock may have been held at the fork
            source = copy.copy(self.inherited)
            source.__dict__.pop("_read_table", None)
            return source
        from pipeline.access.source import open_source

        return open_source(
            self.url, self.options, cache=self.cache, cache_limit=self.cache_limit, cache_dir=self.cache_dir
        )


def _inheritable(source: Any) -> bool:
    """Whether a forked worker may use the parent's ``source`` object: a plain local dataset
    (object-store clients are not safe to use across a fork)."""
    from pipeline.storage import is_remote_filesystem

    fs = getattr(source, "_fs", None)
    return type(source).__name__ == "DatasetSource" and fs is not None and not is_remote_filesystem(fs)


class _ReadTimer:
    """Seconds spent in the source's Parquet reads (stage ``read``), in a worker."""

    def __init__(self, source: Any) -> None:
        self.seconds = 0.0
        inner = getattr(source, "_read_table", None)
        if inner is None:
            return

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0

        source._read_table = timed


@dataclass
class _Worker:
    """One worker process's state (set by :func:`_init`, completed on the first item)."""

    recipe: SourceRecipe
    layouts: list[Any]
    objects: list[str]
    capacity: int
    cancel: Any
    seed: int
    source: Any = None
    out: dict[str, np.ndarray] | None = None
    handles: list[Any] = dataclasses.field(default_factory=list)
    timer: _ReadTimer | None = None


_WORKER: _Worker | None = None  # in worker processes only


def _init(
    recipe: SourceRecipe, layouts: list[Any], objects: list[str], capacity: int, cancel: Any, seed: int
) -> None:
    global _WORKER
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the training loop's to handle
    _WORKER = _Worker(recipe, layouts, objects, capacity, cancel, seed)


def _work(item: WorkItem, rows: np.ndarray) -> tuple[dict[str, np.ndarray], float, float]:
    """In a worker: read ``item`` into ``rows``; returns the non-fixed columns and two timings."""
    state = _WORKER
    assert state is not None, "worker not initialised"
    t0 = time.perf_counter()
    try:
        if state.cancel.is_set():  # queued before the loader closed: skip
            raise ReadCancelled
        if state.source is None:  # errors here reach the consumer like any read error
            state.source = state.recipe.open()
            state.timer = _ReadTimer(state.source)
            columns, state.handles = attach_columns(state.layouts)
            state.out = {**columns, **{n: np.empty(state.capacity, dtype=object) for n in state.objects}}
        assert state.out is not None and state.timer is not None
        state.timer.seconds = 0.0
        read_item(state.source, item, state.out, rows, state.cancel, seed=state.seed, global_rngs=True)
        objects = {name: state.out[name][rows] for name in state.objects}
        for name in state.objects:
            state.out[name][rows] = None
    except BaseException as exc:
        exc.add_note(f"in reader worker process {os.getpid()}")
        raise
    return objects, state.timer.seconds, time.perf_counter() - t0


class ProcessWorkers:
    """Work items read by ``count`` worker processes into a shared-memory row buffer.

    Args:
        recipe: How workers open the dataset.
        source: The parent's source (names work items in messages).
        count: Worker processes (>= 1).
        seed: The reader's seed.
        start_method: ``"spawn"``, ``"fork"`` or ``"forkserver"``.
        stats: Where to add ``read`` and ``read+decode`` seconds. Defaults to ``None``.
    """

    kind = "process"

    def __init__(
        self, recipe: SourceRecipe, source: Any, count: int, seed: int, start_method: str, stats: Any = None
    ) -> None:
        if start_method not in multiprocessing.get_all_start_methods():
            log.info("start method %r is not available here: spawning reader workers", start_method)
            start_method = "spawn"
        if start_method == "fork" and _inheritable(source):  # no need to list and open it again
            recipe = dataclasses.replace(recipe, inherited=source)
        self.recipe = recipe
        self.source = source
        self.count = max(1, count)
        self.seed = seed
        self.stats = stats
        self._ctx = multiprocessing.get_context(start_method)
        self._cancel = self._ctx.Event()
        self._shared = SharedColumns()
        self._pool: ProcessPoolExecutor | None = None
        self._processes: dict[int, Any] = {}

    def buffer(
        self, specs: dict[str, FieldSpec], capacity: int, size: int, rng: np.random.Generator | None
    ) -> RowBuffer:
        """The row buffer, its fixed columns in shared memory; starts the pool."""
        fixed = [s for s in specs.values() if s.kind == "fixed"]
        needed = sum(capacity * int(np.prod(s.shape, dtype=np.int64)) * s.dtype.itemsize for s in fixed)
        self._shared.check_space(needed)
        buffer = RowBuffer(specs, capacity, size, rng, allocate=self._shared.allocate)
        objects = [name for name, s in specs.items() if s.kind != "fixed"]
        self._pool = ProcessPoolExecutor(
            self.count,
            mp_context=self._ctx,
            initializer=_init,
            initargs=(self.recipe, self._shared.layouts, objects, capacity, self._cancel, self.seed),
        )
        return buffer

    def submit(self, item: WorkItem, buffer: RowBuffer, rows: np.ndarray) -> Future[Any]:
        assert self._pool is not None, "call buffer() first"
        future = self._pool.submit(_work, item, rows)
        self._processes.update(getattr(self._pool, "_processes", None) or {})
        return future

    def run(self, item: WorkItem, buffer: RowBuffer, rows: np.ndarray) -> None:
        self.finish(self.submit(item, buffer, rows), item, buffer, rows)

    def finish(self, handle: Future[Any], item: WorkItem, buffer: RowBuffer, rows: np.ndarray) -> None:
        """Wait for ``item``, copy its non-fixed values into ``buffer``; re-raise its error."""
        try:
            objects, read_s, total_s = handle.result()
        except BrokenProcessPool:
            raise self._died(item) from None
        for name, values in objects.items():
            buffer.columns[name][rows] = values
        if self.stats is not None:
            self.stats.add("read", read_s)
            self.stats.add("read+decode", total_s)

    def _died(self, item: WorkItem) -> WorkerDied:
        processes = list(self._processes.items())
        deadline = time.monotonic() + _DIED_S  # the pool's own thread may be reaping them right now
        while time.monotonic() < deadline and not any(p.exitcode is not None for _, p in processes):
            time.sleep(0.02)
        dead = []
        for pid, proc in processes:
            code = proc.exitcode
            if code is None:
                continue
            if code < 0:
                try:
                    how = f"killed by {signal.Signals(-code).name}"
                except ValueError:
                    how = f"killed by signal {-code}"
            else:
                how = f"exit code {code}"
            dead.append((code == -signal.SIGTERM, f"{pid} ({how})"))
        if any(not stopped for stopped, _ in dead):  # the pool SIGTERMs the others once one died
            dead = [d for d in dead if not d[0]]
        who = "reader worker process " + ", ".join(d[1] for d in dead) if dead else "a reader worker process"
        return WorkerDied(
            f"{who} ended while the loader waited for {self.source.describe(item)}",
            hint="a worker killed by SIGKILL is often the out-of-memory killer: lower read_ahead, "
            "shuffle_buffer or workers; a crash in native code of the transform shows in the worker's stderr",
        )

    def close(self) -> None:
        """Stop the workers (SIGTERM, then SIGKILL after a few seconds) and unlink the shared memory."""
        self._cancel.set()
        pool, self._pool = self._pool, None
        if pool is not None:
            processes = dict(getattr(pool, "_processes", None) or {})
            self._processes.update(processes)
            pool.shutdown(wait=False, cancel_futures=True)
            deadline = time.monotonic() + _JOIN_S
            for proc in self._processes.values():
                # the sentinel, not is_alive(): the pool's thread may reap the process first
                if not wait([proc.sentinel], max(0.0, deadline - time.monotonic())):
                    log.warning("reader worker process %d did not stop; terminating it", proc.pid)
                    proc.terminate()
                    if not wait([proc.sentinel], 1.0):
                        proc.kill()
                        wait([proc.sentinel], 1.0)
            pool.shutdown(wait=True)
        self._shared.close()
