"""Who reads and decodes work items: threads of this process, or worker processes.

Both kinds have the same small interface for the reader (:class:`ThreadWorkers`, and
:class:`~pipeline.reader.workers_process.ProcessWorkers`): ``buffer`` makes the row buffer,
``submit`` starts a work item writing into its reserved rows, ``finish`` waits for it (and
re-raises its error), ``run`` reads one inline, ``wind_down`` says that no item will follow (worker
processes exit while the reader drains its buffer), ``close`` stops everything. The reader keeps the
order: items become live in plan order whatever order workers finish in, so the batches do not
depend on the kind or the number of workers.

``workers_type="auto"`` (:func:`resolve_workers_type`) picks processes when a ``TransformSpec``
with a Python ``func`` runs in the workers (it holds the GIL, so threads cannot run it on more
than one core) and threads otherwise: decoding (pyarrow, OpenCV, libjpeg-turbo) releases the
GIL, and threads start instantly and need no shared memory. A batch callable runs in the
loader's batching thread, not in the workers, so it does not call for processes. Nor does a
row buffer larger than the free space on ``/dev/shm`` (a container's default 64 MB): "auto"
then reads with threads and says why in a warning, where an explicit ``"process"`` is a
``ConfigError`` naming the sizes.

Randomness in transforms (:func:`seed_task`, :func:`task_rng`): every work item gets a seed
derived from ``(seed, epoch, row group, first row)`` only. ``task_rng()`` returns a numpy
``Generator`` seeded with it, per thread or process: an augmentation that draws from it gives
the same rows for any number and kind of workers. In worker processes the global generators
(``random``, ``numpy.random``, and ``torch`` where the worker imported it) are also seeded with
it before each item, so a transform written with ``np.random.randint`` is reproducible there
too. Threads leave the global generators alone: they belong to the training loop.
"""

from __future__ import annotations

import copy
import logging
import pickle
import random
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from pipeline.errors import ConfigError
from pipeline.reader import shm
from pipeline.reader.config import START_METHODS, WORKERS_TYPES
from pipeline.reader.decode import FieldSpec, ReadCancelled, fixed_row_bytes
from pipeline.reader.plan import WorkItem
from pipeline.reader.shuffle import RowBuffer
from pipeline.reader.workers_cores import usable_cores
from pipeline.units import human_bytes

__all__ = [
    "START_METHODS",
    "WORKERS_TYPES",
    "ThreadWorkers",
    "buffer_capacity",
    "choose_workers_type",
    "has_python_transform",
    "inheritable",
    "read_item",
    "resolve_workers_type",
    "seed_task",
    "task_rng",
    "time_reads",
    "unsendable",
    "untimed",
]

log = logging.getLogger(__name__)

_local = threading.local()


def has_python_transform(options: Any) -> bool:
    """Whether ``options.transform`` is a ``TransformSpec`` whose ``func`` runs in the workers."""
    spec = getattr(options, "transform", None)
    return spec is not None and hasattr(spec, "edit_fields") and getattr(spec, "func", None) is not None


def resolve_workers_type(
    workers_type: str, source: Any, workers: int, unsendable: str | None = None
) -> tuple[str, str]:
    """``("thread" | "process", why)`` for ``workers_type`` on ``source`` with ``workers`` workers.

    ``unsendable`` says why the options cannot reach worker processes (``"auto"`` then picks
    threads; an explicit ``"process"`` is an error).

    Raises:
        ConfigError: An unknown type, or processes asked for a ``cache="memory"`` source.
    """
    if workers_type not in WORKERS_TYPES:
        raise ConfigError(
            f"workers_type must be one of {', '.join(WORKERS_TYPES)}, got {workers_type!r}",
            hint='leave it out for "auto"',
        )
    memory = type(source).__name__ == "CachedSource"
    if workers_type == "process" and memory:
        raise ConfigError(
            'workers_type="process" cannot serve cache="memory": the decoded rows are kept in this process',
            hint='use workers_type="thread" (or "auto") with cache="memory", or cache="disk"',
        )
    if workers_type == "process" and unsendable:
        raise ConfigError(
            f"the loader's options cannot be sent to worker processes: {unsendable}",
            hint="define the TransformSpec func (and predicate) at module level in an importable module, "
            "or use start_method='fork' or workers_type='thread'",
        )
    if workers_type != "auto":
        return workers_type, "asked for"
    if workers == 0:
        return "thread", "workers=0 reads inline"
    if memory:
        return "thread", 'cache="memory" serves decoded rows from this process'
    if has_python_transform(getattr(source, "options", None)):
        if unsendable:
            return "thread", f"a Python TransformSpec func, but {unsendable}"
        return "process", "a Python TransformSpec func holds the GIL"
    return "thread", "decoding releases the GIL"


def inheritable(source: Any) -> bool:
    """Whether a forked worker may use the parent's ``source`` object as it is: a plain local
    dataset (object-store clients are not safe to use across a fork)."""
    from pipeline.storage import is_remote_filesystem

    fs = getattr(source, "_fs", None)
    return type(source).__name__ == "DatasetSource" and fs is not None and not is_remote_filesystem(fs)


def unsendable(recipe: Any, start_method: str, *, inherits: bool = True) -> str | None:
    """Why ``recipe`` cannot reach ``start_method`` workers, or ``None`` when it can.

    ``fork`` workers inherit it when ``inherits`` (a local dataset); those of a remote dataset
    get the source pickled (object-store clients are not safe across a fork), so its options
    must pickle. ``spawn``/``forkserver`` workers unpickle it, which imports the modules of its
    functions: a function of an interactive session's ``__main__`` (a notebook, ``python -c``)
    cannot be found there.
    """
    if start_method == "fork" and inherits:
        return None
    try:
        pickle.dumps(recipe)
    except Exception as exc:
        return f"they cannot be pickled ({exc})"
    main = sys.modules.get("__main__")
    if start_method != "fork" and main is not None and not getattr(main, "__file__", None):
        for value in (
            getattr(recipe.options.transform, "func", None),
            recipe.options.transform,
            recipe.options.predicate,
        ):
            if getattr(value, "__module__", None) == "__main__":
                return f"{value!r} is defined in an interactive session, which {start_method} workers cannot import"
    return None


def buffer_capacity(config: Any, sizes: list[int], workers: int, batch_size: int) -> int:
    """Rows of the reader's row buffer: the shuffle buffer (or a batch) and every item in flight."""
    largest = min(max(sizes, default=0), config.item_rows)  # items are at most item_rows
    limit = max(1, workers) * config.read_ahead
    return max(config.shuffle_buffer, batch_size) + (limit + 1) * largest


def _shared_memory_short(config: Any, source: Any, workers: int, batch_size: int) -> str | None:
    """Why the row buffer would not fit on ``/dev/shm``, or ``None`` when it fits."""
    free = shm.shm_free_bytes()
    specs = getattr(source, "specs", None)
    if free is None or not specs:
        return None
    rows = buffer_capacity(config, list(getattr(source, "sizes", [])), workers, batch_size)
    needed = rows * fixed_row_bytes(specs)
    ranks = usable_cores().local_ranks  # each rank on the machine makes its own, sparse until written
    if needed * ranks <= free:
        return None
    each = f" ({ranks} ranks on this machine, one each)" if ranks > 1 else ""
    return (
        f"its row buffer needs {human_bytes(needed)} of shared memory{each} and {shm.SHM_DIR} has "
        f"{human_bytes(free)} free (docker run --shm-size=..., or a smaller shuffle_buffer, lets processes run it)"
    )


def choose_workers_type(
    config: Any, source: Any, recipe: Any, workers: int, batch_size: int = 1
) -> tuple[str, str]:
    """:func:`~pipeline.reader.workers.resolve_workers_type` for a :class:`ReaderConfig`."""
    why_not = None
    if config.workers_type != "thread" and workers:
        why_not = unsendable(recipe, config.start_method, inherits=inheritable(source))
        if (
            why_not is None
            and config.workers_type == "auto"
            and has_python_transform(getattr(source, "options", None))
        ):
            why_not = _shared_memory_short(config, source, workers, batch_size)
    return resolve_workers_type(config.workers_type, source, workers, why_not)


def time_reads(source: Any, record: Callable[[float], None]) -> None:
    """Make every Parquet read of ``source`` (its ``_read_table``) report its seconds to ``record``.

    The reader times a work item as a whole (read + decode); this wraps the row-group read of
    this one source object so that the two can be told apart (``loader.stats()``'s ``read``
    stage, in the loader's thread workers and in each worker process). A source already timed is
    left as it is; :func:`untimed` gives a copy without the wrapper.
    """
    inner = getattr(source, "_read_table", None)
    if inner is None or getattr(inner, "_timed", False):
        return

    def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            record(time.perf_counter() - t0)

    timed._timed = True  # type: ignore[attr-defined]
    source._read_table = timed


def untimed(source: Any) -> Any:
    """A copy of ``source`` without the :func:`time_reads` wrapper (``source`` itself if untimed).

    The copy goes through the source's ``__getstate__``/``__setstate__``: locks and caches of the
    original (its shared row-group reads) are not shared with it.
    """
    if "_read_table" not in getattr(source, "__dict__", {}):
        return source
    clone = copy.copy(source)
    clone.__dict__.pop("_read_table", None)
    return clone


def task_seed(seed: int, item: WorkItem) -> np.random.SeedSequence:
    """The seed of one work item: ``(seed, epoch, row group, first row)``, nothing else."""
    return np.random.SeedSequence([seed, item.epoch, item.piece, item.start])


def seed_task(seed: int, item: WorkItem, *, global_rngs: bool) -> None:
    """Seed :func:`task_rng` (and, with ``global_rngs``, ``random``/``numpy.random``/``torch``)."""
    sequence = task_seed(seed, item)
    _local.rng = np.random.default_rng(sequence)
    if global_rngs:
        words = sequence.generate_state(2, dtype=np.uint64)
        random.seed(int(words[0]))
        np.random.seed(int(words[0] % 2**32))
        torch = sys.modules.get("torch")
        if torch is not None:
            torch.manual_seed(int(words[1] % 2**63))


def task_rng() -> np.random.Generator:
    """The generator of the work item being transformed in this thread or process.

    Seeded from ``(seed, epoch, row group, first row)`` before the item is read, so random
    augmentations drawn from it do not depend on the number or kind of workers. Outside a
    transform it returns a generator seeded with 0.
    """
    rng = getattr(_local, "rng", None)
    if rng is None:
        rng = _local.rng = np.random.default_rng(0)
    return rng


def read_item(
    source: Any,
    item: WorkItem,
    out: dict[str, np.ndarray],
    rows: np.ndarray,
    cancel: Any,
    *,
    seed: int,
    global_rngs: bool,
) -> None:
    """Seed, then read ``item`` into ``out[name][rows]``; an error gets a note naming the item."""
    seed_task(seed, item, global_rngs=global_rngs)
    try:
        source.read_into(item, out, rows, cancel)
    except ReadCancelled:
        raise
    except Exception as exc:
        exc.add_note(f"while reading {source.describe(item)}")
        raise
    finally:
        _local.rng = None


class ThreadWorkers:
    """Work items read by ``count`` threads of this process (``0``: inline, in the caller's thread).

    Args:
        source: The dataset source (shared by the threads; its reads are thread-safe).
        count: Threads.
        seed: The reader's seed (for :func:`seed_task`).
        stats: Where to add ``read+decode`` seconds. Defaults to ``None``.
    """

    kind = "thread"

    def __init__(self, source: Any, count: int, seed: int, stats: Any = None) -> None:
        self.source = source
        self.count = count
        self.seed = seed
        self.stats = stats
        self._cancel = threading.Event()
        self._pool = ThreadPoolExecutor(count, thread_name_prefix="pipeline-reader") if count else None

    def buffer(
        self, specs: dict[str, FieldSpec], capacity: int, size: int, rng: np.random.Generator | None
    ) -> RowBuffer:
        return RowBuffer(specs, capacity, size, rng)

    def run(self, item: WorkItem, buffer: RowBuffer, rows: np.ndarray) -> None:
        """Read ``item`` into ``rows`` of ``buffer`` now, in this thread."""
        t0 = time.perf_counter()
        read_item(self.source, item, buffer.columns, rows, self._cancel, seed=self.seed, global_rngs=False)
        if self.stats is not None:
            self.stats.add("read+decode", time.perf_counter() - t0)

    def submit(self, item: WorkItem, buffer: RowBuffer, rows: np.ndarray) -> Future[None] | None:
        """Start reading ``item``; ``None`` when there are no threads (:meth:`finish` reads it)."""
        if self._pool is None:
            return None
        return self._pool.submit(self.run, item, buffer, rows)

    def finish(
        self, handle: Future[None] | None, item: WorkItem, buffer: RowBuffer, rows: np.ndarray
    ) -> None:
        """Wait until ``item`` is in ``rows``; re-raises the worker's exception."""
        if handle is None:
            self.run(item, buffer, rows)
        else:
            handle.result()

    def wind_down(self) -> None:
        """No item will be submitted any more: the threads end once idle (:meth:`close` joins them)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    def close(self) -> None:
        """Stop running decodes within a few rows, drop queued items, join the threads."""
        self._cancel.set()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
