"""Typed options of the reader and the loader (``conf/reader.yaml``).

Two frozen dataclasses hold everything that can live in a YAML file: :class:`ReaderConfig`
(what is read and in which order) and :class:`LoaderConfig` (how rows become torch batches).
Objects that cannot live in YAML -- a transform, a predicate, a filesystem -- travel in
:class:`ReadOptions`. Each is built and validated once, then passed down as a whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.errors import ConfigError

__all__ = ["START_METHODS", "WORKERS_TYPES", "LoaderConfig", "ReadOptions", "ReaderConfig"]

WORKERS_TYPES = ("auto", "thread", "process")
"""Values of ``workers_type`` (see :mod:`pipeline.reader.workers`)."""

START_METHODS = ("spawn", "fork", "forkserver")
"""Values of ``start_method``: the ``multiprocessing`` context of worker processes."""


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass(frozen=True)
class ReaderConfig:
    """What is read, in which order, by how many threads (section ``reader`` of ``reader.yaml``)."""

    shuffle: bool = True
    """Shuffle row groups per epoch and mix rows across them; ``False`` keeps the stored order."""
    shuffle_buffer: int = 4096
    """Rows held by the seeded shuffle buffer that mixes rows across row groups."""
    seed: int = 0
    """Seed of every random choice; the order of epoch ``e`` is derived from ``(seed, e)``."""
    num_epochs: int | None = 1
    """Epochs to read; ``None`` reads forever."""
    workers: int | None = None
    """Workers that read and decode row groups; ``None`` = the usable cores
    (:func:`pipeline.reader.workers_cores.usable_cores`); 0 = inline."""
    read_ahead: int = 2
    """Work items in flight per worker (bounds memory; results are reordered into plan order)."""
    item_rows: int = 1024
    """Most rows in one work item: a larger row group is decoded as several items by several
    workers (its Parquet data is read once and shared), so that a dataset of few large row groups
    -- what Spark writes -- still keeps every worker busy and the first batch comes early."""
    workers_type: str = "auto"
    """``"thread"``, ``"process"`` or ``"auto"`` (processes for a Python ``TransformSpec`` func)."""
    start_method: str = "fork"
    """How worker processes start: ``"fork"`` (as torch's ``DataLoader`` on Linux; ``"spawn"``
    where the platform has no fork), ``"spawn"`` or ``"forkserver"``."""

    def __post_init__(self) -> None:
        _check(self.shuffle_buffer >= 0, f"shuffle_buffer must be >= 0 rows, got {self.shuffle_buffer}")
        _check(self.seed >= 0, f"seed must be >= 0, got {self.seed}")
        _check(
            self.num_epochs is None or self.num_epochs >= 1,
            f"num_epochs must be >= 1 or None (endless), got {self.num_epochs}",
        )
        _check(self.workers is None or self.workers >= 0, f"workers must be >= 0, got {self.workers}")
        _check(self.read_ahead >= 1, f"read_ahead must be >= 1, got {self.read_ahead}")
        _check(self.item_rows >= 1, f"item_rows must be >= 1, got {self.item_rows}")
        _check(
            self.workers_type in WORKERS_TYPES,
            f"workers_type must be one of {', '.join(WORKERS_TYPES)}, got {self.workers_type!r}",
        )
        _check(
            self.start_method in START_METHODS,
            f"start_method must be one of {', '.join(START_METHODS)}, got {self.start_method!r}",
        )

    @property
    def worker_threads(self) -> int:
        """``workers`` with ``None`` resolved to the cores this process may use (affinity, cgroup
        quota, ranks on the machine: :func:`pipeline.reader.workers_cores.usable_cores`)."""
        if self.workers is not None:
            return self.workers
        from pipeline.reader.workers_cores import usable_cores

        return usable_cores().cores


@dataclass(frozen=True)
class LoaderConfig:
    """How rows become torch batches (section ``loader`` of ``reader.yaml``)."""

    batch_size: int = 64
    """Rows per batch."""
    drop_last: bool = False
    """Drop the last incomplete batch of each epoch, and the uneven tail of a sharded epoch."""
    prefetch: int = 2
    """Batches prepared ahead of the training loop (host side, and again on the device)."""
    pad_value: int = 0
    """Value that pads variable-length 1-D fields up to the longest row of the batch."""
    device: str | None = None
    """``None``/``"cpu"`` for CPU tensors, ``"cuda"`` or ``"cuda:N"`` for pinned, prefetched copies."""

    def __post_init__(self) -> None:
        _check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _check(self.prefetch >= 1, f"prefetch must be >= 1, got {self.prefetch}")


@dataclass(frozen=True)
class ReadOptions:
    """Objects passed through to the reading of each row group (not YAML-able).

    Attributes:
        fields: Names of the fields to read; ``None`` reads all of them.
        transform: A petastorm ``TransformSpec`` (applied per row on Petastorm datasets, as
            ``make_reader`` does, and per row-group ``pandas.DataFrame`` on plain Parquet, as
            ``make_batch_reader`` does), or a plain callable applied to each batch (a dict of
            numpy arrays and lists) before it becomes tensors.
        predicate: A petastorm predicate (``get_fields()``/``do_include(values)``) that keeps rows.
        filesystem: A ``pyarrow.fs.FileSystem`` to read the dataset with; the URL is then a path
            on it. ``None`` resolves the filesystem from the URL scheme.
    """

    fields: tuple[str, ...] | None = None
    transform: Any = None
    predicate: Any = None
    filesystem: Any = None

    def __post_init__(self) -> None:
        if self.fields is not None:
            _check(len(self.fields) > 0, "fields must name at least one field, got an empty list")
        if self.predicate is not None:
            ok = callable(getattr(self.predicate, "get_fields", None)) and callable(
                getattr(self.predicate, "do_include", None)
            )
            _check(
                ok, f"predicate must be a petastorm predicate (get_fields/do_include), got {self.predicate!r}"
            )
        if self.transform is not None:
            ok = callable(self.transform) or hasattr(self.transform, "edit_fields")
            _check(ok, f"transform must be a petastorm TransformSpec or a callable, got {self.transform!r}")
