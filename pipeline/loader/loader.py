"""``open_loader``: the training loop's view of a dataset -- torch batches, epoch after epoch.

::

    with pipeline.open_loader(url, batch_size=64, seed=0, num_epochs=2, device="cuda") as loader:
        for batch in loader:            # dict[str, torch.Tensor]
            ...                         # loader.epoch: the epoch this batch belongs to

Stages, each in its own thread or module: the reader's thread pool (read + decode row groups,
reordered into plan order) -> the prefetch thread (shuffle buffer, batching, collation into
fresh CPU tensors or reused pinned buffers) -> on CUDA, side-stream copies one batch ahead in
the training loop's thread. Leaving the ``with`` block stops and joins all of them.

Long runs: ``loader.state_dict()`` / ``loader.load_state_dict(state)`` resume exactly where a
consumer stopped (:mod:`pipeline.loader.state`), and ``loader.stats()`` tells how fast batches
come and where the time goes (:mod:`pipeline.loader.stats`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from pipeline.access.source import open_source
from pipeline.config import from_mapping, load_config
from pipeline.errors import ConfigError, DatasetError
from pipeline.loader.collate import RecyclingAllocator, collate_batch, collate_selection, gather_selection
from pipeline.loader.stages import PrefetchedBatches
from pipeline.loader.state import STATE_VERSION, check_state, dataset_fingerprint
from pipeline.loader.stats import LoaderStats, time_source_reads
from pipeline.reader.config import LoaderConfig, ReaderConfig, ReadOptions
from pipeline.reader.reader import Reader
from pipeline.reader.workers import choose_workers_type
from pipeline.reader.workers_process import SourceRecipe
from pipeline.storage import read_threads, resolve

__all__ = ["ENGINES", "Loader", "open_loader", "resolve_configs", "resolve_shard"]

log = logging.getLogger(__name__)

CONFIG_FILE = "reader.yaml"

ENGINES = ("pipeline", "petastorm")
"""Values of ``open_loader(engine=...)``."""


class _Default:
    def __repr__(self) -> str:
        return "<from conf/reader.yaml>"


DEFAULT: Any = _Default()
"""Marks an argument that was not given: its value comes from ``conf/reader.yaml`` (or the defaults)."""


def resolve_shard(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """``(rank, world_size)``: as given, else from an initialized ``torch.distributed``, else ``(0, 1)``.

    Raises:
        ConfigError: Only one of them is given outside ``torch.distributed``, or rank is out of range.
    """
    dist = torch.distributed
    initialized = dist.is_available() and dist.is_initialized()
    if rank is None:
        rank = dist.get_rank() if initialized else None
    if world_size is None:
        world_size = dist.get_world_size() if initialized else None
    if rank is None and world_size is None:
        return 0, 1
    if rank is None or world_size is None:
        raise ConfigError(
            f"got rank={rank} and world_size={world_size}",
            hint="pass both, or neither inside torch.distributed",
        )
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
    return rank, world_size


def _shape_text(shape: tuple[int | None, ...]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


class Loader(PrefetchedBatches):
    """Torch batches of one rank's shard of a dataset; a context manager and an iterator.

    Build it with :func:`open_loader`. ``len(loader)`` is the number of batches per epoch of this
    rank (the same on every rank); iterating yields ``num_epochs`` epochs of batches in one
    stream (forever with ``num_epochs=None``), and :attr:`epoch` tells which epoch the last
    batch came from.
    """

    def __init__(
        self, reader: Reader, config: LoaderConfig, transform: Any = None, *, reopen: Any = None
    ) -> None:
        self.reader = reader
        self._reopen = reopen  # () -> Reader on a fresh listing, when reader's source is speculative
        self.config = config
        self._stats = LoaderStats(reader.workers)
        super().__init__(config.device, config.prefetch, name="pipeline-loader", stats=self._stats)
        self._batch_fn = (
            transform if transform is not None and not hasattr(transform, "edit_fields") else None
        )
        if transform is None:  # batches stack only while rows happen to share a shape: say so now
            for spec in reader.source.specs.values():
                if spec.kind == "ragged" and len(spec.shape) > 1:
                    log.warning(
                        "field %r has a variable shape %s: batches stack only while all their rows share "
                        "one shape, and the first batch that mixes shapes fails -- convert with "
                        "`pipeline convert images --size HxW`, read other fields with `fields=`, or "
                        "crop/resize in a transform",
                        spec.name,
                        _shape_text(spec.shape),
                    )
        self.epoch = reader.start_epoch
        """Epoch of the batch most recently returned (the epoch to start in before the first one)."""
        self.batches_returned = 0
        self._epoch_batches = reader.start_batch  # batches of `epoch` delivered, restored ones included
        self._attach(reader)
        self._fingerprint: str | None = None

    def _attach(self, reader: Reader) -> None:
        if reader.stats is None:
            reader.stats = self._stats
            time_source_reads(reader.source, self._stats)

    def _confirmed(self) -> Reader:
        """The reader, once its source is known to be the dataset on the store.

        A source opened on a disk cache's kept listing (``speculate``) is confirmed here, before
        anything read from it -- a batch, the batch count, the fingerprint -- leaves the loader:
        this waits for the store's listing (its workers already reading, when started). Should
        the store hold other files now, the reader is stopped and the dataset opened anew, and
        the new reader starts where the old one was told to.
        """
        reader = self.reader
        if not getattr(reader.source, "speculative", False) or reader.source.confirm_listing():
            return reader
        started = self._prefetcher is not None
        if started:
            self._stop_threads()
        if self._reopen is None:  # a Loader built by hand around a speculative source
            raise DatasetError(
                f"{reader.source.url} changed on the store since its listing was kept",
                hint="open it again with pipeline.open_loader(...)",
            )
        fresh = self._reopen()
        fresh.start_epoch, fresh.start_batch = reader.start_epoch, reader.start_batch
        self.reader = fresh
        self._attach(fresh)
        self._fingerprint = None
        if started:
            self._start()
        return fresh

    def _start(self) -> None:
        started = self._prefetcher is not None
        super()._start()  # the workers start reading ...
        if not started:
            self._confirmed()  # ... while the listing is confirmed

    def __len__(self) -> int:
        return self._confirmed().batches_per_epoch

    @property
    def fields(self) -> list[str]:
        """Names of the fields in each batch (before any ``<name>_lengths`` and batch callable)."""
        return list(self._confirmed().source.specs)

    def _host_batches(self) -> Iterator[tuple[dict[str, Any], Any, tuple[int, int]]]:
        """Runs in the prefetch thread: rows -> (host batch, pinned slot or None, (epoch, rows))."""
        specs = self.reader.source.specs
        pad = self.config.pad_value
        stats = self._stats
        # CPU batches: memory written again once dropped; one pool per producer thread (a restart
        # after a close that gave up waiting never shares it), gone with the generator
        recycled = RecyclingAllocator(keep=self.config.prefetch + 6)
        for selection in self.reader.batches():
            slot = self._slots.acquire() if self._slots is not None else None
            alloc = slot.allocate if slot is not None else recycled
            t0 = time.perf_counter()
            if self._batch_fn is not None:
                try:
                    values = self._batch_fn(gather_selection(selection, specs))
                except Exception as exc:
                    exc.add_note(f"in the batch transform {self._batch_fn!r} (epoch {selection.epoch})")
                    raise
                t1 = time.perf_counter()
                stats.add("transform", t1 - t0)
                batch = collate_batch(values, pad, alloc)
                stats.add("collate", time.perf_counter() - t1)
            else:
                batch = collate_selection(selection, specs, pad, alloc)
                stats.add("collate", time.perf_counter() - t0)
            yield batch, slot, (selection.epoch, len(selection.positions))

    def __next__(self) -> dict[str, Any]:
        self._start()
        asked = self._stats.requested()
        batch, (epoch, rows) = self._next()
        self._stats.delivered(asked, rows, epoch)
        if epoch != self.epoch:
            self._epoch_batches = 0
        self.epoch = epoch
        self._epoch_batches += 1
        self.batches_returned += 1
        return batch

    def stats(self) -> dict[str, Any]:
        """Throughput, the consumer's wait, time per stage, queue depths, RSS and CPU.

        Since the first batch was asked for and for the current epoch; see
        :mod:`pipeline.loader.stats` for the keys. JSON-serialisable; cheap enough to call per step.
        """
        prefetcher = self._prefetcher
        queues = {
            "prefetched": prefetcher.depth() if prefetcher is not None else 0,
            "prefetch_capacity": self.config.prefetch,
            "reading": self.reader.in_flight,
            "buffered_rows": self.reader.buffered,
        }
        return self._stats.snapshot(queues)

    def state_dict(self) -> dict[str, Any]:
        """Where the consumer is, as a small JSON-serialisable dict.

        ``epoch`` and ``batches`` (of that epoch already returned; ``rows`` counts their rows),
        with the seed, the options that decide the order, this rank's shard and a fingerprint of
        the dataset. Give it to :meth:`load_state_dict` of a new loader to go on from there. An
        epoch whose batches were all returned is recorded as the start of the next one.
        """
        reader = self._confirmed()
        epoch, batches = self.epoch, self._epoch_batches
        if batches >= len(self) > 0 or (len(self) == 0 and batches):
            epoch, batches = epoch + 1, 0
        if self._fingerprint is None:
            self._fingerprint = dataset_fingerprint(reader.source)
        fields = list(reader.source.options.fields) if reader.source.options.fields is not None else None
        return {
            "kind": "pipeline.loader",
            "version": STATE_VERSION,
            "epoch": epoch,
            "batches": batches,
            "rows": min(batches * self.config.batch_size, reader.rows_per_epoch),
            "rank": reader.rank,
            "world_size": reader.world_size,
            "options": {
                "seed": reader.config.seed,
                "shuffle": reader.config.shuffle,
                "shuffle_buffer": reader.config.shuffle_buffer,
                "batch_size": self.config.batch_size,
                "drop_last": self.config.drop_last,
                "fields": fields,
                "num_epochs": reader.config.num_epochs,
            },
            "dataset": {
                "url": reader.source.url,
                "fingerprint": self._fingerprint,
                "rows_per_epoch": reader.rows_per_epoch,
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (another loader's :meth:`state_dict`) before the first batch.

        The batches that follow are those the loader that saved ``state`` would have returned
        next, value for value, whatever ``workers`` either loader has.

        Raises:
            ConfigError: ``state`` is from another dataset or other order options (the message
                names the setting), or was saved mid-epoch with another ``world_size``/``rank``.
            RuntimeError: This loader already returned a batch, or is closed.
        """
        if self._closed:
            raise RuntimeError("this loader is closed; open a new one with pipeline.open_loader(...)")
        if self.batches_returned:
            raise RuntimeError(
                f"load_state_dict must be called before the first batch; this loader returned "
                f"{self.batches_returned}"
            )
        mine = self.state_dict()
        epoch, batches = check_state(state, mine, batches_per_epoch=len(self))
        end = self.reader.config.num_epochs
        started = self._prefetcher is not None
        if started:  # __enter__ started prefetching from the old position: start again
            self._stop_threads()
        if end is not None and epoch >= end:
            self.reader.start_epoch, self.reader.start_batch = epoch, 0  # nothing left to read
        else:
            self.reader.start_at(epoch, batches)
        self.epoch, self._epoch_batches = epoch, batches
        if started:
            self._start()

    def close(self) -> None:
        """Stop every thread and pool of this loader and wait for them; safe to call twice."""
        super().close()


def open_loader(
    url: str | os.PathLike[str],
    *,
    batch_size: int = DEFAULT,
    fields: Sequence[str] | None = None,
    transform: Any = None,
    shuffle: bool = DEFAULT,
    seed: int = DEFAULT,
    num_epochs: int | None = DEFAULT,
    rank: int | None = None,
    world_size: int | None = None,
    workers: int | None = DEFAULT,
    device: str | torch.device | None = DEFAULT,
    drop_last: bool = DEFAULT,
    shuffle_buffer: int = DEFAULT,
    prefetch: int = DEFAULT,
    pad_value: int = DEFAULT,
    read_ahead: int = DEFAULT,
    predicate: Any = None,
    filesystem: Any = None,
    config: str | os.PathLike[str] | None = CONFIG_FILE,
    engine: str = "pipeline",
    workers_type: str = DEFAULT,
    start_method: str = DEFAULT,
    cache: str = "stream",
    cache_limit: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Loader:
    """Open a dataset for training: seeded, sharded, multi-epoch torch batches.

    Arguments left out take their value from ``conf/reader.yaml`` (sections ``reader`` and
    ``loader``), whose values are the defaults of :class:`ReaderConfig` and :class:`LoaderConfig`.

    Args:
        url: Dataset folder or URL (``file://``, ``hdfs://``, ``s3://``...): a Petastorm dataset
            (codecs decoded, like ``make_reader``) or plain Parquet (like ``make_batch_reader``).
        batch_size: Rows per batch. Defaults to ``64``.
        fields: Fields to read (names, or petastorm regex patterns). Defaults to ``None`` (all).
        transform: A petastorm ``TransformSpec`` (per row on Petastorm datasets, per
            ``DataFrame`` on plain Parquet) or a callable applied to each batch (a dict of numpy
            arrays and lists) before it becomes tensors. Defaults to ``None``.
        shuffle: Shuffle row groups per epoch and mix rows across them through the shuffle
            buffer; ``False`` gives the stored order. Defaults to ``True``.
        seed: Seed; the order of epoch ``e`` comes from ``(seed, e)``. Defaults to ``0``.
        num_epochs: Epochs to read, or ``None`` for endless. Defaults to ``1``.
        rank: This process's shard. Defaults to ``None`` (``torch.distributed``'s, else 0).
        world_size: Number of shards. Defaults to ``None`` (``torch.distributed``'s, else 1).
        workers: Threads or processes reading and decoding row groups; the batches do not
            depend on it. Defaults to ``None`` (the cores this process may use: affinity, cgroup
            quota, divided by ``LOCAL_WORLD_SIZE``; logged at open).
        device: ``None``/``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a ``torch.device``.
            Defaults to ``None``.
        drop_last: Drop each epoch's incomplete last batch, and shard evenly by dropping (not
            padding) the uneven tail. Defaults to ``False``.
        shuffle_buffer: Rows in the shuffle buffer. Defaults to ``4096``.
        prefetch: Batches prepared ahead. Defaults to ``2``.
        pad_value: Padding of variable-length 1-D fields. Defaults to ``0``.
        read_ahead: Row groups in flight per worker. Defaults to ``2``.
        predicate: A petastorm predicate selecting rows. Defaults to ``None``.
        filesystem: A ``pyarrow.fs.FileSystem`` on which ``url`` is a path. Defaults to ``None``.
        config: YAML file for the defaults. Defaults to ``"reader.yaml"`` (in ``conf/``).
        engine: ``"pipeline"`` (this package's reader) or ``"petastorm"`` (petastorm's
            ``make_reader``/``make_batch_reader`` through
            :func:`pipeline.loader.petastorm_engine.open_petastorm_loader`, which needs
            ``pip install ".[petastorm]"``). Defaults to ``"pipeline"``.
        workers_type: ``"thread"``, ``"process"`` (decode and transform in worker processes
            writing into a shared-memory row buffer) or ``"auto"`` (processes when a
            ``TransformSpec`` has a Python ``func``, threads otherwise); the batches do not
            depend on it. Defaults to ``"auto"``.
        start_method: How worker processes start: ``"spawn"``, ``"fork"`` or ``"forkserver"``.
            Defaults to ``"fork"``.
        cache: Loading mode: ``"stream"``, ``"memory"`` (decoded row groups kept in RAM after the
            first epoch) or ``"disk"`` (Parquet bytes cached locally); see
            :func:`pipeline.access.source.open_source`. Defaults to ``"stream"``.
        cache_limit: Bytes the cache may hold. Defaults to ``None`` (the mode's default).
        cache_dir: Folder of the ``"disk"`` cache (given with ``"stream"``, it means ``"disk"``).
            Defaults to ``None``.

    Returns:
        A :class:`Loader`; use it as a context manager so that its threads are stopped.

    Raises:
        ValueError: ``engine`` is not one of :data:`ENGINES`.
    """
    given = {k: v for k, v in locals().items() if v is not DEFAULT}
    if engine not in ENGINES:
        raise ConfigError(
            f"engine must be one of {', '.join(repr(e) for e in ENGINES)}, got {engine!r}",
            hint='leave it out for the default "pipeline"',
        )
    source_name = "open_loader()" if engine == "pipeline" else f"open_loader(engine={engine!r})"
    reader_cfg, loader_cfg = resolve_configs(config, given, source=source_name)
    if engine == "petastorm":
        from pipeline.loader.petastorm_engine import open_petastorm_loader

        return open_petastorm_loader(
            url,
            reader_cfg,
            loader_cfg,
            fields=fields,
            transform=transform,
            rank=rank,
            world_size=world_size,
            predicate=predicate,
            filesystem=filesystem,
            cache=cache,
            cache_limit=cache_limit,
            cache_dir=cache_dir,
        )
    rank, world_size = resolve_shard(rank, world_size)
    options = ReadOptions(
        fields=(fields,) if isinstance(fields, str) else tuple(fields) if fields is not None else None,
        transform=transform,
        predicate=predicate,
        filesystem=filesystem,
    )
    recipe = SourceRecipe(
        os.fspath(url), options, cache, cache_limit, os.fspath(cache_dir) if cache_dir is not None else None
    )

    def open_reader(speculate: bool) -> Reader:
        source = open_source(
            url, options, cache=cache, cache_limit=cache_limit, cache_dir=cache_dir, speculate=speculate
        )
        config = reader_cfg
        kind, _ = choose_workers_type(config, source, recipe, config.worker_threads, loader_cfg.batch_size)
        # a remote dataset read by threads: enough of them to hide the round trips
        if config.workers is None and kind == "thread":
            fs, path = resolve(url, filesystem=source.options.filesystem or filesystem)  # a disk cache's own
            threads = read_threads(fs, path, cpu_threads=config.worker_threads)
            config = dataclasses.replace(config, workers=threads)
        reader = Reader(
            source,
            config,
            batch_size=loader_cfg.batch_size,
            drop_last=loader_cfg.drop_last,
            rank=rank,
            world_size=world_size,
            recipe=recipe,
        )
        log.debug("loader on %s: %s, %s, rank %d/%d", source.url, config, loader_cfg, rank, world_size)
        return reader

    # Through a disk cache, the reader starts on the listing the cache kept while the store is
    # listed again; the loader checks that listing before its first batch (Loader._confirmed).
    return Loader(open_reader(True), loader_cfg, transform, reopen=lambda: open_reader(False))


def resolve_configs(
    config: str | os.PathLike[str] | None, given: dict[str, Any], *, source: str = "open_loader()"
) -> tuple[ReaderConfig, LoaderConfig]:
    """The reader's and the loader's settings: ``config``'s sections with ``given`` on top.

    Args:
        config: YAML file (``reader:`` and ``loader:`` sections), or ``None`` for the classes'
            defaults.
        given: Arguments that were given (``None`` included: endless, CPU...); keys that are
            not a setting of either class are left out.
        source: Where the values come from, for error messages. Defaults to ``"open_loader()"``.

    Raises:
        ConfigError: A value does not fit its setting.
    """
    if isinstance(given.get("device"), torch.device):
        given = {**given, "device": str(given["device"])}
    return _load(ReaderConfig, config, "reader", given, source), _load(
        LoaderConfig, config, "loader", given, source
    )


def _load(cls: Any, path: Any, section: str, given: dict[str, Any], source: str) -> Any:
    keys = {f.name for f in dataclasses.fields(cls)}
    base = load_config(cls, path, section=section) if path is not None else cls()
    values = {**dataclasses.asdict(base), **{k: v for k, v in given.items() if k in keys}}
    return from_mapping(cls, values, source=source)
