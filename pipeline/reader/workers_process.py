"""Worker processes that decode and transform work items straight into a shared-memory row buffer.

The parent allocates the row buffer's fixed-shape columns in shared memory
(:mod:`pipeline.reader.shm`) and starts a ``concurrent.futures.ProcessPoolExecutor`` with an
explicit ``multiprocessing`` context (``fork`` by default, as torch's ``DataLoader`` on Linux;
``spawn`` and ``forkserver`` work too). The workers do not open the dataset again: a ``fork``
worker of a local dataset uses (a copy of) the parent's source object, any other worker
unpickles the parent's source (:class:`SourceRecipe`), footers and predicate masks included.
Before forking, the parent imports what the decoders import lazily (OpenCV, pandas), so that
forked workers do not each import it at their first item. On its first item a worker maps the
buffer's segments; for each work item it seeds its generators
(:func:`pipeline.reader.workers.seed_task`), reads, decodes and transforms the rows into the
rows the parent reserved. Work crosses the pipes one work item at a time (up to ``item_rows``
rows): the item, its row numbers, the values of non-fixed fields (strings, token lists) and two
timings; decoded images are never pickled.

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
import pickle
import signal
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.errors import PipelineError
from pipeline.reader.config import ReadOptions
from pipeline.reader.decode import (
    FieldSpec,
    ReadCancelled,
    decode_column,
    fixed_row_bytes,
    spec_from_unischema,
)
from pipeline.reader.plan import WorkItem
from pipeline.reader.shm import SharedColumns, attach_columns, populate_rows
from pipeline.reader.shuffle import RowBuffer
from pipeline.reader.workers import inheritable, read_item, time_reads, untimed

__all__ = ["ProcessWorkers", "SourceRecipe", "WorkerDied"]

log = logging.getLogger(__name__)

_JOIN_S = 10.0
_DIED_S = 3.0


def _fresh_tracker_lock() -> None:
    """In a forked child: a new lock for multiprocessing's resource tracker.

    A worker attaching the row buffer's shared memory registers it with the tracker (Python
    < 3.13), under the tracker's lock. Were another thread of the parent holding that lock at the
    fork (creating or unlinking a segment, e.g. the previous loader's cleanup), the child would
    inherit it held by a thread that does not exist in the child, and wait for it forever: a
    loader with ``start_method="fork"`` hung in CI that way. The child's tracker state is the
    parent's at the fork; only the lock is made anew.
    """
    from multiprocessing import resource_tracker

    tracker = getattr(resource_tracker, "_resource_tracker", None)
    lock = getattr(tracker, "_lock", None)
    if lock is not None:
        tracker._lock = type(lock)()  # type: ignore[union-attr]


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fresh_tracker_lock)


class WorkerDied(PipelineError):
    """A reader worker process ended without finishing its work item."""


@dataclass(frozen=True)
class SourceRecipe:
    """What worker processes read (picklable): the loader's dataset and loading options.

    ``url``, ``options`` and the cache settings describe the dataset (``open_loader``'s
    arguments; :func:`~pipeline.reader.workers.unsendable` checks that they pickle). The workers
    do not open it again: :class:`ProcessWorkers` gives them the parent's open source, as the
    object itself to ``fork`` workers of a local dataset (``inherited``), pickled otherwise
    (``pickled``: listing, footers and predicate masks travel with it, and object-store clients
    are made anew in each worker).
    """

    url: str
    options: ReadOptions
    cache: str = "stream"
    cache_limit: int | None = None
    cache_dir: str | None = None
    inherited: Any = dataclasses.field(default=None, compare=False)
    """The parent's source, used by ``fork`` workers (set by :class:`ProcessWorkers`; never pickled)."""
    pickled: bytes | None = dataclasses.field(default=None, compare=False, repr=False)
    """The parent's source, pickled (set by :class:`ProcessWorkers`)."""

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "inherited": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def open(self) -> Any:
        """The worker's own source object."""
        if self.inherited is not None:
            # a copy: no lock or cache of the parent's (one may have been held at the fork)
            return copy.copy(self.inherited)
        if self.pickled is None:
            raise RuntimeError("SourceRecipe.open: no source was given to the workers")
        return pickle.loads(self.pickled)


def _warm_decoders(source: Any) -> None:
    """Import, in this (parent) process, the modules that decoding the source's fields imports
    lazily (OpenCV; pandas, under pyarrow's ``to_numpy``): ``fork`` workers then inherit them
    instead of importing them at their first work item in every loader (0.3-0.5 s per worker on
    this project's 2-core machine). Decodes an empty column of each field; best effort."""
    for name, field in getattr(getattr(source, "schema", None), "fields", {}).items():
        spec = spec_from_unischema(field)
        codec = getattr(field, "codec", None)
        try:
            if codec is not None and type(codec).__name__ != "ScalarCodec":
                empty = pa.array([], type=pa.binary())
            elif not spec.shape and spec.dtype.kind in "biuf":
                empty = pa.array(np.empty(0, dtype=spec.dtype))
            else:
                continue
            decode_column(spec, field, empty)
        except Exception:  # a warm-up only: the workers decode (and report errors) for real
            log.debug("warming the decoder of field %r failed", name, exc_info=True)


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
    read_s: float = 0.0
    """Seconds of Parquet reads of the current item (stage ``read``)."""

    def add_read(self, seconds: float) -> None:
        self.read_s += seconds


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
            time_reads(state.source, state.add_read)
            columns, state.handles = attach_columns(state.layouts)
            state.out = {**columns, **{n: np.empty(state.capacity, dtype=object) for n in state.objects}}
        assert state.out is not None
        state.read_s = 0.0
        populate_rows(state.handles, state.layouts, rows)
        read_item(state.source, item, state.out, rows, state.cancel, seed=state.seed, global_rngs=True)
        objects = {name: state.out[name][rows] for name in state.objects}
        for name in state.objects:
            state.out[name][rows] = None
    except BaseException as exc:
        exc.add_note(f"in reader worker process {os.getpid()}")
        raise
    return objects, state.read_s, time.perf_counter() - t0


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
        if start_method == "fork" and inheritable(source):  # the object itself: nothing to reopen
            recipe = dataclasses.replace(recipe, inherited=untimed(source))
        else:  # listing, footers and predicate masks travel with it; fresh object-store clients
            recipe = dataclasses.replace(recipe, pickled=pickle.dumps(untimed(source)))
        self._warm = start_method == "fork"
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
        self._shared.check_space(capacity * fixed_row_bytes(specs))
        buffer = RowBuffer(specs, capacity, size, rng, allocate=self._shared.allocate)
        objects = [name for name, s in specs.items() if s.kind != "fixed"]
        if self._warm:
            _warm_decoders(self.source)
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

    def wind_down(self) -> None:
        """No item will be submitted any more: the workers exit now, while the parent drains the
        row buffer, instead of in :meth:`close` (which still joins them and unlinks the memory)."""
        if self._pool is not None:
            self._processes.update(getattr(self._pool, "_processes", None) or {})
            self._pool.shutdown(wait=False)

    def close(self) -> None:
        """Stop the workers (SIGTERM, then SIGKILL after a few seconds) and unlink the shared memory.

        The parent unmaps and unlinks the segments first: a worker still exiting keeps its mapping,
        and the pages are freed when the last mapping goes, in parallel with the parent."""
        self._cancel.set()
        pool, self._pool = self._pool, None
        if pool is not None:
            processes = dict(getattr(pool, "_processes", None) or {})
            self._processes.update(processes)
            pool.shutdown(wait=False, cancel_futures=True)
        self._shared.close()
        if pool is not None:
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
